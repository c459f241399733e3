"""From an accepted reply to a :class:`~.batch.Contribution` in the global model's coordinates.

Pure functions over numpy arrays. A reply's update has the shapes of the
fragment the node was sent (the whole model when it trained the whole
model); :func:`contribution` scatters it into the global coordinates and
marks what the node held and what it sent (see :mod:`.batch`):

* held = inside the fragment, minus the coordinates its prune masks removed;
  with ``pruned_as_zero`` a pruned coordinate is held instead, with the
  trained value 0 (the update ``-global``), as the pruned model literally has it;
* sent = held coordinates of a sparse (top-k, rand-k) uplink's index set; a
  pruned coordinate counted as zero is "sent" (its value is known exactly).

:func:`accepted_weights` bounds the sample counts clients claim.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from fedshrink.fragments import FragmentSpec, LayerGraph, scatter
from fedshrink.strategy.batch import BoolArray, Contribution, FloatArray, Layout


def _flat_masks(layout: Layout, masks: Mapping[str, np.ndarray], fill: bool) -> BoolArray:
    """Per-key bool masks (global shapes) as one flat vector; keys without a mask are ``fill``."""
    return np.concatenate([np.asarray(masks[k], dtype=bool).reshape(-1) if k in masks
                           else np.full(size, fill) for k, size in zip(layout.keys, layout.sizes, strict=True)])


def _to_global(values: Mapping[str, np.ndarray], layout: Layout, graph: LayerGraph, fragment: FragmentSpec | None,
               ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None]:
    """Fragment-shaped tensors placed into zeros of the global shapes, and where they landed (None: everywhere)."""
    if fragment is None:
        return dict(values), None
    shapes = dict(zip(layout.keys, layout.shapes, strict=True))
    return scatter(values, graph, fragment, shapes)


def contribution(*, node_id: int, partition_id: int, weight: float, update: Mapping[str, np.ndarray],
                 support: Mapping[str, np.ndarray], prune_masks: Mapping[str, np.ndarray] | None,
                 fragment: FragmentSpec | None, layout: Layout, graph: LayerGraph, global_flat: FloatArray,
                 pruned_as_zero: bool, out: npt.NDArray[np.float32] | None = None) -> Contribution:
    """One reply in global coordinates (see the module doc); ``support`` and ``prune_masks`` are fragment-shaped.

    ``out``: a float32 ``(D,)`` vector to write the values into (a batch's next row, :meth:`BatchRows.next_row`).
    """
    values, inside = _to_global(update, layout, graph, fragment)
    flat = layout.flatten(values, dtype=np.float32, out=out)
    held = None if inside is None else _flat_masks(layout, inside, fill=False)
    sent = None
    if support:
        placed, _ = _to_global({k: np.asarray(v, dtype=bool) for k, v in support.items()}, layout, graph, fragment)
        sent = _flat_masks(layout, placed, fill=True)
    if prune_masks:
        placed, _ = _to_global({k: np.asarray(v, dtype=bool) for k, v in prune_masks.items()}, layout, graph,
                               fragment)
        kept = _flat_masks(layout, placed, fill=True)  # False only where a held coordinate was pruned
        held_now = np.ones(layout.size, dtype=bool) if held is None else held
        pruned = held_now & ~kept
        if pruned_as_zero:
            flat = np.where(pruned, -global_flat, flat).astype(np.float32)
            sent = None if sent is None else sent | pruned
        else:
            held = held_now & kept
    return Contribution(node_id, partition_id, float(weight), flat, held, sent)


def accepted_weights(claimed: Sequence[int], fence: float) -> tuple[list[float], list[int]]:
    """Sample counts the server accepts, and the rows it capped.

    A claim more than ``fence`` times the round's median claim is an outlier;
    every outlier is capped at the largest claim that is not one. So a client
    claiming 10**12 examples weighs no more than the largest plausible client
    of the round, and honest claims within the fence are kept exactly.
    ``fence`` 0 keeps every claim. The median of a majority-honest round is an
    honest size, so a minority cannot move the fence.
    """
    counts = np.asarray(claimed, dtype=np.float64)
    if fence <= 0 or counts.size == 0:
        return counts.tolist(), []
    limit = fence * float(np.median(counts))
    inside = counts[counts <= limit]
    cap = float(inside.max()) if inside.size else limit
    capped = [int(i) for i in np.flatnonzero(counts > limit)]
    return np.minimum(counts, cap).tolist(), capped
