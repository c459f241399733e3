"""A strategy under test, without a federation: a grid that answers hellos, replies built as clients build them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import torch
from flwr.app import ConfigRecord, Message
from helpers import FakeGrid

from fedshrink.compression import encode_state
from fedshrink.compression.pruning import encode_masks
from fedshrink.compression.reference import DownlinkReferences
from fedshrink.devices import Budget, DeviceModel
from fedshrink.devices.profiles import DeviceProfile
from fedshrink.fragments import build_graph, make_policy
from fedshrink.models import ModelSpec, build_model
from fedshrink.protocol import HELLO, MASKS, Hello, TrainInstruction, TrainReply, fragment_digest
from fedshrink.strategy.plan import Planner, ReplyLimits
from fedshrink.strategy.rounds import ShrinkStrategy, numpy_to_record
from fedshrink.training import TrainSettings

TINY = ModelSpec("mlp", (1, 4, 4), 3, 0.05, "none")  # 16 -> 13 -> 6 -> 3


class HelloGrid(FakeGrid):
    """Connected nodes that answer the hello query (partition = position in ``node_ids``)."""

    def __init__(self, node_ids: list[int], profiles: Mapping[int, DeviceProfile] | None = None, *,
                 devices: Mapping[int, DeviceModel] | None = None, budgets: Mapping[int, Budget] | None = None,
                 examples: int = 10) -> None:
        super().__init__(node_ids)
        self.profiles = dict(profiles or {})
        self.devices = dict(devices or {})
        self.budgets = dict(budgets or {})
        self.examples = examples

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        out = []
        for msg in messages:
            assert msg.metadata.message_type == HELLO, msg.metadata.message_type
            node = msg.metadata.dst_node_id
            hello = Hello(self.node_ids.index(node), len(self.node_ids), self.profiles.get(node),
                          self.devices.get(node), self.budgets.get(node), self.examples)
            out.append(hello.reply_to(msg))
        return out


def make_strategy(spec: ModelSpec = TINY, *, fragments: bool = False, policy: str = "static",
                  derive: bool = False, size_factor: float = 2.0, max_bytes: int = 0, uplink: str = "raw",
                  references: DownlinkReferences | None = None, **kwargs: object) -> ShrinkStrategy:
    planner = Planner(spec, build_graph(build_model(spec)), TrainSettings(), uplink=uplink, downlink="raw",
                      fragments=fragments, policy=make_policy(policy) if fragments else None, derive=derive,
                      reply_limits=ReplyLimits(size_factor, max_bytes), references=references)
    kwargs.setdefault("update_limit", 0.0)
    return ShrinkStrategy(planner, **kwargs)  # type: ignore[arg-type]


def model_state(spec: ModelSpec = TINY, seed: int = 0) -> dict[str, np.ndarray]:
    torch.manual_seed(seed)
    return {k: v.numpy().copy() for k, v in build_model(spec).state_dict().items()}


def first_round(strategy: ShrinkStrategy, grid: HelloGrid, glob: Mapping[str, np.ndarray], rnd: int = 1
                ) -> list[Message]:
    return list(strategy.configure_train(rnd, numpy_to_record(glob), ConfigRecord({}), grid))  # type: ignore[arg-type]


def fragment_shapes(msg: Message) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensors a train message sent (the fragment's)."""
    record = TrainInstruction.from_records(msg.content).model
    return {k: tuple(a.shape) for k, a in record.items() if not k.startswith("_")}


def reply_to(msg: Message, update: Mapping[str, np.ndarray], *, pid: int, n: int = 10, loss: float = 1.0,
             metrics: Mapping[str, object] | None = None, masks: Mapping[str, np.ndarray] | None = None,
             chain: str | None = None) -> Message:
    """A client's reply to ``msg`` carrying ``update`` as the instruction asks (round, chain, fragment)."""
    instruction = TrainInstruction.from_records(msg.content)
    record, _ = encode_state({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in update.items()},
                             chain or instruction.uplink, round=instruction.server_round, direction="uplink",
                             fragment=fragment_digest(instruction.fragment))
    mask_record = encode_masks({k: torch.from_numpy(m) for k, m in masks.items()})[0] if masks else None
    reply = TrainReply(pid, n, record, loss, 1, 0.1, mask_record).to_message(msg)
    for key, value in (metrics or {}).items():
        reply.content["metrics"][key] = value  # type: ignore[assignment]
    if mask_record is not None:
        assert MASKS in reply.content
    return reply


def zero_update(shapes: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    return {k: np.zeros(tuple(s), np.float32) for k, s in shapes.items()}
