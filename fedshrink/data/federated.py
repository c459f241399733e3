"""Seeded splits of a data set into server test, server proxy and client data.

``test``  — the server's held-out test set (the data set's official test split
            when it has one, else a stratified ``test_fraction`` of the pool).
``proxy`` — a stratified ``proxy_fraction`` of the pool kept on the server for
            distillation. fedshrink's training code reads only its images: the
            labels are kept for baselines in benchmarks, never for training.
``train`` — the rest, partitioned across clients by :mod:`.partition`.

Splits are pure functions of their settings and cached per process, so every
ClientApp call in a simulation reads the same arrays without reloading. Their
indices, and the client partitions', are also kept on disk
(:mod:`.index_cache`): a fresh process (each ClientApp call in a deployment)
reads them back instead of importing scikit-learn and flwr-datasets again.

A generated fleet (:mod:`.fleet`, e.g. ``writers``) is never split from a
pool: ``test`` and ``proxy`` come from writers held out of the population,
``train`` is empty, and :func:`client_data` generates writer
``partition_id``'s data when asked (partitioner ``natural``).
:func:`max_clients` says how many clients a data set allows either way.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

import numpy as np

from fedshrink.data.fleet import FLEETS, PROXY, PROXY_WRITERS, TEST, TEST_WRITERS, Fleet, FleetSpec, load_fleet
from fedshrink.data.index_cache import cached_indices
from fedshrink.data.partition import PARTITIONERS, PartitionScheme, partition_indices
from fedshrink.data.sources import LabelledArrays, load_source
from fedshrink.errors import ConfigError, DataError


@dataclass(frozen=True)
class SplitSpec:
    """Which data set and how to split it (the data settings and the run's seed).

    ``image_column``, ``label_column``, ``client_column``: columns of a
    ``datasets`` data set ('' = found, see :mod:`.hub`). ``fleet``: the size
    of a generated fleet (used only when ``dataset`` is one).
    """

    dataset: str = "digits"
    data_dir: str = ""
    test_fraction: float = 0.2
    proxy_fraction: float = 0.1
    seed: int = 42
    image_column: str = ""
    label_column: str = ""
    client_column: str = ""
    fleet: FleetSpec = field(default_factory=FleetSpec)

    @property
    def is_fleet(self) -> bool:
        return self.dataset in FLEETS


@dataclass(frozen=True)
class Splits:
    test: LabelledArrays
    proxy: LabelledArrays
    train: LabelledArrays  # empty for a generated fleet (its clients' data is made on demand)
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    fleet: Fleet | None = None

    def typical_client_samples(self, clients: int) -> int:
        """A typical client's sample count: the pool over ``clients``, or a fleet writer's mean."""
        if self.fleet is not None:
            return sum(self.fleet.spec.samples) // 2
        return len(self.train) // max(1, clients)

    def describe(self) -> str:
        """The client data in words, for the console: '1,437 client samples' or '100,000 writers (16-64 ...)'."""
        if self.fleet is None:
            return f"{len(self.train):,} client samples"
        lo, hi = self.fleet.spec.samples
        each = f"{lo}" if lo == hi else f"{lo}-{hi}"
        return f"{self.fleet.spec.writers:,} writers ({each} samples each, generated per client)"


def _stratified(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, taken) with ``taken`` a stratified ``fraction`` of ``y`` (kept on disk: :mod:`.index_cache`)."""
    idx = np.arange(len(y))
    if fraction == 0.0:
        return idx, idx[:0]

    def split() -> list[np.ndarray]:
        counts = np.bincount(y)
        stratify = y if counts[counts > 0].min() >= 2 else None
        from sklearn.model_selection import train_test_split  # here: importing sklearn costs seconds per process

        rest, taken = train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)
        return [np.sort(rest), np.sort(taken)]

    rest, taken = cached_indices("stratified", {"fraction": fraction, "seed": seed}, [y], split)
    return rest, taken


def _fleet_splits(spec: SplitSpec) -> Splits:
    """Test and proxy splits from held-out writers; no pooled training data."""
    fleet = load_fleet(spec.dataset, spec.fleet)
    test = fleet.held_out(TEST, TEST_WRITERS)
    empty = test.subset(np.arange(0))
    proxy = fleet.held_out(PROXY, PROXY_WRITERS) if spec.proxy_fraction > 0 else empty
    return Splits(test=test, proxy=proxy, train=empty, num_classes=fleet.num_classes,
                  input_shape=fleet.input_shape, fleet=fleet)


@functools.lru_cache(maxsize=4)
def make_splits(spec: SplitSpec) -> Splits:
    if spec.is_fleet:
        return _fleet_splits(spec)
    source = load_source(spec.dataset, spec.data_dir, image_column=spec.image_column,
                         label_column=spec.label_column, client_column=spec.client_column)
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
    train = make_splits(spec).train

    def compute() -> list[np.ndarray]:
        return partition_indices(train.y, num_partitions, scheme, spec.seed, groups=train.groups)

    if PARTITIONERS[scheme.name].__module__ != partition_indices.__module__:
        return tuple(compute())  # a partitioner registered elsewhere: its code is not part of the cache's key
    settings = {"num-partitions": num_partitions, "scheme": dataclasses.asdict(scheme), "seed": spec.seed}
    return tuple(cached_indices("partition", settings, [train.y, train.groups], compute))


def _check_fleet_scheme(spec: SplitSpec, scheme: PartitionScheme) -> None:
    if scheme.name != "natural":
        raise ConfigError("partitioner", scheme.name,
                          f"'natural' for the generated fleet {spec.dataset!r} (client i is writer i)")


def max_clients(spec: SplitSpec, scheme: PartitionScheme) -> int:
    """The largest number of clients ``spec``'s data allows under ``scheme``.

    A fleet: its writers. ``natural``: the client ids in the training split.
    Otherwise: the training samples (each client needs one).
    """
    if spec.is_fleet:
        _check_fleet_scheme(spec, scheme)
        return spec.fleet.writers
    train = make_splits(spec).train
    if scheme.name == "natural":
        if train.groups is None:
            raise DataError("partitioner 'natural' needs the data set's client ids: set client-column "
                            "(e.g. 'writer_id'), or use a generated fleet such as 'writers'")
        return len(np.unique(train.groups))
    return len(train)


def client_partitions(spec: SplitSpec, scheme: PartitionScheme, num_partitions: int) -> list[np.ndarray]:
    """Index sets into ``make_splits(spec).train``, one per client (not for a generated fleet)."""
    if spec.is_fleet:
        raise DataError(f"data set {spec.dataset!r} is a generated fleet: it has no pooled training data")
    return list(_client_indices(spec, scheme, num_partitions))


def client_data(
    spec: SplitSpec, scheme: PartitionScheme, partition_id: int, num_partitions: int
) -> LabelledArrays:
    """Training data of client ``partition_id`` out of ``num_partitions``.

    For a generated fleet: writer ``partition_id``'s data, made now (the first
    ``num_partitions`` writers take part).
    """
    if not 0 <= partition_id < num_partitions:
        raise DataError(f"partition-id {partition_id} is outside [0, {num_partitions})")
    if spec.is_fleet:
        _check_fleet_scheme(spec, scheme)
        if num_partitions > spec.fleet.writers:
            raise ConfigError("num-clients", num_partitions,
                              f"an integer in [1, {spec.fleet.writers}] (writers in the fleet: fleet-writers)")
        return load_fleet(spec.dataset, spec.fleet).client(partition_id)
    idx = _client_indices(spec, scheme, num_partitions)[partition_id]
    return make_splits(spec).train.subset(idx)
