"""The server's memory of each client's latest update (absent-updates = reuse): exact recall, age, size, state."""

from __future__ import annotations

import numpy as np
import pytest

from fedshrink.strategy.batch import UpdateBatch
from fedshrink.strategy.memory import UpdateMemory


def _batch(rng: np.random.Generator, clients: tuple[int, ...], dim: int = 37) -> UpdateBatch:
    """Rows with partial holds and sparser sends (a fragment and a top-k uplink), values 0 where not sent."""
    held = rng.random((len(clients), dim)) < 0.7
    sent = held & (rng.random((len(clients), dim)) < 0.5)
    values = np.where(sent, rng.standard_normal((len(clients), dim)), 0.0).astype(np.float32)
    return UpdateBatch(values, held, sent, rng.uniform(1, 50, len(clients)), clients)


def test_recall_gives_back_each_absent_clients_row_exactly_with_its_age() -> None:
    rng = np.random.default_rng(0)
    memory = UpdateMemory(max_age=3, max_bytes=1 << 20)
    first, second = _batch(rng, (4, 7, 9)), _batch(rng, (7,))
    memory.remember(first, 1)
    memory.remember(second, 2)  # client 7's newer row replaces its older one
    got, ages = memory.recall([9, 7, 4, 11], 3)  # 11 never sent anything
    assert got is not None and got.clients == (4, 7, 9) and ages == [2, 1, 2]
    for row, (src, i) in enumerate(((first, 0), (second, 0), (first, 2))):
        assert np.array_equal(got.values[row], src.values[i]) and got.values.dtype == np.float32
        assert np.array_equal(got.held[row], src.held[i]) and np.array_equal(got.sent[row], src.sent[i])
        assert got.weights[row] == src.weights[i]


def test_rows_from_this_round_or_older_than_max_age_are_not_recalled() -> None:
    memory = UpdateMemory(max_age=2, max_bytes=1 << 20)
    memory.remember(_batch(np.random.default_rng(1), (0, 1)), 5)
    assert memory.recall([0, 1], 5) == (None, [])  # the round it was sent in counts it already
    assert memory.recall([0], 7)[1] == [2]
    assert memory.recall([0, 1], 8) == (None, [])  # 3 rounds old


def test_only_the_clients_named_are_remembered() -> None:
    memory = UpdateMemory(max_age=2, max_bytes=1 << 20)
    memory.remember(_batch(np.random.default_rng(2), (0, 1, 2)), 1, clients={1})
    assert set(memory.rows) == {1}


def test_past_its_size_the_memory_forgets_the_oldest_rows() -> None:
    rng = np.random.default_rng(3)
    memory = UpdateMemory(max_age=9, max_bytes=10**9)
    memory.remember(_batch(rng, (0, 1), dim=4000), 1)
    memory.remember(_batch(rng, (2,), dim=4000), 2)
    one = max(r.nbytes for r in memory.rows.values())
    small = UpdateMemory(max_age=9, max_bytes=2 * one + 1)
    small.remember(_batch(rng, (0, 1), dim=4000), 1)
    small.remember(_batch(rng, (2,), dim=4000), 2)
    assert small.nbytes <= small.max_bytes and len(small.rows) == 2 and 2 in small.rows and small.forgotten == 1
    assert small.nbytes < one * 2 + 1 and memory.nbytes > small.nbytes


def test_state_round_trips_and_a_bad_state_is_refused() -> None:
    memory = UpdateMemory(max_age=4, max_bytes=1 << 20)
    memory.remember(_batch(np.random.default_rng(4), (3, 8)), 2)
    meta, arrays = memory.state()
    again = UpdateMemory(max_age=4, max_bytes=1 << 20)
    again.load(meta, arrays)
    a, b = memory.recall([3, 8], 3)[0], again.recall([3, 8], 3)[0]
    assert a is not None and b is not None
    assert np.array_equal(a.values, b.values) and np.array_equal(a.held, b.held) and a.clients == b.clients
    short = {**arrays, "8/values": arrays["8/values"][:-1]}
    with pytest.raises(ValueError, match=r"'8'.*values"):
        UpdateMemory(max_age=4, max_bytes=1).load(meta, short)
    with pytest.raises(ValueError, match="arrays missing"):
        UpdateMemory(max_age=4, max_bytes=1).load(meta, {k: v for k, v in arrays.items() if k != "3/sent"})
    with pytest.raises(ValueError, match="'dim'"):
        UpdateMemory(max_age=4, max_bytes=1).load({"rows": {}}, {})


def test_a_batch_of_another_size_is_refused() -> None:
    memory = UpdateMemory(max_age=1, max_bytes=1 << 20)
    memory.remember(_batch(np.random.default_rng(5), (0,), dim=10), 1)
    with pytest.raises(ValueError, match="11 coordinates"):
        memory.remember(_batch(np.random.default_rng(5), (0,), dim=11), 2)
    with pytest.raises(ValueError, match="max_age"):
        UpdateMemory(max_age=0, max_bytes=1)
