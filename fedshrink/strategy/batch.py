"""A round's accepted updates, in the global model's coordinates.

Every accepted reply becomes one :class:`Contribution`: its decoded update
scattered into the global model's flattened coordinates (:class:`Layout`),
and two masks over them:

* ``held``: the coordinates the client had -- inside its fragment, and not
  pruned away (unless ``pruned-as-zero``, where a pruned coordinate is held
  with the trained value 0, i.e. the update ``-global``);
* ``sent``: the held coordinates it actually sent a value for (a top-k or
  rand-k uplink sends only some; a dense uplink sends all it held).

Stacked, the round's contributions form an :class:`UpdateBatch` ``(n, D)``
that the aggregation stages (:mod:`.stages`) work on. No Flower types here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
State = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Layout:
    """The global model's tensors laid end to end: key order, shapes and offsets of the flat vector."""

    keys: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[np.dtype, ...]

    @classmethod
    def of(cls, state: State) -> Layout:
        return cls(tuple(state), tuple(tuple(np.shape(v)) for v in state.values()),
                   tuple(np.asarray(v).dtype for v in state.values()))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def offsets(self) -> dict[str, tuple[int, int]]:
        """``key -> (start, stop)`` in the flat vector."""
        out, start = {}, 0
        for key, size in zip(self.keys, self.sizes, strict=True):
            out[key] = (start, start + size)
            start += size
        return out

    def flatten(self, state: State, dtype: npt.DTypeLike = np.float64, out: np.ndarray | None = None) -> np.ndarray:
        """``state`` as one vector ``(D,)`` in this layout's order (written into ``out`` when given)."""
        if not self.keys:
            return np.zeros(0, dtype=dtype) if out is None else out
        return np.concatenate([np.asarray(state[k], dtype=dtype).reshape(-1) for k in self.keys], out=out)

    def unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Inverse of :meth:`flatten`, cast to each tensor's dtype (integer tensors rounded)."""
        out: dict[str, np.ndarray] = {}
        for (key, (a, b)), shape, dtype in zip(self.offsets().items(), self.shapes, self.dtypes, strict=True):
            part = flat[a:b].reshape(shape)
            if np.issubdtype(dtype, np.integer) or dtype == np.bool_:
                part = np.rint(part)
            out[key] = part.astype(dtype)
        return out


@dataclass(frozen=True)
class Contribution:
    """One accepted reply in global coordinates (see the module doc).

    ``values`` ``(D,)`` float32: the update where held, 0 elsewhere; ``held`` and
    ``sent`` ``(D,)`` bool, or None for "every coordinate" (``sent`` None: all
    held were sent); ``weight``: the sample count the server accepted.
    """

    node_id: int
    partition_id: int
    weight: float
    values: npt.NDArray[np.float32]
    held: BoolArray | None = None
    sent: BoolArray | None = None

    def held_mask(self) -> BoolArray:
        return np.ones(self.values.shape, dtype=bool) if self.held is None else self.held

    def sent_mask(self) -> BoolArray:
        return self.held_mask() if self.sent is None else self.sent & self.held_mask()


