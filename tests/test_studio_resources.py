"""The app's process-wide memos (studio/resources.py), outside a Streamlit server."""

from __future__ import annotations

from studio.resources import Memo, memoized_per_item


def test_memo_is_a_bounded_lru():
    memo = Memo(size=2)
    memo.put("a", 1)
    memo.put("b", 2)
    assert memo.get("a") == 1  # "a" is now the most recent
    memo.put("c", 3)
    assert memo.get("b") is None and memo.get("a") == 1 and memo.get("c") == 3


def test_only_the_missing_items_are_computed_in_one_batch():
    memo, calls = Memo(), []

    def compute(batch: list[str]) -> list[str]:
        calls.append(list(batch))
        return [q.upper() for q in batch]

    assert memoized_per_item(memo, ("fp", "qa"), ["a", "b"], compute) == ["A", "B"]
    assert memoized_per_item(memo, ("fp", "qa"), ["b", "c", "a"], compute) == ["B", "C", "A"]
    assert calls == [["a", "b"], ["c"]]
    # Another prefix (another model or point) is another set of entries.
    assert memoized_per_item(memo, ("fp", "raw"), ["a"], compute) == ["A"] and calls[-1] == ["a"]
