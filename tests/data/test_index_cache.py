"""Split and partition indices kept on disk: the same indices as computing them, read back by a fresh process
without importing scikit-learn or flwr-datasets, keyed by everything they depend on, and safe to lose."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedshrink.data import (
    PARTITIONERS,
    PartitionScheme,
    SplitSpec,
    client_data,
    client_partitions,
    federated,
    index_cache,
    make_splits,
)
from fedshrink.data.index_cache import cached_indices, entry_key

ROOT = Path(__file__).resolve().parents[2]


def _fresh(monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """A cache directory of this test's own and empty per-process caches."""
    monkeypatch.setenv("FEDSHRINK_CACHE_DIR", where)
    make_splits.cache_clear()
    federated._client_indices.cache_clear()


@pytest.fixture(autouse=True)
def _clear_after() -> object:
    yield
    make_splits.cache_clear()
    federated._client_indices.cache_clear()


def _splits_and_partitions(spec: SplitSpec, scheme: PartitionScheme, n: int) -> list[np.ndarray]:
    s = make_splits(spec)
    return [s.test.y, s.proxy.y, s.train.y, *client_partitions(spec, scheme, n)]


@pytest.mark.parametrize("scheme", [PartitionScheme(), PartitionScheme("iid"), PartitionScheme("pathological")])
def test_cached_indices_equal_computed_ones(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            scheme: PartitionScheme) -> None:
    spec = SplitSpec(seed=7)
    _fresh(monkeypatch, "off")
    want = _splits_and_partitions(spec, scheme, 12)
    assert not any(tmp_path.iterdir())
    _fresh(monkeypatch, str(tmp_path))
    first = _splits_and_partitions(spec, scheme, 12)  # computed and stored
    entries = sorted(p.name.split("-")[0] for p in (tmp_path / "indices").iterdir())
    assert entries == ["partition", "stratified", "stratified"]
    _fresh(monkeypatch, str(tmp_path))
    second = _splits_and_partitions(spec, scheme, 12)  # read back
    for a, b, c in zip(want, first, second, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)



