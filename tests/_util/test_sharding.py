"""Evaluation batches split over processes: ownership, replay hooks and reassembly in batch order."""

from __future__ import annotations

import pytest

from perturbsets._util.sharding import BatchShard, in_batch_order


def test_every_batch_has_exactly_one_owner_and_comes_back_in_order():
    shards = [BatchShard(r, 3) for r in range(3)]
    skipped: list[list[str]] = [[] for _ in shards]
    parts = [s.compute("abcdefg", str.upper, skip=skipped[r].append) for r, s in enumerate(shards)]
    assert sorted(parts[1]) == [1, 4] and skipped[1] == ["a", "c", "d", "f", "g"]
    assert in_batch_order(reversed(parts)) == list("ABCDEFG")
    assert BatchShard().gather(BatchShard().compute("xy", str.upper)) == ["X", "Y"]


def test_an_unsplit_evaluation_runs_on_rank_0():
    assert [BatchShard(r, 2).unsplit().compute("abc", str.upper) for r in (0, 1)] == [{0: "A", 1: "B", 2: "C"}, {}]


def test_reassembly_refuses_a_batch_computed_twice_or_never():
    with pytest.raises(ValueError, match=r"batches \[1\] were computed by two"):
        in_batch_order([{0: "a", 1: "b"}, {1: "b"}])
    with pytest.raises(ValueError, match=r"batches \[1\] were computed by no"):
        in_batch_order([{0: "a"}, {2: "c"}])
