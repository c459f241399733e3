"""The latest update of each client, counted again in a round it misses (``absent-updates = reuse``).

With modelled availability, a device that is offline in a round sends
nothing, and a round without it moves the model toward the data of the
devices that were there. On label-skewed data the next round pulls the other
way, so accuracy swings from round to round, and most of all where the
absent devices hold classes few others have. MIFA (Gu et al., "Fast Federated
Learning in the Presence of Arbitrary Device Unavailability", NeurIPS 2021)
averages instead the *latest* update of every client: one that is absent
counts with the update it sent last.

:class:`UpdateMemory` keeps, per client (partition id), the row it last
contributed to a round's :class:`~.batch.UpdateBatch` -- its values where it
sent one, its held and sent masks, its weight and the round -- and gives the
rows of the clients absent from a round back as a batch to stack under that
round's own. Rows older than ``max_age`` rounds are not used (a device gone
for good stops steering the model), and the memory never holds more than
``max_bytes``: past it, the oldest rows are forgotten.

Storage per client: the sent values (float32) plus two bit masks, so a
top-k uplink's row costs about its sent share of the dense row.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedshrink.strategy.batch import UpdateBatch


@dataclass(frozen=True)
class Remembered:
    """One client's last contribution, stored compactly."""

    server_round: int
    weight: float
    held: npt.NDArray[np.uint8]  # np.packbits of the held mask
    sent: npt.NDArray[np.uint8]  # np.packbits of the sent mask
    values: npt.NDArray[np.float32]  # the values where sent, in coordinate order

    @property
    def nbytes(self) -> int:
        return int(self.held.nbytes + self.sent.nbytes + self.values.nbytes)


class UpdateMemory:
    """Per client, its latest accepted update (see the module doc)."""

    def __init__(self, *, max_age: int, max_bytes: int) -> None:
        if max_age < 1 or max_bytes < 0:
            raise ValueError(f"max_age {max_age} and max_bytes {max_bytes}: need >= 1 and >= 0")
        self.max_age, self.max_bytes = max_age, max_bytes
        self.dim = 0  # the model's coordinates, set by the first batch remembered (or the state loaded)
        self.rows: dict[int, Remembered] = {}
        self.forgotten = 0  # rows dropped to stay within max_bytes, over the run

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.rows.values())

    def remember(self, batch: UpdateBatch, server_round: int, clients: Collection[int] | None = None) -> None:
        """Keep each row of ``batch`` (the round's accepted updates, as aggregated) under its client; only the
        rows of ``clients`` when given (those that can be absent: clients with a device model)."""
        self.dim = self.dim or batch.dim
        if batch.dim != self.dim:
            raise ValueError(f"a batch of {batch.dim} coordinates for a memory of {self.dim}")
        for i, client in enumerate(batch.clients):
            if clients is not None and client not in clients:
                continue
            sent = np.asarray(batch.sent[i], dtype=bool)
            self.rows[int(client)] = Remembered(
                server_round, float(batch.weights[i]), np.packbits(np.asarray(batch.held[i], dtype=bool)),
                np.packbits(sent), np.asarray(batch.values[i][sent], dtype=np.float32))
        self._fit()

    def _fit(self) -> None:
        """Forget the oldest rows (lowest round, then highest client id) until the memory fits ``max_bytes``."""
        total = self.nbytes
        for client in sorted(self.rows, key=lambda c: (self.rows[c].server_round, -c)):
            if total <= self.max_bytes:
                break
            total -= self.rows.pop(client).nbytes
            self.forgotten += 1

    def recall(self, clients: Iterable[int], server_round: int) -> tuple[UpdateBatch | None, list[int]]:
        """The remembered rows of ``clients`` at most ``max_age`` rounds old, as a batch (None when there are
        none), and their ages in rounds (in the batch's order)."""
        if not self.dim:
            return None, []
        picked = [(int(c), self.rows[int(c)]) for c in sorted(set(clients)) if int(c) in self.rows
                  and 0 < server_round - self.rows[int(c)].server_round <= self.max_age]
        if not picked:
            return None, []
        n = len(picked)
        values = np.zeros((n, self.dim), dtype=np.float32)
        held = np.zeros((n, self.dim), dtype=bool)
        sent = np.zeros((n, self.dim), dtype=bool)
        for i, (_, r) in enumerate(picked):
            held[i] = np.unpackbits(r.held, count=self.dim).astype(bool)
            sent[i] = np.unpackbits(r.sent, count=self.dim).astype(bool)
            values[i][sent[i]] = r.values
        weights = np.asarray([r.weight for _, r in picked], dtype=np.float64)
        batch = UpdateBatch(values, held, sent, weights, tuple(c for c, _ in picked))
        return batch, [server_round - r.server_round for _, r in picked]

    # -- checkpoints ------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, object], dict[str, np.ndarray]]:
        """JSON-ready ``{"dim": D, "forgotten": n, "rows": {client: [round, weight]}}`` and the arrays,
        ``<client>/held|sent|values``."""
        meta = {"dim": self.dim, "forgotten": self.forgotten,
                "rows": {str(c): [r.server_round, r.weight] for c, r in self.rows.items()}}
        arrays = {f"{c}/{part}": getattr(r, part) for c, r in self.rows.items() for part in ("held", "sent", "values")}
        return meta, arrays

    def load(self, meta: Mapping[str, object], arrays: Mapping[str, np.ndarray]) -> None:
        """The memory :meth:`state` described (ValueError naming what does not fit)."""
        dim, forgotten, entries = meta.get("dim"), meta.get("forgotten"), meta.get("rows")
        if not (isinstance(dim, int) and dim >= 0 and isinstance(forgotten, int) and isinstance(entries, dict)):
            raise ValueError("update memory: 'dim', 'forgotten' and 'rows' missing or of the wrong type")
        rows: dict[int, Remembered] = {}
        packed = (dim + 7) // 8
        for key, value in entries.items():
            if not (isinstance(key, str) and key.isdigit() and isinstance(value, list) and len(value) == 2):
                raise ValueError(f"update memory entry {key!r}: not a client id with [round, weight]")
            parts = {p: arrays.get(f"{key}/{p}") for p in ("held", "sent", "values")}
            held, sent, values = parts["held"], parts["sent"], parts["values"]
            if held is None or sent is None or values is None:
                raise ValueError(f"update memory entry {key!r}: arrays missing")
            if held.dtype != np.uint8 or sent.dtype != np.uint8 or held.shape != (packed,) or \
                    sent.shape != (packed,):
                raise ValueError(f"update memory entry {key!r}: masks are not {packed} packed bytes")
            count = int(np.unpackbits(sent, count=dim).sum())
            if values.dtype != np.float32 or values.shape != (count,):
                raise ValueError(f"update memory entry {key!r}: {values.shape} {values.dtype} values for "
                                 f"{count} sent coordinates")
            rows[int(key)] = Remembered(int(value[0]), float(value[1]), held, sent, values)
        self.dim, self.forgotten, self.rows = dim, forgotten, rows
