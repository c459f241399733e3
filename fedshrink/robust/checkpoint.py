"""Server checkpoints: everything a run needs to continue bit for bit after the server dies.

Written atomically every round into the run directory (``checkpoint.pt``
through a temporary file and ``os.replace``; then ``checkpoint.json`` with the
round, for people and tests). ``checkpoint.pt`` is a ``torch.save`` of plain
containers of tensors, ints and strings only, loaded back with
``weights_only=True``: nothing is unpickled. It holds

* the round and the global model's arrays (exact dtypes and values);
* the strategy's state (:meth:`FedShrink.checkpoint_state`: e.g. node profiles), as JSON;
* the RNG states of Python's ``random``, numpy's global generator and torch's;
* the resource ledger so far (client rows and server costs), as JSON;
* for in-process simulations, every simulated client's ``context.state``
  (error-feedback residuals ...) as Flower's own protobuf serialisation of
  the RecordDict (:class:`ClientStateGrid`).

Metrics so far are ``metrics.jsonl`` itself: on resume it is cut back to the
checkpoint's round.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from flwr.app import RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

from fedshrink.errors import FedShrinkError

CHECKPOINT = "checkpoint.pt"
MARKER = "checkpoint.json"
FORMAT = 1


class CheckpointError(FedShrinkError):
    """A checkpoint is missing, malformed or does not fit the run it should resume."""


@runtime_checkable
class ClientStateGrid(Protocol):
    """A Grid whose clients' ``context.state`` the server can save and restore (the in-process one)."""

    def export_client_states(self) -> dict[int, RecordDict]: ...

    def import_client_states(self, states: dict[int, RecordDict]) -> None: ...


@dataclass
class ServerCheckpoint:
    round: int
    arrays: dict[str, np.ndarray]
    strategy: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    ledger: dict[str, Any] = field(default_factory=dict)
    client_states: dict[int, RecordDict] | None = None


# -- RNG states ----------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """Python ``random``, numpy's global and torch's CPU generator states, as tensors and JSON."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {
        "python": json.dumps(random.getstate(), default=list),
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = json.loads(state["python"])
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached"]))
    torch.set_rng_state(state["torch"])


# -- client states ----------------------------------------------------------------------------
def _recorddict_tensor(rd: RecordDict) -> torch.Tensor:
    data = recorddict_to_proto(rd).SerializeToString()
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)


def _tensor_recorddict(t: torch.Tensor) -> RecordDict:
    proto = ProtoRecordDict()
    proto.ParseFromString(t.numpy().tobytes())
    return recorddict_from_proto(proto)


# -- save / load --------------------------------------------------------------------------------
def save_checkpoint(run_dir: Path, ckpt: ServerCheckpoint) -> Path:
    payload: dict[str, Any] = {
        "format": FORMAT,
        "round": int(ckpt.round),
        "arrays": {k: torch.from_numpy(np.array(v, copy=True)) for k, v in ckpt.arrays.items()},
        "array_keys": json.dumps(list(ckpt.arrays)),
        "strategy": json.dumps(ckpt.strategy, sort_keys=True),
        "rng": ckpt.rng,
        "ledger": json.dumps(ckpt.ledger, sort_keys=True),
    }
    if ckpt.client_states is not None:
        payload["client_states"] = {str(n): _recorddict_tensor(rd) for n, rd in ckpt.client_states.items()}
    path = run_dir / CHECKPOINT
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    marker = run_dir / MARKER
    mtmp = marker.with_name(f".{marker.name}.tmp")
    mtmp.write_text(json.dumps({"round": int(ckpt.round), "file": CHECKPOINT}) + "\n")
    os.replace(mtmp, marker)
    return path


def load_checkpoint(run_dir: Path) -> ServerCheckpoint:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"no {CHECKPOINT} in {run_dir}: nothing to resume")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"{path} cannot be read: {type(exc).__name__}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fedshrink checkpoint of format {FORMAT}")
    keys = json.loads(payload["array_keys"])
    arrays = {k: payload["arrays"][k].numpy() for k in keys}
    states = payload.get("client_states")
    return ServerCheckpoint(
        round=int(payload["round"]),
        arrays=arrays,
        strategy=json.loads(payload["strategy"]),
        rng=payload["rng"],
        ledger=json.loads(payload["ledger"]),
        client_states=None if states is None else {int(n): _tensor_recorddict(t) for n, t in states.items()},
    )


def resumed_config(cfg: Any) -> Any:
    """``cfg`` itself, or with ``resume`` set, the settings stored in that run directory (plus ``resume``, ``quiet``).

    Typed loosely to keep this module free of :mod:`fedshrink.config` (which imports :mod:`fedshrink.robust`).
    """
    if not cfg.robust.resume:
        return cfg
    from fedshrink.config import RunConfig
    from fedshrink.errors import ConfigError

    path = Path(cfg.robust.resume).expanduser() / "config.json"
    if not path.is_file():
        raise ConfigError("resume", cfg.robust.resume, "a run directory holding config.json and checkpoint.pt")
    return RunConfig.from_json(path.read_text()).with_values({"resume": cfg.robust.resume, "quiet": cfg.output.quiet})
