"""Robust aggregation maths: pure functions over a stack of client updates with a "held" mask.

Every function takes the round's updates as a
:class:`~fedshrink.strategy.batch.UpdateBatch`: ``values`` ``(n, D)`` (client
``i``'s update of coordinate ``j``, in the global model's flattened
coordinates), ``held`` ``(n, D)`` bool (whether client ``i`` held coordinate
``j``: its fragment kept it and its prune mask did not remove it) and
``weights`` ``(n,)`` (sample counts). A coordinate is only ever voted on
by the clients that held it, so sliced and sparse updates are compared on what
they share. Values where ``held`` is False are ignored (callers keep them 0).

Two kinds of function:

* location estimates ``(batch) -> (location (D,), voted (D,) bool)``: per
  coordinate over the clients that hold it, and which coordinates had at
  least one: :func:`coordinate_median`, :func:`trimmed_mean`, :func:`bulyan`
  (the weighted mean is :func:`fedshrink.strategy.stages.holder_mean`; the
  stages of :mod:`.defences` apply these to what clients *sent*);
* transforms ``(batch, ...) -> batch``: :func:`clip_norms`,
  :func:`multi_krum_select`, :func:`fltrust_reweight`.

References: coordinate-wise median and trimmed mean (Yin et al., 2018), Krum /
Multi-Krum (Blanchard et al., 2017), Bulyan (El Mhamdi et al., 2018), FLTrust
(Cao et al., 2021).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fedshrink.strategy.batch import BoolArray, FloatArray, UpdateBatch

Values = npt.NDArray[np.floating]  # a batch's values: float32 as decoded, or float64


def _masked(batch: UpdateBatch) -> Values:
    """The values (0 wherever not held: an invariant of the batch)."""
    return batch.values


def norms(batch: UpdateBatch) -> FloatArray:
    """L2 norm of every client's update over the coordinates it held, ``(n,)`` (values are 0 where not held)."""
    return np.sqrt(np.asarray([float(np.dot(row, row)) for row in batch.values], dtype=np.float64))


def rms(batch: UpdateBatch) -> FloatArray:
    """Root mean square of every client's update over the coordinates it held (0 when it held none)."""
    count = batch.held.sum(axis=1)
    out: FloatArray = np.divide(norms(batch), np.sqrt(np.maximum(count, 1)), out=np.zeros(len(batch)),
                                where=count > 0)
    return out


# -- combiners (over a batch whose "held" marks the values to vote on) -----------------------
def _sorted_held(batch: UpdateBatch) -> tuple[Values, npt.NDArray[np.int64]]:
    """Held values sorted per coordinate (NaN for not held, at the end) and the holder counts."""
    v: Values = np.where(batch.held, batch.values, np.nan)  # one copy, sorted in place
    v.sort(axis=0)
    return v, batch.held.sum(axis=0)


def _take_rows(sorted_v: Values, rows: npt.NDArray[np.int64]) -> FloatArray:
    return np.asarray(np.take_along_axis(sorted_v, rows[None, :], axis=0)[0], dtype=np.float64)


