"""Partitioning client training data across N clients.

The partitioners are flwr-datasets' own (``IidPartitioner``,
``DirichletPartitioner``, ``PathologicalPartitioner``, ``NaturalIdPartitioner``),
run on a local ``datasets.Dataset`` holding each sample's label, index and
(where the data set has one) client id, so no hub access is needed.
:func:`partition_indices` returns, for every client, the sorted indices of
its samples; together they are disjoint and cover every sample.

``natural`` uses the data set's own client ids (a FEMNIST writer, a device):
partition ``i`` holds every sample of the ``i``-th id in sorted order. With
fewer partitions than ids, the first ``num_partitions`` ids take part and the
others' samples are not used; more partitions than ids are refused. The
generated fleets (:mod:`fedshrink.data.fleet`) are partitioned the same way,
writer ``i`` being client ``i``, without going through this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fedshrink.errors import ConfigError, DataError
from fedshrink.registry import Registry


@dataclass(frozen=True)
class PartitionScheme:
    """How to split: ``name`` in :data:`PARTITIONERS` plus that scheme's knobs."""

    name: str = "dirichlet"
    alpha: float = 0.5  # dirichlet concentration; smaller = more skewed
    classes_per_client: int = 2  # pathological: label classes each client holds

    def __post_init__(self) -> None:
        if self.name not in PARTITIONERS:
            raise ConfigError("partitioner", self.name, "one of " + ", ".join(map(repr, PARTITIONERS)))
        if not self.alpha > 0:
            raise ConfigError("dirichlet-alpha", self.alpha, "a number > 0")
        if self.classes_per_client < 1:
            raise ConfigError("classes-per-client", self.classes_per_client, "an integer >= 1")


PartitionerFactory = Callable[[PartitionScheme, int, int, int, int], object]
PARTITIONERS: Registry[PartitionerFactory] = Registry("partitioner", setting="partitioner")
_register = PARTITIONERS.register


@_register("iid")
def _iid(scheme: PartitionScheme, n: int, num_partitions: int, num_classes: int, seed: int) -> object:
    from flwr_datasets.partitioner import IidPartitioner

    return IidPartitioner(num_partitions=num_partitions)