@dataclass(frozen=True)
class UpdateBatch:
    """The round's contributions stacked: ``values``, ``held``, ``sent`` ``(n, D)``; ``weights`` ``(n,)``.

    ``sent`` implies ``held``, and values are 0 wherever nothing was sent
    (a sparse uplink decodes to 0 there), so wherever not held too.
    ``clients`` are partition ids (for the records).
    """

    values: npt.NDArray[np.floating]
    held: BoolArray
    sent: BoolArray
    weights: FloatArray
    clients: tuple[int, ...]

    def __post_init__(self) -> None:
        n = len(self.clients)
        if self.values.ndim != 2 or self.values.shape[0] != n or \
                self.held.shape != self.values.shape or self.sent.shape != self.values.shape:
            raise ValueError(f"values {self.values.shape}, held {self.held.shape}, sent {self.sent.shape} and "
                             f"{n} clients do not match")
        if self.weights.shape != (n,):
            raise ValueError(f"weights {self.weights.shape} for {n} clients")

    @classmethod
    def of(cls, contributions: Sequence[Contribution], dim: int) -> UpdateBatch:
        rows = BatchRows(dim, len(contributions))
        for c in contributions:
            rows.add(c)
        return rows.batch()

    @classmethod
    def simple(cls, values: npt.ArrayLike, held: npt.ArrayLike | None = None, weights: npt.ArrayLike | None = None,
               clients: Sequence[int] | None = None) -> UpdateBatch:
        """A batch where every held coordinate was sent (tests, and rules that ignore sparsity)."""
        v = np.asarray(values, dtype=np.float64)
        h = np.ones(v.shape, dtype=bool) if held is None else np.asarray(held, dtype=bool)
        w = np.ones(v.shape[0]) if weights is None else np.asarray(weights, dtype=np.float64)
        ids = tuple(range(v.shape[0])) if clients is None else tuple(clients)
        return cls(np.where(h, v, 0.0), h, h, w, ids)

    def __len__(self) -> int:
        return len(self.clients)

    @property
    def dim(self) -> int:
        return int(self.values.shape[1])

    def take(self, rows: npt.ArrayLike) -> UpdateBatch:
        """The batch restricted to the given client rows (in the given order).

        Taking every row in order returns this batch itself: no copy of the ``(n, D)`` arrays (batches are not
        changed in place; every stage makes new ones).
        """
        idx = np.asarray(rows, dtype=np.int64)
        if len(idx) == len(self) and np.array_equal(idx, np.arange(len(self))):
            return self
        return UpdateBatch(self.values[idx], self.held[idx], self.sent[idx], self.weights[idx],
                           tuple(self.clients[int(i)] for i in idx))

    def with_values(self, values: npt.NDArray[np.floating]) -> UpdateBatch:
        """The same batch with other values (kept 0 where nothing was sent)."""
        return UpdateBatch(np.where(self.sent, values, 0.0), self.held, self.sent, self.weights, self.clients)

    def with_weights(self, weights: FloatArray) -> UpdateBatch:
        return UpdateBatch(self.values, self.held, self.sent, np.asarray(weights, dtype=np.float64), self.clients)

    def over_sent(self) -> UpdateBatch:
        """The batch whose "held" is what was sent: the view coordinate-wise rules vote on (no copy)."""
        return UpdateBatch(self.values, self.sent, self.sent, self.weights, self.clients)

    def sent_share(self) -> FloatArray:
        """Per coordinate, the weight of the clients that sent it over the weight of those that held it."""
        held_w = (self.weights[:, None] * self.held).sum(axis=0)
        sent_w = (self.weights[:, None] * self.sent).sum(axis=0)
        share: FloatArray = np.divide(sent_w, held_w, out=np.zeros(self.dim), where=held_w > 0)
        return share


class BatchRows:
    """Fills an :class:`UpdateBatch` one contribution at a time (at most ``capacity`` of them).

    Nothing but the batch is kept: a caller can decode a reply, add it, and let
    the decoded arrays go before the next. While every contribution holds and
    sent every coordinate (the whole model, a dense uplink) no ``held``/``sent``
    arrays are made: the batch gets one read-only all-True view for both.
    """

    def __init__(self, dim: int, capacity: int, reuse: npt.NDArray[np.float32] | None = None) -> None:
        """``reuse``: an earlier batch's ``values`` to fill again when it is big enough (its rows are
        overwritten: nothing may still read that batch). Pages touched before cost nothing to write again."""
        self.dim = dim
        if reuse is not None and reuse.ndim == 2 and reuse.shape[1] == dim and reuse.shape[0] >= capacity \
                and reuse.dtype == np.float32:
            self.values = reuse[:capacity]  # every row a batch shows is written whole by add()
        else:
            self.values = np.zeros((capacity, dim), dtype=np.float32)
        self.held: BoolArray | None = None  # made (all True) when a contribution first needs one
        self.sent: BoolArray | None = None
        self.weights = np.zeros(capacity, dtype=np.float64)
        self.clients: list[int] = []

    def next_row(self) -> npt.NDArray[np.float32]:
        """The row the next :meth:`add` fills: a contribution's values built in it are not copied again."""
        i = len(self.clients)
        if i >= len(self.weights):
            raise ValueError(f"more than {len(self.weights)} contributions")
        row: npt.NDArray[np.float32] = self.values[i]
        return row

    def add(self, c: Contribution) -> None:
        i = len(self.clients)
        if c.values.shape != (self.dim,):
            raise ValueError(f"contribution of shape {c.values.shape} for {self.dim} coordinates")
        row = self.next_row()
        if c.values.dtype != row.dtype or c.values.ctypes.data != row.ctypes.data:  # else built in the row
            row[...] = c.values
        if c.sent is not None or c.held is not None:
            if self.held is None or self.sent is None:
                self.held = np.ones(self.values.shape, dtype=bool)
                self.sent = np.ones(self.values.shape, dtype=bool)
            if c.held is not None:
                self.held[i] = c.held
            self.sent[i] = c.sent_mask()
            self.values[i][~self.sent[i]] = 0.0
        self.weights[i] = c.weight
        self.clients.append(c.partition_id)

    def batch(self) -> UpdateBatch:
        n = len(self.clients)
        if self.held is None or self.sent is None:
            everywhere = np.broadcast_to(np.True_, (n, self.dim))  # no memory; stages never write to a batch
            return UpdateBatch(self.values[:n], everywhere, everywhere, self.weights[:n], tuple(self.clients))
        return UpdateBatch(self.values[:n], self.held[:n], self.sent[:n], self.weights[:n], tuple(self.clients))
