"""Server checkpoints: everything a run needs to continue bit for bit after the server dies.

Written atomically every round into the run directory (``checkpoint.pt``
through a temporary file and ``os.replace``; then ``checkpoint.json`` with the
round, for people and tests). ``checkpoint.pt`` is a ``torch.save`` of plain
containers of tensors, ints and strings only, loaded back with
``weights_only=True``: nothing is unpickled. It holds

* the round and the global model's arrays (exact dtypes and values);
* the strategy's state (:meth:`FedShrink.checkpoint_state`: e.g. node profiles), as JSON, and its arrays
  (:meth:`FedShrink.checkpoint_arrays`: e.g. the updates ``absent-updates`` remembers);
* the RNG states of Python's ``random``, numpy's global generator and torch's;
* the resource ledger so far (client rows and server costs), as JSON;
* for in-process simulations, every simulated client's ``context.state``
  (error-feedback residuals ...) as Flower's own protobuf serialisation of
  the RecordDict (:class:`ClientStateGrid`).

Metrics so far are ``metrics.jsonl`` itself: on resume it is cut back to the
checkpoint's round.

:func:`load_checkpoint` checks every field before anything uses it: a missing
field, a wrong type, text that is not JSON, an array that ``array_keys`` names
but ``arrays`` lacks, an RNG state its generator refuses, a client state that is
not a serialised RecordDict: each is a :class:`CheckpointError` naming the field.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
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
    strategy_arrays: dict[str, np.ndarray] = field(default_factory=dict)


# -- RNG states ----------------------------------------------------------------------------
def capture_rng() -> dict[str, Any]:
    """Python ``random``, numpy's global and torch's CPU generator states, as tensors and JSON."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": json.dumps(random.getstate(), default=list),
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }


def _rng_parts(state: dict[str, Any]) -> tuple[Any, Any, torch.Tensor]:
    """``state`` (from :func:`capture_rng`) as the arguments of ``random.setstate``, ``np.random.set_state``
    and ``torch.set_rng_state``."""
    version, internal, gauss = json.loads(state["python"])
    npst = state["numpy"]
    numpy_state = (npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                   npst["cached"])
    return (version, tuple(internal), gauss), numpy_state, state["torch"]


