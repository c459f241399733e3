"""Generated fleets and the natural partitioner: lazy, deterministic, writers that differ, bounded memory."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from fedshrink.config import RunConfig
from fedshrink.data import (
    FleetSpec,
    PartitionScheme,
    SplitSpec,
    client_data,
    make_splits,
    max_clients,
    partition_indices,
)
from fedshrink.data.fleet import CLIENT, PROXY, TEST, load_fleet, parse_samples
from fedshrink.data.settings import DataSettings
from fedshrink.errors import ConfigError, DataError

NATURAL = PartitionScheme("natural")


def _fleet_spec(writers: int, samples: tuple[int, int] = (16, 64)) -> SplitSpec:
    return SplitSpec(dataset="writers", fleet=FleetSpec(writers, samples))


def test_client_data_is_a_pure_function_of_seed_and_writer() -> None:
    spec = _fleet_spec(500)
    a = client_data(spec, NATURAL, 7, 500)
    load_fleet.cache_clear()
    b = client_data(spec, NATURAL, 7, 500)
    assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y)
    assert 16 <= len(a) <= 64 and a.x.shape[1:] == (1, 28, 28) and a.x.dtype == np.float32
    c = client_data(spec, NATURAL, 8, 500)
    assert len(c) != len(a) or not np.array_equal(a.x, c.x)
    # a writer's data does not depend on the population size
    big = client_data(_fleet_spec(100_000), NATURAL, 7, 100_000)
    assert np.array_equal(a.x, big.x)


def test_held_out_writers_are_not_clients() -> None:
    fleet = load_fleet("writers", FleetSpec(100))
    client, test, proxy = (fleet.writer(role, 0) for role in (CLIENT, TEST, PROXY))
    assert not np.array_equal(client.x[:5], test.x[:5]) and not np.array_equal(test.x[:5], proxy.x[:5])


def _anova_f(groups: list[np.ndarray]) -> float:
    """One-way ANOVA F: between-writer over within-writer mean squares (about 1 when writers are alike)."""
    grand = np.concatenate(groups)
    k, n = len(groups), len(grand)
    between = sum(len(g) * (g.mean() - grand.mean()) ** 2 for g in groups) / (k - 1)
    within = sum(((g - g.mean()) ** 2).sum() for g in groups) / (n - k)
    return float(between / within)


def test_writers_differ_in_style_and_labels() -> None:
    fleet = load_fleet("writers", FleetSpec(1000))
    data = [fleet.client(i) for i in range(30)]
    # style: the mean intensity of a writer's images varies far more between writers than within one
    f_writers = _anova_f([d.x.reshape(len(d), -1).mean(1) for d in data])
    assert f_writers > 20.0
    # labels: each writer leans on a few classes (a uniform mix would give a top share near 0.1-0.2)
    top_share = np.mean([np.bincount(d.y, minlength=10).max() / len(d) for d in data])
    assert top_share > 0.3
    assert len({tuple(np.bincount(d.y, minlength=10).argsort()[-2:]) for d in data}) > 10


def _peak_bytes(writers: int, clients: int = 50) -> tuple[int, int]:
    """Peak traced bytes while building a fleet of ``writers`` and loading ``clients`` spread over it."""
    load_fleet.cache_clear()
    tracemalloc.start()
    try:
        spec = _fleet_spec(writers, (50, 50))
        held = 0
        for i in np.linspace(0, writers - 1, clients).astype(int):
            held += client_data(spec, NATURAL, int(i), writers).x.nbytes
        return tracemalloc.get_traced_memory()[1], held
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_population() -> None:
    small, held_small = _peak_bytes(1_000)
    large, held_large = _peak_bytes(100_000)
    assert held_small == held_large == 50 * 50 * 28 * 28 * 4  # 50 clients of 50 images: nothing more is made
    assert large < 8 * 2**20  # one writer's temporaries, not the population's (100,000 x 50 images = 15 GB)
    assert large < 1.5 * small


def test_fleet_splits_come_from_held_out_writers() -> None:
    splits = make_splits(_fleet_spec(100_000))
    assert splits.fleet is not None and len(splits.train) == 0
    assert len(splits.test) > 1000 and len(splits.proxy) > 500
    assert splits.input_shape == (1, 28, 28) and splits.num_classes == 10
    assert "100,000 writers" in splits.describe()
    no_proxy = make_splits(SplitSpec(dataset="writers", proxy_fraction=0.0, fleet=FleetSpec(10)))
    assert len(no_proxy.proxy) == 0


def test_fleet_partitions_and_limits() -> None:
    spec = _fleet_spec(300)
    assert max_clients(spec, NATURAL) == 300
    fleet = load_fleet("writers", spec.fleet)
    assert np.array_equal(client_data(spec, NATURAL, 5, 20).x, fleet.client(5).x)  # first 20 writers take part
    with pytest.raises(ConfigError, match="num-clients=301"):
        client_data(spec, NATURAL, 0, 301)
    with pytest.raises(ConfigError, match=r"partitioner='iid'.*'natural'"):
        client_data(spec, PartitionScheme("iid"), 0, 10)
    with pytest.raises(ConfigError, match="partitioner='dirichlet'"):
        max_clients(spec, PartitionScheme("dirichlet"))
    with pytest.raises(DataError, match="partition-id"):
        client_data(spec, NATURAL, 20, 20)


def test_max_clients_of_pooled_data() -> None:
    spec = SplitSpec()
    assert max_clients(spec, PartitionScheme("iid")) == len(make_splits(spec).train)
    with pytest.raises(DataError, match="client-column"):
        max_clients(spec, NATURAL)


@pytest.mark.parametrize(("text", "expect"), [("50", (50, 50)), ("16-64", (16, 64)), ("1-1", (1, 1))])
def test_samples_per_writer_parses(text: str, expect: tuple[int, int]) -> None:
    assert parse_samples(text) == expect


@pytest.mark.parametrize("text", ["", "0", "64-16", "a-b", "1-2-3", "-5"])
def test_bad_samples_per_writer(text: str) -> None:
    with pytest.raises(ConfigError, match="samples-per-writer"):
        parse_samples(text)
    with pytest.raises(ConfigError, match="invalid setting samples-per-writer"):
        DataSettings(dataset="writers", partitioner="natural", samples_per_writer=text)


def test_fleet_settings() -> None:
    cfg = RunConfig.from_mapping({"dataset": "writers", "partitioner": "natural", "fleet-writers": 100_000,
                                  "samples-per-writer": "40"})
    spec = cfg.split_spec()
    assert spec.is_fleet and spec.fleet == FleetSpec(100_000, (40, 40))
    with pytest.raises(ConfigError, match=r"invalid setting partitioner='dirichlet'.*'natural'"):
        RunConfig.from_mapping({"dataset": "writers"})
    with pytest.raises(ConfigError, match="invalid setting fleet-writers=0"):
        RunConfig.from_mapping({"dataset": "writers", "partitioner": "natural", "fleet-writers": 0})
    with pytest.raises(ConfigError, match=r"invalid setting partitioner='natural'.*client-column"):
        RunConfig.from_mapping({"partitioner": "natural"})


# --- natural ids in a data set of its own (flwr-datasets' NaturalIdPartitioner) ----------------


def test_natural_partitioner_gives_each_id_its_client() -> None:
    groups = np.array([30, 10, 20, 10, 30, 30, 20, 10, 10], dtype=np.int64)
    labels = np.arange(len(groups), dtype=np.int64) % 3
    parts = partition_indices(labels, 3, NATURAL, seed=0, groups=groups)
    assert [list(p) for p in parts] == [[1, 3, 7, 8], [2, 6], [0, 4, 5]]  # ids in sorted order: 10, 20, 30
    first_two = partition_indices(labels, 2, NATURAL, seed=0, groups=groups)
    assert [list(p) for p in first_two] == [[1, 3, 7, 8], [2, 6]]  # fewer clients: the first ids
    with pytest.raises(ConfigError, match=r"num-clients=4.*client ids"):
        partition_indices(labels, 4, NATURAL, seed=0, groups=groups)
    with pytest.raises(DataError, match="client-column"):
        partition_indices(labels, 2, NATURAL, seed=0)


def test_natural_partitioner_on_a_saved_data_set_with_a_writer_column(tmp_path: Path) -> None:
    from datasets import Dataset

    rng = np.random.default_rng(0)
    n = 120
    writers = np.array([f"w{i % 6:02d}" for i in range(n)])
    Dataset.from_dict({
        "image": rng.integers(0, 256, size=(n, 8, 8), dtype=np.uint8),
        "label": rng.integers(0, 4, size=n),
        "writer_id": writers,
    }).save_to_disk(str(tmp_path / "femnist-like"))
    settings = DataSettings(dataset="femnist-like", data_dir=str(tmp_path / "femnist-like"),
                            client_column="writer_id", partitioner="natural", proxy_fraction=0.0)
    spec = settings.split_spec(seed=1)
    train = make_splits(spec).train
    assert train.groups is not None
    assert max_clients(spec, NATURAL) == 6
    for i in range(6):
        part = client_data(spec, NATURAL, i, 6)
        assert part.groups is not None and set(part.groups.tolist()) == {i}  # one writer per client