@_register("dirichlet")
def _dirichlet(scheme: PartitionScheme, n: int, num_partitions: int, num_classes: int, seed: int) -> object:
    from flwr_datasets.partitioner import DirichletPartitioner

    # flwr-datasets resamples (10 tries) until every client holds min_partition_size
    # samples. Ask for 10 (at most half the mean share) and lower the floor for
    # skewed draws (small alpha, many clients) rather than fail: 10, 5, 2, 1.
    floors = sorted({max(1, min(f, n // (2 * num_partitions))) for f in (10, 5, 2, 1)}, reverse=True)
    return _FirstThatSamples(
        [
            DirichletPartitioner(
                num_partitions=num_partitions,
                partition_by="label",
                alpha=scheme.alpha,
                min_partition_size=floor,
                self_balancing=False,
                shuffle=True,
                seed=seed,
            )
            for floor in floors
        ]
    )


class _FirstThatSamples:
    """The first of several partitioners whose sampling succeeds (same interface)."""

    def __init__(self, candidates: list[object]) -> None:
        self._candidates = candidates
        self._chosen: object | None = None
        self._dataset: object | None = None

    @property
    def dataset(self) -> object:
        return self._dataset

    @dataset.setter
    def dataset(self, value: object) -> None:
        self._dataset = value

    def load_partition(self, partition_id: int) -> object:
        if self._chosen is None:
            last: ValueError | None = None
            for cand in self._candidates:
                cand.dataset = self._dataset  # type: ignore[attr-defined]  # flwr-datasets ships no types
                try:
                    cand.load_partition(0)  # type: ignore[attr-defined]  # flwr-datasets ships no types
                except ValueError as exc:
                    last = exc
                    continue
                self._chosen = cand
                break
            else:
                assert last is not None
                raise last
        return self._chosen.load_partition(partition_id)  # type: ignore[attr-defined]  # flwr-datasets ships no types


@_register("natural")
def _natural(scheme: PartitionScheme, n: int, num_partitions: int, num_classes: int, seed: int) -> object:
    from flwr_datasets.partitioner import NaturalIdPartitioner

    return NaturalIdPartitioner(partition_by="client")


@_register("pathological")
def _pathological(scheme: PartitionScheme, n: int, num_partitions: int, num_classes: int, seed: int) -> object:
    from flwr_datasets.partitioner import PathologicalPartitioner

    if scheme.classes_per_client > num_classes:
        raise ConfigError("classes-per-client", scheme.classes_per_client, f"an integer in [1, {num_classes}]")
    return PathologicalPartitioner(
        num_partitions=num_partitions,
        partition_by="label",
        num_classes_per_partition=scheme.classes_per_client,
        class_assignment_mode="first-deterministic",
        shuffle=True,
        seed=seed,
    )


def partition_indices(
    labels: np.ndarray, num_partitions: int, scheme: PartitionScheme, seed: int, *, groups: np.ndarray | None = None
) -> list[np.ndarray]:
    """Split sample indices ``0..len(labels)-1`` into ``num_partitions`` disjoint sets.

    ``groups`` (int64, one per sample) are the data set's client ids, needed by
    ``natural``. Deterministic for a seed. Raises :class:`ConfigError` for more
    clients than samples (or than ids, for ``natural``) and :class:`DataError`
    when the scheme leaves a client empty or a sample unassigned.
    """
    from datasets import Dataset

    n = len(labels)
    natural = scheme.name == "natural"
    limit, what = n, "training samples"
    if natural:
        if groups is None:
            raise DataError("partitioner 'natural' needs the data set's client ids: set client-column "
                            "(e.g. 'writer_id'), or use a generated fleet such as 'writers'")
        limit, what = len(np.unique(groups)), "client ids in the data set"
    if num_partitions < 1 or num_partitions > limit:
        raise ConfigError("num-clients", num_partitions, f"an integer in [1, {limit}] ({what})")
    num_classes = int(labels.max()) + 1 if n else 0
    partitioner = PARTITIONERS[scheme.name](scheme, n, num_partitions, num_classes, seed)
    columns = {"label": labels.astype(np.int64), "idx": np.arange(n, dtype=np.int64)}
    if groups is not None:
        columns["client"] = groups.astype(np.int64)
    partitioner.dataset = Dataset.from_dict(columns)  # type: ignore[attr-defined]  # flwr-datasets ships no types
    parts: list[np.ndarray] = []
    try:
        for pid in range(num_partitions):
            part = partitioner.load_partition(pid)  # type: ignore[attr-defined]  # flwr-datasets ships no types
            parts.append(np.sort(np.asarray(part.with_format("numpy")["idx"][:], dtype=np.int64)))
    except ValueError as exc:  # flwr-datasets' own refusals (e.g. unreachable min size)
        raise DataError(f"partitioner {scheme.name!r} failed for {num_partitions} clients: {exc}") from exc
    _check_partition(parts, n, num_partitions, scheme, covering=not natural)
    return parts


def _check_partition(parts: list[np.ndarray], n: int, num_partitions: int, scheme: PartitionScheme,
                     *, covering: bool) -> None:
    sizes = [len(p) for p in parts]
    if min(sizes) == 0:
        raise DataError(
            f"partitioner {scheme.name!r} left client {sizes.index(0)} without samples; "
            "use fewer clients or a larger dirichlet-alpha / classes-per-client"
        )
    covered = np.concatenate(parts)
    if covering and len(covered) != n:
        missing = n - len(np.unique(covered))
        raise ConfigError(
            "classes-per-client",
            scheme.classes_per_client,
            f"a value that gives every class a client ({missing} samples unassigned "
            f"with {num_partitions} clients)",
        )
