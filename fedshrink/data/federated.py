"""Seeded splits of a data set into server test, server proxy and client data.

``test``  — the server's held-out test set (the data set's official test split
            when it has one, else a stratified ``test_fraction`` of the pool).
``proxy`` — a stratified ``proxy_fraction`` of the pool kept on the server for
            distillation. fedshrink's training code reads only its images: the
            labels are kept for baselines in benchmarks, never for training.
``train`` — the rest, partitioned across clients by :mod:`.partition`.

Splits are pure functions of their settings and cached per process, so every
ClientApp call in a simulation reads the same arrays without reloading.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from fedshrink.data.partition import PartitionScheme, partition_indices
from fedshrink.data.sources import LabelledArrays, load_source
from fedshrink.errors import DataError


@dataclass(frozen=True)
class SplitSpec:
    dataset: str = "digits"
    data_dir: str = ""
    test_fraction: float = 0.2
    proxy_fraction: float = 0.1
    seed: int = 42


@dataclass(frozen=True)
class Splits:
    test: LabelledArrays
    proxy: LabelledArrays
    train: LabelledArrays
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)


def _stratified(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, taken) with ``taken`` a stratified ``fraction`` of ``y``."""
    idx = np.arange(len(y))
    if fraction == 0.0:
        return idx, idx[:0]
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    rest, taken = train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)
    return np.sort(rest), np.sort(taken)


@functools.lru_cache(maxsize=4)
def make_splits(spec: SplitSpec) -> Splits:
    source = load_source(spec.dataset, spec.data_dir)
    pool = source.pool
    if source.test is not None:
        test = source.test
    else:
        pool_idx, test_idx = _stratified(pool.y, spec.test_fraction, spec.seed)
        test, pool = pool.subset(test_idx), pool.subset(pool_idx)
    # the proxy fraction is of the whole data set, so it means the same with or without a test split
    proxy_share = spec.proxy_fraction * (len(pool) + len(test)) / len(pool)
    if proxy_share >= 1.0:
        raise DataError(f"proxy-fraction {spec.proxy_fraction} leaves no client data")
    train_idx, proxy_idx = _stratified(pool.y, proxy_share, spec.seed + 1)
    return Splits(
        test=test,
        proxy=pool.subset(proxy_idx),
        train=pool.subset(train_idx),
        num_classes=source.num_classes,
        input_shape=source.input_shape,
    )


@functools.lru_cache(maxsize=8)
def _client_indices(
    spec: SplitSpec, scheme: PartitionScheme, num_partitions: int
) -> tuple[np.ndarray, ...]:
    labels = make_splits(spec).train.y
    return tuple(partition_indices(labels, num_partitions, scheme, spec.seed))


def client_partitions(spec: SplitSpec, scheme: PartitionScheme, num_partitions: int) -> list[np.ndarray]:
    """Index sets into ``make_splits(spec).train``, one per client."""
    return list(_client_indices(spec, scheme, num_partitions))


def client_data(
    spec: SplitSpec, scheme: PartitionScheme, partition_id: int, num_partitions: int
) -> LabelledArrays:
    """Training data of client ``partition_id`` out of ``num_partitions``."""
    if not 0 <= partition_id < num_partitions:
        raise DataError(f"partition-id {partition_id} is outside [0, {num_partitions})")
    idx = _client_indices(spec, scheme, num_partitions)[partition_id]
    return make_splits(spec).train.subset(idx)