def test_a_partitioner_registered_elsewhere_is_never_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Its code is not part of the key: an edited partitioner must not read its earlier partitions back."""
    calls = []

    def mine(scheme: PartitionScheme, n: int, num_partitions: int, num_classes: int, seed: int) -> object:
        calls.append(n)
        return PARTITIONERS["iid"](scheme, n, num_partitions, num_classes, seed)

    monkeypatch.setitem(PARTITIONERS, "mine", mine)
    _fresh(monkeypatch, str(tmp_path))
    make_splits(SplitSpec())  # the splits themselves are cached
    before = {p.name for p in (tmp_path / "indices").iterdir()}
    for _ in range(2):
        federated._client_indices.cache_clear()
        parts = client_partitions(SplitSpec(), PartitionScheme("mine"), 5)
        assert sum(len(p) for p in parts) == len(make_splits(SplitSpec()).train)
    assert len(calls) == 2  # computed both times
    assert {p.name for p in (tmp_path / "indices").iterdir()} == before  # and nothing stored

def test_an_entry_is_read_back_without_computing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fresh(monkeypatch, str(tmp_path))
    parts = [np.array([3, 1, 2]), np.arange(5)]
    got = cached_indices("stratified", {"seed": 1}, [np.arange(4)], lambda: parts)
    assert [p.dtype for p in got] == [np.int64, np.int64]

    def boom() -> list[np.ndarray]:
        raise AssertionError("computed again")

    again = cached_indices("stratified", {"seed": 1}, [np.arange(4)], boom)
    assert [a.tolist() for a in again] == [[3, 1, 2], [0, 1, 2, 3, 4]]


def test_the_key_follows_every_input() -> None:
    y = np.arange(10)
    base = entry_key("partition", {"seed": 1, "n": 3}, [y, None])
    assert entry_key("partition", {"n": 3, "seed": 1}, [y, None]) == base  # order of settings is irrelevant
    assert len({base,
                entry_key("stratified", {"seed": 1, "n": 3}, [y, None]),
                entry_key("partition", {"seed": 2, "n": 3}, [y, None]),
                entry_key("partition", {"seed": 1, "n": 3}, [y[::-1], None]),
                entry_key("partition", {"seed": 1, "n": 3}, [y.astype(np.int32), None]),
                entry_key("partition", {"seed": 1, "n": 3}, [y, np.zeros(10, np.int64)])}) == 6


def test_the_key_follows_library_versions_and_source(monkeypatch: pytest.MonkeyPatch) -> None:
    y = np.arange(10)
    base = entry_key("partition", {"seed": 1}, [y])
    env = json.loads(index_cache._environment())
    assert set(env["versions"]) == set(index_cache.LIBRARIES) and len(env["source"]) == 64
    index_cache._environment.cache_clear()
    real = index_cache.metadata.version
    monkeypatch.setattr(index_cache.metadata, "version",
                        lambda name: "0.0" if name == "scikit-learn" else real(name))
    try:
        assert entry_key("partition", {"seed": 1}, [y]) != base
    finally:
        monkeypatch.undo()
        index_cache._environment.cache_clear()
    assert entry_key("partition", {"seed": 1}, [y]) == base


@pytest.mark.parametrize("damage", [b"", b"not a zip file", None])
def test_a_damaged_entry_is_computed_again_and_rewritten(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         damage: bytes | None) -> None:
    _fresh(monkeypatch, str(tmp_path))
    cached_indices("stratified", {"seed": 1}, [np.arange(4)], lambda: [np.arange(3)])
    (entry,) = (tmp_path / "indices").iterdir()
    if damage is None:  # a readable file of the wrong kind: float values
        with open(entry, "wb") as fh:
            np.savez(fh, count=np.int64(1), a0=np.zeros(3))
    else:
        entry.write_bytes(damage)
    got = cached_indices("stratified", {"seed": 1}, [np.arange(4)], lambda: [np.arange(3)])
    assert got[0].tolist() == [0, 1, 2]
    assert index_cache._read(entry) is not None  # rewritten whole
    assert [p.name for p in (tmp_path / "indices").iterdir()] == [entry.name]  # no temporary file left


def test_off_and_unwritable_directories_still_give_the_indices(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    monkeypatch.setenv("FEDSHRINK_CACHE_DIR", "OFF")
    assert index_cache.cache_dir() is None
    assert cached_indices("partition", {}, [], lambda: [np.arange(2)])[0].tolist() == [0, 1]
    blocker = tmp_path / "file"
    blocker.write_text("")  # a file where the directory should be: nothing can be written under it
    monkeypatch.setenv("FEDSHRINK_CACHE_DIR", str(blocker))
    assert cached_indices("partition", {}, [], lambda: [np.arange(2)])[0].tolist() == [0, 1]
    monkeypatch.delenv("FEDSHRINK_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert index_cache.cache_dir() == tmp_path / "xdg" / "fedshrink" / "indices"


def test_a_fresh_process_reads_client_data_without_sklearn_or_flwr_datasets(tmp_path: Path) -> None:
    code = ("import sys, numpy as np\n"
            "from fedshrink.data import PartitionScheme, SplitSpec, client_data\n"
            "d = client_data(SplitSpec(seed=3), PartitionScheme(), 4, 10)\n"
            "print(len(d), int(np.asarray(d.y).sum()), 'sklearn' in sys.modules, 'flwr_datasets' in sys.modules,"
            " 'datasets' in sys.modules)\n")
    env = {**os.environ, "FEDSHRINK_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    runs = [subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                           timeout=120).stdout.split() for _ in range(2)]
    assert runs[0][2:] == ["True", "True", "True"]  # the first process computed them
    assert runs[1][2:] == ["False", "False", "False"]  # the second read them back
    assert runs[0][:2] == runs[1][:2]
    local = client_data(SplitSpec(seed=3), PartitionScheme(), 4, 10)
    assert [str(len(local)), str(int(np.asarray(local.y).sum()))] == runs[0][:2]
