"""Content fingerprints: a checkpoint rewritten in place (same size, mtime and header) or with a
changed tokenizer file gets a new fingerprint, and the per-file digest memo never serves stale bytes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from safetensors.torch import load_file
from tiny import rewrite_weights, weights_file

from msa_core import fingerprints
from msa_core.fingerprints import checkpoint_fingerprint
from msa_core.safetensors_stream import read_header
from msa_core.vectors import compute_vectors


def test_fingerprint_changes_with_content(tiny_experiment):
    before = checkpoint_fingerprint(tiny_experiment.checkpoints.forget)
    rewrite_weights(tiny_experiment.checkpoints.forget, lambda sd: {k: v * 1.01 for k, v in sd.items()})
    assert checkpoint_fingerprint(tiny_experiment.checkpoints.forget) != before


def _rewrite_in_place(f: Path, name: str, value: float) -> None:
    """Overwrite one tensor's bytes inside the file, keeping its size, header and mtime."""
    st = f.stat()
    header = read_header(f)
    e = header.entries[name]
    with open(f, "r+b") as fh:
        fh.seek(header.data_start + e.begin)
        fh.write(torch.full(e.shape, value).numpy().tobytes())
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = f.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns, st.st_ino)
    assert read_header(f) == header


def test_in_place_rewrite_with_same_size_mtime_and_header_changes_the_fingerprint_and_rebuilds_vectors(
    tiny_experiment, cache_dir
):
    first = compute_vectors(tiny_experiment, cache_dir)
    assert compute_vectors(tiny_experiment, cache_dir).from_cache
    folder = tiny_experiment.checkpoints.forget
    before = checkpoint_fingerprint(folder)
    _rewrite_in_place(weights_file(folder), "model.norm.weight", 2.0)
    assert checkpoint_fingerprint(folder) != before
    again = compute_vectors(tiny_experiment, cache_dir)
    assert not again.from_cache and again.fingerprint != first.fingerprint
    clean = load_file(str(weights_file(tiny_experiment.checkpoints.clean)))["model.norm.weight"]
    assert torch.equal(again.forget["model.norm.weight"], 2.0 - clean)  # the new bytes, not the stale cache


def test_cached_digest_is_not_reused_after_an_in_place_rewrite(tiny_experiment, monkeypatch):
    monkeypatch.setattr(fingerprints, "_RACY_NS", 0)  # cache even just-written files
    monkeypatch.setattr(fingerprints, "_DIGESTS", {})
    folder = tiny_experiment.checkpoints.retain
    before = checkpoint_fingerprint(folder)
    assert len(fingerprints._DIGESTS) == 1 and checkpoint_fingerprint(folder) == before  # cached, same answer
    time.sleep(0.05)  # the rewrite's ctime must fall in a later clock tick than the hash
    _rewrite_in_place(weights_file(folder), "model.norm.weight", 3.0)
    assert checkpoint_fingerprint(folder) != before
    assert len(fingerprints._DIGESTS) == 2


def test_fingerprint_covers_tokenizer_files(tiny_experiment):
    folder = tiny_experiment.checkpoints.clean
    before = checkpoint_fingerprint(folder)
    cfg = folder / "tokenizer_config.json"
    cfg.write_text(cfg.read_text() + " ")
    assert checkpoint_fingerprint(folder) != before
