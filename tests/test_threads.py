"""msa_core.threads: the thread policy (explicit > MSA_THREADS > size rule) and applying it."""

from __future__ import annotations

import os

import pytest
import torch

from msa_core import threads
from msa_core.threads import ENV_VAR, SMALL_MODEL_PARAMS, ThreadChoice, apply_threads, choose_threads, policy_threads


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_small_models_get_one_thread_and_large_ones_one_per_core(no_env):
    assert policy_threads(1_930_000).threads == 1  # the full demo's size
    assert policy_threads(SMALL_MODEL_PARAMS - 1).threads == 1
    assert policy_threads(None).threads == 1  # unknown size counts as small
    assert policy_threads(SMALL_MODEL_PARAMS, cores=8).threads == 8
    assert policy_threads(1_240_000_000, cores=2) == ThreadChoice(2, "policy: 1240M parameters, one per physical core")
    assert policy_threads(1_240_000_000).threads == threads.physical_cores()
    assert choose_threads(1_930_000).describe() == "1 thread (policy: 1.93M parameters, under 100M)"


def test_explicit_beats_the_environment_which_beats_the_size_rule(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "3")
    assert choose_threads(1_000) == ThreadChoice(3, ENV_VAR)
    assert choose_threads(10**10, explicit=2) == ThreadChoice(2, "--threads")
    assert choose_threads(10**10, explicit=5, explicit_source="sidebar").describe() == "5 threads (sidebar)"
    monkeypatch.setenv(ENV_VAR, " ")
    assert choose_threads(1_000).source.startswith("policy")


@pytest.mark.parametrize("raw, needle", [("0", "between 1 and"), ("-2", "between 1 and"), ("two", "whole number"),
                                         ("1.5", "whole number"), ("100000", "between 1 and")])
def test_bad_counts_are_refused_naming_where_they_came_from(monkeypatch, raw, needle):
    monkeypatch.setenv(ENV_VAR, raw)
    with pytest.raises(ValueError, match=f"{ENV_VAR} must be .*{needle}"):
        choose_threads(1_000)
    with pytest.raises(ValueError, match=f"--threads must be .*{needle}"):
        choose_threads(1_000, explicit=raw)


def test_apply_sets_torchs_thread_count(no_env, torch_threads):
    torch.set_num_threads(2)
    assert apply_threads(choose_threads(1_000)).threads == 1 and torch.get_num_threads() == 1
    apply_threads(ThreadChoice(2, "--threads"))
    assert threads.current_threads() == 2


def test_physical_cores_count_each_core_of_the_allowed_cpus_once(monkeypatch):
    allowed = len(os.sched_getaffinity(0))
    assert 1 <= threads.physical_cores() <= allowed
    # Four logical CPUs on two cores (hyper-threads): two physical cores.
    monkeypatch.setattr(threads, "_allowed_cpus", lambda: {0, 1, 2, 3})
    monkeypatch.setattr(threads, "_core_of_cpu", lambda: {0: ("0", "0"), 1: ("0", "1"), 2: ("0", "0"), 3: ("0", "1")})
    assert threads.physical_cores() == 2
    monkeypatch.setattr(threads, "_core_of_cpu", lambda: {})  # /proc/cpuinfo says nothing: logical CPUs
    assert threads.physical_cores() == 4
