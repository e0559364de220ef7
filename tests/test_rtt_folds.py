"""Entity folds of the forget set (msa_core.rtt.folds): disjoint by entity, covering every item."""

from __future__ import annotations

import pytest

from msa_core.rtt.folds import entity_folds, fold_of_entity

AUTHORS = {"Ana Lenz": 6, "Bo Kress": 4, "Cy Marlo": 4, "Dee Voss": 3, "Eli Strand": 3}


def _items():
    items = []
    for name, n in AUTHORS.items():
        for k in range(n):
            items.append({"question": f"What is fact {k} about {name}?", "answer": f"{name} has fact {k}."})
    return items


def _check_partition(items, folds):
    seen = [i for f in folds for i in f.items]
    assert sorted(seen) == list(range(len(items)))  # every item once: disjoint and covering
    for f in folds:  # an entity's items all sit in one fold
        for name in f.entities:
            own = [i for i, it in enumerate(items) if name in it["question"]]
            assert set(own) <= set(f.items)
    entities = [e for f in folds for e in f.entities]
    assert len(entities) == len(set(entities))


def test_folds_are_disjoint_by_entity_cover_every_item_and_are_balanced():
    items = _items()
    folds = entity_folds(items, 2)
    _check_partition(items, folds)
    # Largest entity first, each into the fold with fewer items: 6→0, 4→1, 4→1, 3→0, 3→1.
    assert [len(f) for f in folds] == [9, 11] and folds[0].entities == ("Ana Lenz", "Dee Voss")
    assert fold_of_entity(folds, "Ana Lenz").index == 0 and fold_of_entity(folds, "Nobody") is None
    one_each = entity_folds(items)
    _check_partition(items, one_each)
    assert [f.entities for f in one_each] == [(name,) for name in AUTHORS]
    assert entity_folds(items, 50) == one_each  # more folds than entities: one per entity
    many = [{"question": f"Where was {a} {b}son born?", "answer": "In Oddi."} for a in ("Ann", "Bob", "Cid", "Dan")
            for b in ("Ul", "Ver", "Wol") for _ in range(3)]
    assert len(entity_folds(many)) == 5  # 12 entities: the default stops at DEFAULT_MAX_FOLDS
    assert entity_folds(list(reversed(items)), 3) == entity_folds(list(reversed(items)), 3)  # deterministic


def test_too_few_entities_or_folds_are_errors():
    items = _items()
    with pytest.raises(ValueError, match="at least two"):
        entity_folds(items[:6])
    for bad in (1, 0, True, 2.5):
        with pytest.raises(ValueError, match="folds must be"):
            entity_folds(items, bad)


def test_the_demo_forget_set_splits_by_fictitious_author(quick_demo):
    from msa_core.eval.questions import load_question_sets
    from msa_core.experiment import load_experiment

    items = load_question_sets(load_experiment(quick_demo).data).sets["forget"]
    folds = entity_folds(items)
    assert len(folds) == 2 and all(len(f.entities) == 1 for f in folds)
    for f in folds:
        name = f.entities[0]
        assert all(name in items[i].question or name in items[i].answer for i in f.items)
    assert sorted(i for f in folds for i in f.items) == list(range(len(items)))
