"""Downlink deltas: the server's references, the client's copy, the instruction that carries them, and a strategy
that sends them (fedshrink.compression.reference)."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, RecordDict
from strategy_harness import TINY, HelloGrid, first_round, make_strategy, model_state, reply_to

from fedshrink.client.local import received_model
from fedshrink.compression import decode_like, decode_record, encode_state, message_nbytes
from fedshrink.compression.reference import (
    ClientReference,
    DownlinkReferences,
    apply_delta,
    follow,
)
from fedshrink.errors import ConfigError, DecodeError
from fedshrink.fragments import build_graph
from fedshrink.models import build_model
from fedshrink.protocol import TrainInstruction
from fedshrink.runner.inprocess import server_identity
from fedshrink.strategy.plan import Planner
from fedshrink.strategy.rounds import ShrinkStrategy, numpy_to_record, record_to_numpy
from fedshrink.training import TrainSettings

KEY = ("", "raw")


def _state(seed: int, n: int = 400) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((n // 20, 20)).astype(np.float32),
            "b": rng.standard_normal(20).astype(np.float32),
            "count": np.array(seed, dtype=np.int64)}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def test_first_round_is_the_target_exactly_and_whole_decodes_to_it():
    refs = DownlinkReferences("topk:0.1|q4|zstd")
    target = _state(0)
    refs.advance(KEY, 1, target)
    assert all(np.array_equal(refs.reference(KEY)[k].numpy(), target[k]) for k in target)
    assert _equal(decode_record(refs.whole(KEY)), refs.reference(KEY))
    assert refs.deltas_since(KEY, None) is None and refs.deltas_since(KEY, 1) is None


def test_a_lossy_first_send_is_the_reference_and_the_deltas_carry_its_error():
    refs = DownlinkReferences("topk:0.5")
    target = _state(0)
    refs.advance(KEY, 1, target, first="int8|zstd")
    ref = refs.reference(KEY)
    assert _equal(decode_record(refs.whole(KEY)), ref)  # what the first send decodes to, bit for bit
    first_gap = float(np.abs(ref["w"].numpy() - target["w"]).max())
    assert 0 < first_gap < 0.05
    for rnd in (2, 3):
        refs.advance(KEY, rnd, target)
    assert float(np.abs(refs.reference(KEY)["w"].numpy() - target["w"]).max()) < 1e-6  # 2 x 50% of the error
    assert len(refs.whole(KEY)["w"].data) > 4 * target["w"].size  # later whole sends are exact (raw)


def test_error_feedback_reaches_a_fixed_target_with_a_sparse_chain():
    """What top-k leaves out is sent later: with 10% per round, a fixed target is reached in 10 rounds."""
    refs = DownlinkReferences("topk:0.1")
    refs.advance(KEY, 1, _state(0))
    target = _state(1)
    gaps = []
    for rnd in range(2, 13):
        refs.advance(KEY, rnd, target)
        gaps.append(float(np.abs(refs.reference(KEY)["w"].numpy() - target["w"]).max()))
    assert gaps[0] > 0.5 and all(b <= a for a, b in itertools.pairwise(gaps))
    assert gaps[8] > 1e-3 and gaps[9] < 1e-6  # 10 rounds of 10% each (to float32 rounding)
    assert int(refs.reference(KEY)["count"]) == 1  # integer tensors move exactly


def test_a_client_that_follows_every_round_holds_the_servers_reference_bit_for_bit():
    refs = DownlinkReferences("topk:0.2|q4|zstd")
    refs.advance(KEY, 1, _state(0))
    held = ClientReference(decode_record(refs.whole(KEY)), 1, "")
    late = held  # a client that skips rounds 2-4
    for rnd in range(2, 7):
        refs.advance(KEY, rnd, _state(rnd))
        deltas = refs.deltas_since(KEY, held.round)
        assert deltas is not None and len(deltas) == 1
        held = follow(held, held.round, [decode_record(d) for d in deltas], server_round=rnd, fragment="")
        assert _equal(held.tensors, refs.reference(KEY))
        if rnd == 5:
            catch_up = refs.deltas_since(KEY, late.round)
            assert catch_up is not None and len(catch_up) == 4
            late = follow(late, 1, [decode_record(d) for d in catch_up], server_round=5, fragment="")
            assert _equal(late.tensors, refs.reference(KEY))


def test_deltas_are_kept_only_while_cheaper_than_the_whole_reference():
    refs = DownlinkReferences("topk:0.5")  # each delta is about half the whole reference
    refs.advance(KEY, 1, _state(0))
    for rnd in range(2, 8):
        refs.advance(KEY, rnd, _state(rnd))
    assert refs.deltas_since(KEY, 6) is not None
    assert refs.deltas_since(KEY, 1) is None  # too far behind: the whole reference is the cheaper message
    kept = refs.deltas_since(KEY, refs._tracks[KEY].since)
    whole = len(refs.whole(KEY)["w"].data) + len(refs.whole(KEY)["b"].data)
    assert kept is not None and 0 < sum(len(a.data) for d in kept for a in d.values()) < whole + 1024


def test_a_client_at_another_round_or_fragment_refuses_the_deltas():
    held = ClientReference({"w": torch.zeros(3)}, 4, "f1")
    with pytest.raises(DecodeError, match="holds round 4"):
        follow(held, 5, [{"w": torch.ones(3)}], server_round=7, fragment="f1")
    with pytest.raises(DecodeError, match="fragment f2"):
        follow(held, 4, [{"w": torch.ones(3)}], server_round=7, fragment="f2")
    with pytest.raises(DecodeError, match="holds no reference"):
        follow(None, 4, [], server_round=7, fragment="f1")
    with pytest.raises(DecodeError, match="shape"):
        apply_delta({"w": torch.zeros(3)}, {"w": torch.zeros(4)})
    with pytest.raises(DecodeError, match="missing"):
        apply_delta({"w": torch.zeros(3), "b": torch.zeros(1)}, {"w": torch.zeros(3)})


def test_client_reference_survives_its_state_record_exactly():
    state = RecordDict()
    held = ClientReference({k: torch.from_numpy(v) for k, v in _state(3).items()}, 9, "abc")
    held.save(state)
    back = ClientReference.load(state)
    assert back is not None and back.round == 9 and back.fragment == "abc" and _equal(back.tensors, held.tensors)
    assert ClientReference.load(RecordDict()) is None


def _instruction(model: ArrayRecord, rnd: int = 3, **kw: object) -> TrainInstruction:
    from fedshrink.models import ModelSpec
    from fedshrink.training import TrainSettings

    return TrainInstruction(rnd, ModelSpec("mlp", (1, 4, 4), 3, 0.05, "none"), TrainSettings(), "raw", model,
                            **kw)  # type: ignore[arg-type]


def test_instruction_carries_its_deltas_and_refuses_a_missing_one():
    d1, _ = encode_state({"w": torch.ones(2)}, "raw", round=2, direction="downlink")
    d2, _ = encode_state({"w": torch.ones(2) * 2}, "raw", round=3, direction="downlink")
    sent = _instruction(ArrayRecord(), downlink_reference=True, downlink_base=1, deltas=(d1, d2))
    back = TrainInstruction.from_records(sent.to_records())
    assert back.downlink_reference and back.downlink_base == 1 and len(back.deltas) == 2
    assert torch.equal(decode_record(back.deltas[1])["w"], torch.ones(2) * 2)
    plain = TrainInstruction.from_records(_instruction(d1).to_records())
    assert not plain.downlink_reference and plain.deltas == ()
    content = sent.to_records()
    del content["downlink-delta-1"]
    with pytest.raises(ConfigError, match="downlink-delta-1"):
        TrainInstruction.from_records(content)
    content = sent.to_records()
    content.config_records["config"]["downlink-base"] = 0
    with pytest.raises(ConfigError, match="downlink-deltas"):
        TrainInstruction.from_records(content)


def test_received_model_follows_the_deltas_and_keeps_the_reference_in_state():
    refs = DownlinkReferences("topk:0.3|int8")
    refs.advance(KEY, 4, _state(0))
    state = RecordDict()
    first = received_model(_instruction(refs.whole(KEY), rnd=4, downlink_reference=True), state)
    assert _equal(first, refs.reference(KEY))
    refs.advance(KEY, 5, _state(7))
    step = refs.deltas_since(KEY, 4)
    assert step is not None
    moved = received_model(_instruction(ArrayRecord(), rnd=5, downlink_reference=True, downlink_base=4,
                                        deltas=tuple(step)), state)
    assert _equal(moved, refs.reference(KEY))
    assert ClientReference.load(state).round == 5  # type: ignore[union-attr]
    with pytest.raises(DecodeError, match="holds round 5"):  # the same deltas again: the client moved on
        received_model(_instruction(ArrayRecord(), rnd=5, downlink_reference=True, downlink_base=4,
                                    deltas=tuple(step)), state)
    assert _equal(received_model(_instruction(decode_and_plain(refs), rnd=5), RecordDict()),
                  decode_record(decode_and_plain(refs)))  # without a reference: the model as sent


def decode_and_plain(refs: DownlinkReferences) -> ArrayRecord:
    return refs.whole(KEY)


# -- a strategy that sends deltas -------------------------------------------------------------------
def test_strategy_sends_deltas_to_synced_nodes_and_the_whole_reference_to_the_rest():
    strategy = make_strategy(TINY, references=DownlinkReferences("topk:0.2|q4|zstd"), fraction_train=1.0,
                             min_train_clients=1, seed=0)
    grid, glob = HelloGrid([11, 12, 13]), model_state(seed=0)
    states = {n: RecordDict() for n in grid.node_ids}
    with server_identity(run_id=7):
        sent = {m.metadata.dst_node_id: m for m in strategy.configure_train(1, numpy_to_record(glob),
                                                                             ConfigRecord({}), grid)}  # type: ignore[arg-type]
        for node, msg in sent.items():
            instruction = TrainInstruction.from_records(msg.content)
            assert instruction.downlink_reference and instruction.downlink_base == 0 and not instruction.deltas
            received_model(instruction, states[node])
        update = {k: np.full(v.shape, 0.01, np.float32) for k, v in glob.items()}
        replies = [reply_to(sent[11], update, pid=0), Message(Error(1, "boom"), reply_to=sent[12])]  # 13: silent
        new, _ = strategy.aggregate_train(1, replies)
        assert new is not None
        # the update is added to the global model the server holds, not to the reference
        assert all(np.allclose(record_to_numpy(new)[k], glob[k] + 0.01) for k in glob)
        sent2 = {m.metadata.dst_node_id: TrainInstruction.from_records(m.content)
                 for m in strategy.configure_train(2, new, ConfigRecord({}), grid)}  # type: ignore[arg-type]
    assert sent2[11].downlink_base == 1 and len(sent2[11].deltas) == 1 and not sent2[11].model
    assert sent2[12].downlink_base == 0 and sent2[13].downlink_base == 0 and len(sent2[12].model) > 0
    server_ref = strategy.planner.references.reference(("", "raw"))  # type: ignore[union-attr]
    assert _equal(received_model(sent2[11], states[11]), server_ref)  # moved by the delta, bit for bit
    assert _equal(received_model(sent2[12], states[12]), server_ref)  # sent whole
    assert not _equal(server_ref, {k: torch.from_numpy(v) for k, v in record_to_numpy(new).items()})  # lossy


def test_downlink_delta_needs_the_static_policy():
    from fedshrink.config import RunConfig

    with pytest.raises(ConfigError, match=r"downlink-delta.*fragment-policy"):
        RunConfig.from_mapping({"downlink-delta": "topk:0.1|q4", "fragment-policy": "rolling"})
    assert RunConfig.from_mapping({"downlink-delta": "topk:0.1|q4"}).chains.downlink_delta == "topk:0.1|q4"
    with pytest.raises(ConfigError, match="downlink-delta"):
        RunConfig.from_mapping({"downlink-delta": "topk:2"})


def test_references_survive_a_checkpoint_and_go_on_as_before():
    refs, again = DownlinkReferences("topk:0.2|q4|zstd"), DownlinkReferences("topk:0.2|q4|zstd")
    key2 = ('{"width": 0.5}', "phone")
    for rnd in range(1, 4):
        refs.advance(KEY, rnd, _state(rnd))
        refs.advance(key2, rnd, _state(10 + rnd, n=200))
    meta, arrays = refs.state()
    again.load(json.loads(json.dumps(meta)), {k: v.copy() for k, v in arrays.items()})
    for r in (refs, again):
        r.advance(KEY, 4, _state(4))
    assert _equal(refs.reference(KEY), again.reference(KEY)) and _equal(refs.reference(key2), again.reference(key2))
    a, b = refs.deltas_since(KEY, 1), again.deltas_since(KEY, 1)
    assert a is not None and b is not None and len(a) == len(b) == 3
    assert all(_equal(decode_record(x), decode_record(y)) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="track 0 is malformed"):
        again.load(meta, {k: v for k, v in arrays.items() if k != "0/delta/1"})
    with pytest.raises(ValueError, match="track 0 is malformed"):
        again.load(meta, {**arrays, "0/delta/0": np.frombuffer(b"\xff\xff\xff", dtype=np.uint8)})
    odd = DownlinkReferences("raw")
    odd.advance(7, 1, _state(0))
    with pytest.raises(TypeError, match="tuple of strings"):
        odd.state()


def test_flat_deltas_split_along_the_reference_held_and_match_the_server_bit_for_bit():
    """A ``flat|`` delta chain: one vector per round, one top-k over the whole model; a client moves its
    reference exactly as the server does, and a delta for another layout is refused."""
    refs = DownlinkReferences("flat|topk:0.05|q4|zstd")
    refs.advance(KEY, 1, _state(0))
    state = RecordDict()
    received_model(_instruction(refs.whole(KEY), rnd=1, downlink_reference=True), state)
    for rnd in (2, 3):
        refs.advance(KEY, rnd, _state(rnd))
        step = refs.deltas_since(KEY, rnd - 1)
        assert step is not None and "_flat" in step[0]
        moved = received_model(_instruction(ArrayRecord(), rnd=rnd, downlink_reference=True,
                                            downlink_base=rnd - 1, deltas=tuple(step)), state)
        assert _equal(moved, refs.reference(KEY))
        changed = sum(int((step_t != 0).sum()) for step_t in decode_like(step[0], moved).values())
        assert changed <= int(np.ceil(0.05 * sum(v.size for k, v in _state(0).items() if k != "count"))) + 1
    other = {k: torch.from_numpy(v.reshape(-1, 10) if k == "w" else v) for k, v in _state(0).items()}
    with pytest.raises(DecodeError, match="layout"):
        decode_like(step[0], other)
    with pytest.raises(DecodeError, match="none are held"):
        decode_like(step[0], None)


def _seeded(seed: int | None) -> ShrinkStrategy:
    planner = Planner(TINY, build_graph(build_model(TINY)), TrainSettings(), uplink="raw", downlink="raw",
                      fragments=False, references=DownlinkReferences("topk:0.5"), start_seed=seed)
    return ShrinkStrategy(planner, min_train_clients=1, update_limit=0.0)


def test_a_seeded_start_sends_no_model_and_the_client_builds_it_exactly():
    with server_identity(run_id=9):
        glob = model_state(TINY, seed=5)  # what the server's loop builds for seed 5
        sent = first_round(_seeded(5), HelloGrid([1]), glob)[0]
        plain = first_round(_seeded(None), HelloGrid([1]), glob)[0]
        ins = TrainInstruction.from_records(sent.content)
        assert ins.start_seed == 5 and len(ins.model) == 0 and ins.downlink_base == 0
        assert message_nbytes(sent) < message_nbytes(plain) / 2
        state = RecordDict()
        built = received_model(ins, state)
        assert all(np.array_equal(built[k].numpy(), glob[k]) for k in glob)
        assert ClientReference.load(state) is not None
        with pytest.raises(DecodeError, match="not the server's"):  # a client whose build differs refuses the round
            received_model(dataclasses.replace(ins, start_seed=6), RecordDict())
        other = first_round(_seeded(5), HelloGrid([1]), model_state(TINY, seed=6))[0]  # not the seed's: sent whole
        whole = TrainInstruction.from_records(other.content)
        assert whole.start_seed is None and len(whole.model) > 0
