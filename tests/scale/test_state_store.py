"""The on-disk client state store: versions by round, resume, exact round-trips, damaged blobs, memory mode."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, RecordDict

from fedshrink.errors import ConfigError
from fedshrink.runner.state import (
    ClientStateStore,
    ContextSlot,
    StateStoreError,
    pack_state,
    state_slot,
    store_dir,
    unpack_state,
)


def _state(value: float, n: int = 1000) -> RecordDict:
    rng = np.random.default_rng(int(value * 10))
    return RecordDict({"r": ArrayRecord({"w": Array(rng.normal(value, 1, n).astype(np.float32))}),
                       "c": ConfigRecord({"round": value})})


def _w(state: RecordDict) -> np.ndarray:
    return np.asarray(state.array_records["r"]["w"].numpy())


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_pack_round_trips_bit_for_bit(compression: str) -> None:
    state = _state(3.0)
    back = unpack_state(pack_state(state, compression))
    assert _w(back).tobytes() == _w(state).tobytes() and back.config_records["c"]["round"] == 3.0


def test_load_returns_the_newest_version_before_the_round_and_keeps_two(tmp_path: Path) -> None:
    store = ClientStateStore(tmp_path / "s.sqlite")
    assert len(store.load("7", 1)) == 0  # nothing yet: an empty state
    for rnd in (1, 2, 3):
        store.save("7", rnd, _state(float(rnd)))
    assert store.load("7", 4).config_records["c"]["round"] == 3.0
    assert store.load("7", 3).config_records["c"]["round"] == 2.0  # a round played again reads what it read
    assert store.stats().versions == 2  # round 1 went when round 3 was saved
    store.save("8", 2, _state(9.0))
    assert store.stats().clients == 2
    assert store.discard_after(2) == 1  # a resume from round 2's checkpoint drops round 3
    assert store.load("7", 9).config_records["c"]["round"] == 2.0
    store.close()


def test_a_damaged_or_foreign_blob_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    store = ClientStateStore(path)
    store.save("1", 1, _state(1.0))
    store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE state SET blob = ?", (b"FSCS1\x00garbage",))
    with pytest.raises(StateStoreError, match=r"client 1 from round 1.*damaged"):
        ClientStateStore(path).load("1", 2)
    with pytest.raises(StateStoreError, match="not a fedshrink client state"):
        unpack_state(b"pickle")


def test_slots_and_where_the_store_lives(tmp_path: Path) -> None:
    run = {"output-dir": str(tmp_path / "runs"), "run-name": "r1"}
    assert store_dir(run, {}, 5) == tmp_path / "runs" / "r1" / "client-state"
    assert store_dir({**run, "client-state-dir": str(tmp_path / "x")}, {}, 5) == tmp_path / "x" / "r1"
    assert store_dir(run, {"client-state-dir": str(tmp_path / "node")}, 5) == tmp_path / "node" / "r1"  # node wins
    assert store_dir({"output-dir": str(tmp_path)}, {}, 5) == tmp_path / "run-5" / "client-state"
    ctx = Context(run_id=5, node_id=1, node_config={}, state=RecordDict(), run_config=run)
    assert isinstance(state_slot("memory", "none", ctx, "0"), ContextSlot)
    slot = state_slot("disk", "zstd", ctx, "0")
    slot.save(1, _state(1.5))
    assert _w(slot.load(2)).tobytes() == _w(_state(1.5)).tobytes()
    with pytest.raises(ConfigError, match="client-state"):
        state_slot("cloud", "none", ctx, "0")


def test_a_finished_run_deletes_its_client_state(tmp_path: Path, quick: dict[str, object]) -> None:
    from fedshrink.runner.inprocess import run_inprocess

    root = tmp_path / "state"
    result = run_inprocess({**quick, "num-server-rounds": 2, "uplink-chain": "topk:0.1|int8",
                            "client-state-dir": str(root)}, num_clients=2)
    assert result.summary["status"] == "completed"
    assert result.summary["client-state-bytes"] > 0  # its size, recorded before it went
    # the store was made under client-state-dir/<run> (the residuals of a lossy uplink), then deleted at the end
    assert root.is_dir() and not any(root.iterdir())
