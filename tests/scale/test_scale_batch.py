"""Round batches built without extra copies equal those built the plain way."""

from __future__ import annotations

import numpy as np

from fedshrink.strategy.batch import BatchRows, Contribution, Layout, UpdateBatch


def test_rows_built_in_place_and_copied_give_the_same_batch() -> None:
    rng = np.random.default_rng(0)
    layout = Layout.of({"a": np.zeros((3, 4), dtype=np.float32), "b": np.zeros(5, dtype=np.float32)})
    states = [{"a": rng.standard_normal((3, 4)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}
              for _ in range(3)]
    plain = [Contribution(i, i, 1.0 + i, layout.flatten(s, dtype=np.float32)) for i, s in enumerate(states)]
    rows = BatchRows(layout.size, 3)
    layout.flatten(states[2], dtype=np.float32, out=rows.next_row())  # a build that failed: the row is reused
    for i, s in enumerate(states):
        values = layout.flatten(s, dtype=np.float32, out=rows.next_row())
        assert np.shares_memory(values, rows.values)
        rows.add(Contribution(i, i, 1.0 + i, values))
    built, expected = rows.batch(), UpdateBatch.of(plain, layout.size)
    for field in ("values", "held", "sent", "weights"):
        assert np.array_equal(getattr(built, field), getattr(expected, field))
    assert built.held.all() and not built.held.flags.writeable  # dense, whole model: one read-only view


def test_a_sparse_contribution_makes_the_masks() -> None:
    rows = BatchRows(4, 2)
    rows.add(Contribution(0, 0, 1.0, np.ones(4, dtype=np.float32)))
    rows.add(Contribution(1, 1, 1.0, np.ones(4, dtype=np.float32), sent=np.array([True, False, True, False])))
    batch = rows.batch()
    assert batch.held.all() and batch.sent.tolist() == [[True] * 4, [True, False, True, False]]
    assert batch.values.tolist() == [[1, 1, 1, 1], [1, 0, 1, 0]]


def test_a_reused_buffer_gives_the_batch_a_fresh_one_would() -> None:
    """The round's rows are written into the last round's buffer; whatever it held does not leak through."""
    rng = np.random.default_rng(1)
    old = np.full((4, 6), np.nan, dtype=np.float32)  # an earlier round's rows, bigger than this round
    contributions = [Contribution(0, 0, 2.0, rng.standard_normal(6).astype(np.float32)),
                     Contribution(1, 1, 1.0, rng.standard_normal(6).astype(np.float32),
                                  held=np.array([True] * 5 + [False]), sent=np.array([True, False] * 3))]
    fresh, reused = BatchRows(6, 3), BatchRows(6, 3, reuse=old)
    for c in contributions:
        fresh.add(c)
        reused.add(c)
    a, b = fresh.batch(), reused.batch()
    assert np.shares_memory(b.values, old) and len(b) == 2
    for field in ("values", "held", "sent", "weights"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    for wrong in (np.zeros((2, 6), dtype=np.float32), np.zeros((4, 5), dtype=np.float32), np.zeros((4, 6))):
        assert not np.shares_memory(BatchRows(6, 3, reuse=wrong).values, wrong)  # too small, other width or dtype