def restore_rng(state: dict[str, Any]) -> None:
    """Set the three generators to ``state``; an empty state (none was captured) leaves them alone."""
    if not state:
        return
    python_state, numpy_state, torch_state = _rng_parts(state)
    random.setstate(python_state)
    np.random.set_state(numpy_state)
    torch.set_rng_state(torch_state)


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
        "strategy_arrays": {k: torch.from_numpy(np.array(v, copy=True)) for k, v in ckpt.strategy_arrays.items()},
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
    """The checkpoint in ``run_dir``, every field checked (:class:`CheckpointError` naming the first bad one)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"no {CHECKPOINT} in {run_dir}: nothing to resume")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"{path} cannot be read: {type(exc).__name__}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a fedshrink checkpoint of format {FORMAT}")
    fields = _Fields(path, payload)
    return ServerCheckpoint(
        round=fields.round(),
        arrays=fields.arrays(),
        strategy=fields.json_object("strategy"),
        rng=fields.rng(),
        ledger=fields.json_object("ledger"),
        client_states=fields.client_states(),
        strategy_arrays=fields.strategy_arrays(),
    )


class _Fields:
    """Typed, checked access to the fields of a loaded checkpoint payload."""

    def __init__(self, path: Path, payload: dict[Any, Any]) -> None:
        self.path = path
        self.payload = payload

    def fault(self, name: str, problem: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: field {name!r} {problem}")

    def at(self, name: str) -> Callable[[str], CheckpointError]:
        """The fault of field ``name``, for :func:`_typed`."""
        return lambda problem: self.fault(name, problem)

    def get(self, name: str, kind: type | tuple[type, ...], what: str) -> Any:
        if name not in self.payload:
            raise self.fault(name, "is missing")
        return _typed(self.payload[name], kind, what, self.at(name))

    def json(self, name: str, kind: type, what: str) -> Any:
        text = self.get(name, str, "a JSON string")
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise self.fault(name, f"is not JSON ({exc.msg} at character {exc.pos})") from exc
        return _typed(value, kind, what, lambda problem: self.fault(name, f"holds JSON that {problem}"))

    def json_object(self, name: str) -> dict[str, Any]:
        return dict(self.json(name, dict, "an object"))

    def round(self) -> int:
        value = int(self.get("round", int, "an integer"))
        if value < 0:
            raise self.fault("round", f"is {value}, not >= 0")
        return value

    def arrays(self) -> dict[str, np.ndarray]:
        keys = self.json("array_keys", list, "a list")
        if not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
            raise self.fault("array_keys", "is not a list of distinct names")
        tensors = self.get("arrays", dict, "a dict of tensors")
        missing, extra = [k for k in keys if k not in tensors], [k for k in tensors if k not in keys]
        if missing or extra:
            raise self.fault("arrays", f"does not match array_keys (missing {missing[:5]}, unnamed {extra[:5]})")
        return {k: self.numpy(f"arrays[{k!r}]", tensors[k]) for k in keys}

    def numpy(self, name: str, value: Any) -> np.ndarray:
        """``value``, a tensor, as an array (a fault naming ``name`` when it is not one or has no numpy form)."""
        tensor: torch.Tensor = _typed(value, torch.Tensor, "a tensor", self.at(name))
        try:
            return tensor.numpy()
        except (TypeError, RuntimeError) as exc:
            raise self.fault(name, f"has no numpy form: {exc}") from exc

    def strategy_arrays(self) -> dict[str, np.ndarray]:
        """Optional (a checkpoint written before it existed has none)."""
        if "strategy_arrays" not in self.payload:
            return {}
        tensors = self.get("strategy_arrays", dict, "a dict of tensors")
        bad = next((k for k in tensors if not isinstance(k, str)), None)
        if bad is not None:
            raise self.fault(f"strategy_arrays[{bad!r}]", "has a key that is not a string")
        return {k: self.numpy(f"strategy_arrays[{k!r}]", t) for k, t in tensors.items()}

    def rng(self) -> dict[str, Any]:
        state = dict(self.get("rng", dict, "a dict"))
        if not state:
            return state
        for part, kind in (("python", str), ("numpy", dict), ("torch", torch.Tensor)):
            _typed(state.get(part), kind, f"a state with a {kind.__name__} {part!r} part", self.at("rng"))
        try:  # each generator checks its own state, on a throwaway instance
            python_state, numpy_state, torch_state = _rng_parts(state)
            random.Random().setstate(python_state)
            np.random.RandomState().set_state(numpy_state)
            torch.Generator().set_state(torch_state)
        except Exception as exc:  # KeyError, TypeError, ValueError, RuntimeError, JSONDecodeError ...
            raise self.fault("rng", f"is not a state of the Python, numpy and torch generators: "
                                    f"{type(exc).__name__}: {exc}") from exc
        return state

    def client_states(self) -> dict[int, RecordDict] | None:
        if self.payload.get("client_states") is None:
            return None
        states = self.get("client_states", dict, "a dict of node id -> serialised RecordDict")
        out = {}
        for node, tensor in states.items():
            name = f"client_states[{node!r}]"
            if not (isinstance(node, str) and node.lstrip("-").isdigit()):
                raise self.fault(name, "has a key that is not a node id")
            tensor = _typed(tensor, torch.Tensor, "a tensor", self.at(name))
            if tensor.dtype != torch.uint8 or tensor.dim() != 1:
                raise self.fault(name, f"is a {tensor.dtype} tensor of shape {tuple(tensor.shape)}, not 1-d uint8")
            try:
                out[int(node)] = _tensor_recorddict(tensor)
            except Exception as exc:  # protobuf DecodeError, or whatever Flower's deserialiser raises
                raise self.fault(name, f"is not a serialised RecordDict: {type(exc).__name__}: {exc}") from exc
        return out


def _typed(value: Any, kind: type | tuple[type, ...], what: str, fault: Callable[[str], CheckpointError]) -> Any:
    """``value`` if it is a ``kind`` (a bool is no integer here), else ``fault("is a <type>, not <what>")``."""
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise fault(f"is a {type(value).__name__}, not {what}")
    return value


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