def coordinate_median(batch: UpdateBatch) -> tuple[FloatArray, BoolArray]:
    """Per coordinate: the (unweighted) median of the holders' values."""
    s, count = _sorted_held(batch)
    voted = count > 0
    lo = np.maximum((count - 1) // 2, 0)
    hi = np.maximum(count // 2, 0)
    med = 0.5 * (_take_rows(s, lo) + _take_rows(s, hi))
    return np.where(voted, med, 0.0), voted


def _band_mean(s: Values, start: npt.NDArray[np.int64], stop: npt.NDArray[np.int64]) -> FloatArray:
    """Mean of ``s[start_j:stop_j, j]`` per column (sorted values; stop > start where it matters)."""
    z = np.nan_to_num(s, nan=0.0)
    csum = np.vstack([np.zeros((1, s.shape[1])), np.cumsum(z, axis=0)])  # (n+1, D)
    total = _take_rows(csum, stop) - _take_rows(csum, start)
    k = stop - start
    mean: FloatArray = np.divide(total, k, out=np.zeros_like(total), where=k > 0)
    return mean


def trimmed_mean(batch: UpdateBatch, trim: float, holders: npt.NDArray[np.int64] | None = None,
                 ) -> tuple[FloatArray, BoolArray]:
    """Per coordinate: drop ``k_j`` of the largest and of the smallest of the ``n_j`` voters, average the rest.

    ``k_j = floor(trim * n_j)``; when ``holders`` (``(D,)``, the clients that
    held each coordinate, of whom the ``n_j`` voters are those that sent it)
    is given, ``k_j = floor(trim * holders_j)``: as many values as there may be
    attackers among the holders, since every one of them may have sent it.
    Where trimming would leave nothing, the median is used without ``holders``,
    and nothing (not voted, 0) with it.
    """
    if not 0.0 <= trim < 0.5:
        raise ValueError(f"trim must be in [0, 0.5), got {trim}")
    s, count = _sorted_held(batch)
    k = np.floor(trim * (count if holders is None else np.maximum(holders, count))).astype(np.int64)
    k = np.minimum(k, count)
    out = _band_mean(s, k, np.maximum(count - k, k))
    left = count - 2 * k > 0
    if holders is not None:
        return np.where(left, out, 0.0), left
    med, voted = coordinate_median(batch)
    return np.where(left, out, med), voted


def bucket_means(batch: UpdateBatch, size: int, rng: np.random.Generator
                 ) -> tuple[UpdateBatch, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Replies in random groups of ``size`` (bucketing, Karimireddy et al., ICLR 2022), for a vote over groups.

    Returns the groups as voters -- per coordinate the sample-weighted mean of the values the members *sent*,
    marked held (and sent) where any member sent it -- and, per coordinate, how many groups held it (any member
    held it) and how many sent it. Averaging honest replies shrinks the spread non-IID data gives them, which a
    coordinate-wise vote otherwise reads as disagreement; a group with an attacker in it is one spoilt voter.
    """
    order = rng.permutation(len(batch))
    groups = [order[i:i + size] for i in range(0, len(batch), size)]
    values = np.zeros((len(groups), batch.dim), dtype=np.float64)
    sent = np.zeros((len(groups), batch.dim), dtype=bool)
    held = np.zeros(batch.dim, dtype=np.int64)
    for g, rows in enumerate(groups):
        w = batch.weights[rows][:, None] * batch.sent[rows]  # (s, D): the members' weights where they sent
        total = w.sum(axis=0)
        sent[g] = total > 0
        np.divide((w * batch.values[rows]).sum(axis=0), total, out=values[g], where=sent[g])
        held += batch.held[rows].any(axis=0)
    weights = np.asarray([batch.weights[rows].sum() for rows in groups], dtype=np.float64)
    voters = UpdateBatch(values, sent, sent, weights, tuple(batch.clients[int(rows[0])] for rows in groups))
    return voters, held, sent.sum(axis=0)


def quorum(holders: npt.NDArray[np.int64], senders: npt.NDArray[np.int64], fraction: float) -> BoolArray:
    """Coordinates whose senders can outvote the attackers there may be among their holders.

    With ``f_j = floor(fraction * holders_j)`` possibly malicious holders of
    coordinate ``j``, all of whom may have sent it, a coordinate-wise rule's
    result is bounded by honest values only if ``senders_j > 2 f_j``. Dense
    updates (every holder sends) meet it whenever ``fraction < 0.5``; with
    sparse (top-k) uplinks it keeps a value that one client alone sent from
    passing through a median unchanged. ``holders`` and ``senders`` are
    per-coordinate counts ``(D,)``.
    """
    f = np.floor(fraction * holders).astype(np.int64)
    out: BoolArray = senders > 2 * f
    return out


def bulyan(batch: UpdateBatch, f: int) -> tuple[FloatArray, BoolArray]:
    """Bulyan: select ``n - 2f`` clients by repeated Krum, then per coordinate average the
    ``n_j - 2f`` holders' values closest to their median (the median itself when fewer remain)."""
    return bulyan_among(batch.take(bulyan_select(batch, f)), f)


def bulyan_select(batch: UpdateBatch, f: int) -> list[int]:
    """Bulyan's first step: the ``n - 2f`` rows chosen by repeated Krum."""
    return krum_iterative(batch, f, max(len(batch) - 2 * f, 1))


def bulyan_among(sel: UpdateBatch, f: int) -> tuple[FloatArray, BoolArray]:
    """Bulyan's second step over the selected rows: per coordinate, the mean of the ``n_j - 2f`` values nearest
    the median (the median where fewer remain)."""
    med, voted = coordinate_median(sel)
    count = sel.held.sum(axis=0)
    dist = np.where(sel.held, np.abs(sel.values - med[None, :]), np.inf)
    order = np.argsort(dist, axis=0, kind="stable")
    vals = np.take_along_axis(np.where(sel.held, sel.values, 0.0), order, axis=0)
    beta = np.maximum(count - 2 * f, 0)
    keep = np.arange(len(sel))[:, None] < beta[None, :]
    total = (vals * keep).sum(axis=0)
    mean = np.divide(total, beta, out=np.zeros_like(total), where=beta > 0)
    return np.where(beta > 0, mean, med), voted


# -- distances and Krum ----------------------------------------------------------------------
def pairwise_distances(batch: UpdateBatch) -> FloatArray:
    """``(n, n)`` mean squared difference of two clients' updates over the coordinates both held.

    Normalised per shared coordinate so that pairs sharing few coordinates (small
    fragments) are comparable with pairs sharing many; ``inf`` where two clients
    share nothing, 0 on the diagonal.
    """
    h = batch.held.astype(np.float64)
    v = _masked(batch)
    sq = (v * v) @ h.T  # sq[i, j] = sum over shared of x_i^2
    cross = v @ v.T
    shared = h @ h.T
    total = sq + sq.T - 2.0 * cross
    d = np.divide(np.maximum(total, 0.0), shared, out=np.full_like(total, np.inf), where=shared > 0)
    np.fill_diagonal(d, 0.0)
    return d


def krum_scores(distances: FloatArray, f: int) -> FloatArray:
    """Krum score of each client: the sum of its ``n - f - 2`` smallest distances to others.

    Pairs that share no coordinate are skipped; a client with fewer comparable
    neighbours is scored on the mean of those it has, scaled to the same count,
    and a client comparable to none scores ``inf``.
    """
    n = distances.shape[0]
    k = max(n - f - 2, 1)
    scores = np.empty(n)
    for i in range(n):
        others = np.delete(distances[i], i)
        finite = np.sort(others[np.isfinite(others)])
        if finite.size == 0:
            scores[i] = np.inf
        elif finite.size >= k:
            scores[i] = finite[:k].sum()
        else:
            scores[i] = finite.mean() * k
    return scores


def krum_iterative(batch: UpdateBatch, f: int, m: int) -> list[int]:
    """Rows chosen by Krum ``m`` times, each time removing the winner (Bulyan's selection)."""
    d_all = pairwise_distances(batch)
    left = list(range(len(batch)))
    chosen: list[int] = []
    while left and len(chosen) < m:
        sub = d_all[np.ix_(left, left)]
        scores = krum_scores(sub, f)
        best = left[int(np.argmin(scores))]  # all inf: the first one left
        chosen.append(best)
        left.remove(best)
    return chosen


def multi_krum_select(batch: UpdateBatch, f: int, m: int | None = None) -> UpdateBatch:
    """Multi-Krum: keep the ``m`` clients (default ``n - f``) with the lowest Krum scores."""
    n = len(batch)
    m = n - f if m is None else m
    m = min(max(m, 1), n)
    scores = krum_scores(pairwise_distances(batch), f)
    order = np.argsort(scores, kind="stable")[:m]
    return batch.take(np.sort(order))


# -- transforms --------------------------------------------------------------------------------
def clip_norms(batch: UpdateBatch, max_norm: float = 0.0) -> UpdateBatch:
    """Scale every update down to at most ``max_norm`` (L2 over the coordinates it held).

    ``max_norm == 0`` clips adaptively: every update's RMS per held coordinate
    is capped at the round's median RMS, so fragments of different sizes are
    held to the same per-coordinate magnitude.
    """
    if max_norm < 0:
        raise ValueError(f"max_norm must be >= 0, got {max_norm}")
    if max_norm > 0:
        size, bound = norms(batch), max_norm
    else:
        size = rms(batch)
        bound = float(np.median(size)) if len(batch) else 0.0
    scale = np.divide(bound, size, out=np.ones_like(size), where=size > bound)
    return batch.with_values(batch.values * scale[:, None])


def fltrust_reweight(batch: UpdateBatch, root: FloatArray) -> UpdateBatch:
    """FLTrust: trust score ``relu(cos(x_i, g))`` against the server's root update ``g``, on what ``i`` held.

    Each update is rescaled to the norm of the root update on the same
    coordinates, and the trust score replaces the client's weight (a client
    with score 0 is kept in the batch but weighs nothing). ``root`` is ``(D,)``.
    """
    if root.shape != (batch.values.shape[1],):
        raise ValueError(f"root update of shape {root.shape} for {batch.values.shape[1]} coordinates")
    v = _masked(batch)
    g = np.where(batch.held, root[None, :], 0.0)
    dot = np.einsum("ij,ij->i", v, g)
    nv = np.sqrt(np.einsum("ij,ij->i", v, v))
    ng = np.sqrt(np.einsum("ij,ij->i", g, g))
    ok = (nv > 0) & (ng > 0)
    cos = np.divide(dot, nv * ng, out=np.zeros_like(dot), where=ok)
    trust = np.maximum(cos, 0.0)
    scale = np.divide(ng, nv, out=np.zeros_like(nv), where=ok)
    return batch.with_values(batch.values * scale[:, None]).with_weights(trust)


def robust_zscores(x: FloatArray) -> FloatArray:
    """``(x - median) / (1.4826 * MAD)``; MAD floored at 1e-12 relative to the median so equal values give 0."""
    if x.size == 0:
        return x
    med = float(np.median(x))
    mad = 1.4826 * float(np.median(np.abs(x - med)))
    mad = max(mad, 1e-12 * max(abs(med), 1e-30))
    return (x - med) / mad
