"""Downlinks of only what changed: a reference model shared by server and clients, moved by compressed deltas.

With ``downlink-delta`` set to a codec chain, the server keeps, for each
distinct fragment it sends (one per width and profile under the static
policy; one in all without fragments), a **reference** ``R``: the model every
client of that fragment holds. In each round the fragment is used, the
server encodes the change ``D = encode(G - R)`` of the fragment ``G`` of the
global model with the chain and moves ``R`` by what the clients will decode,
``R += decode(D)``. What the chain left out (``G - R`` afterwards) is not lost:
it is in the next round's change. That is error feedback on the server, as in
sparse ternary compression (Sattler et al., 2019) and double-sided
compression, and it needs no per-client memory on the server.

A client holds its reference between rounds (its client state,
:mod:`fedshrink.runner.state`) with the round it stands for. A client at round
``b`` is sent the deltas of the rounds after ``b``, in order; a client that
has none (its first round, a lost state) is sent the whole reference. A new
reference is the fragment sent through the profile's (or the run's) downlink
chain, as without deltas, and is what that send decodes to; later whole sends
are exact (``raw``). The server keeps each fragment's recent deltas while their bytes
add up to less than the whole reference's: a client further behind gets the
whole reference, which is then the cheaper message. Clients train from ``R``
and send ``trained - R``; the server adds the mean update to ``G``, not to
``R``, so the model it aggregates never carries the downlink's error.

Both sides apply a delta with the same float32 additions (torch), so a
client's reference is bit-identical to the server's.

Public API::

    refs = DownlinkReferences("topk:0.05|q4|zstd")
    refs.advance(key, server_round, fragment_state, first="int8|zstd")   # once per round and fragment
    refs.holds(key) -> bool; refs.reference(key) -> dict[str, Tensor]   # what every synced client of `key` holds
    refs.whole(key) -> ArrayRecord                    # the reference (first round: as `first` sent it; then raw)
    refs.deltas_since(key, base) -> list[ArrayRecord] | None   # None: send the whole reference
    apply_delta(reference, decoded) -> dict[str, Tensor]
    ClientReference.load(state) / .save(state)        # the client's copy in its state RecordDict
    meta, arrays = refs.state(); refs.load(meta, arrays)   # in the run's checkpoint (resume is bit-exact)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict
from flwr.common.serde import array_record_from_proto, array_record_to_proto
from flwr.proto.recorddict_pb2 import ArrayRecord as ProtoArrayRecord
from google.protobuf.message import DecodeError as DecodeProtoError

from fedshrink.compression.chain import Chain
from fedshrink.compression.flower import decode_like, decode_record, encode_state
from fedshrink.compression.wire import DEFAULT_LIMITS, DecodeLimits
from fedshrink.errors import DecodeError

REFERENCE_KEY = "fedshrink.downlink-reference"  # the client state's ArrayRecord (the reference, raw)
REFERENCE_META = "fedshrink.downlink-reference.meta"  # its ConfigRecord: round and fragment digest


def apply_delta(reference: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor]
                ) -> dict[str, torch.Tensor]:
    """``reference + delta`` per tensor, in the reference's dtype; :class:`DecodeError` if a name or shape differs.

    Server and client both call this, so both get the same bits.
    """
    if set(delta) != set(reference):
        missing, extra = sorted(set(reference) - set(delta)), sorted(set(delta) - set(reference))
        raise DecodeError("downlink delta", f"tensors differ from the reference (missing {missing[:3]}, "
                          f"unexpected {extra[:3]})")
    out = {}
    for name, ref in reference.items():
        d = delta[name]
        if d.numel() == ref.numel() == 1:
            d = d.reshape(ref.shape)  # a scalar (BatchNorm's batch count) travels as one element
        if tuple(d.shape) != tuple(ref.shape):
            raise DecodeError(name, f"downlink delta of shape {tuple(d.shape)} for a reference of {tuple(ref.shape)}")
        out[name] = ref + d.to(ref.dtype)
    return out


def _difference(target: Mapping[str, np.ndarray], reference: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.require(target[k], requirements="C")).to(ref.dtype) - ref
            for k, ref in reference.items()}


@dataclass
class _Track:
    """One fragment's reference and its recent deltas."""

    reference: dict[str, torch.Tensor]
    since: int  # the round the kept deltas start after: a client at an earlier round gets the whole reference
    round: int  # the round the reference stands for
    whole: ArrayRecord | None = None  # the reference as sent whole this round (made on demand, once per round)
    whole_nbytes: int = 0  # the bytes of the reference sent raw (the same every round)
    deltas: list[tuple[int, ArrayRecord, int]] = field(default_factory=list)  # (round, record, bytes)


class DownlinkReferences:
    """The server's references, one per fragment key (see the module doc)."""

    def __init__(self, chain: str) -> None:
        self.chain = Chain.parse(chain)
        self._tracks: dict[object, _Track] = {}

    def advance(self, key: object, server_round: int, target: Mapping[str, np.ndarray], first: str = "raw") -> None:
        """Move ``key``'s reference towards ``target`` (the fragment of this round's global model); once per round
        (a second call in the same round does nothing). A new reference is ``target`` sent through ``first``
        (the profile's or the run's downlink chain): lossy there, the reference is what that send decodes to, and
        the difference goes out with the deltas that follow."""
        track = self._tracks.get(key)
        if track is None or set(track.reference) != set(target) or \
                any(tuple(track.reference[k].shape) != tuple(np.shape(v)) for k, v in target.items()):
            state = {k: torch.from_numpy(np.require(v, requirements="C")) for k, v in target.items()}
            record, _ = encode_state(state, first, round=server_round, direction="downlink")
            decoded = decode_record(record)
            reference = {k: decoded[k].to(v.dtype) for k, v in state.items()}
            raw_nbytes = encode_state(reference, "raw", round=server_round, direction="downlink")[1]
            self._tracks[key] = _Track(reference, since=server_round, round=server_round, whole=record,
                                       whole_nbytes=raw_nbytes)
            return
        if track.round >= server_round:
            return
        record, nbytes = encode_state(_difference(target, track.reference), self.chain, round=server_round,
                                      direction="downlink")
        track.reference = apply_delta(track.reference, decode_like(record, track.reference))
        track.round, track.whole = server_round, None
        track.deltas.append((server_round, record, nbytes))
        while track.deltas and sum(n for _, _, n in track.deltas) >= track.whole_nbytes:
            track.since = track.deltas.pop(0)[0]  # a client that far behind is sent the whole reference

    def holds(self, key: object) -> bool:
        """Whether ``key`` has a reference yet."""
        return key in self._tracks

    def reference(self, key: object) -> dict[str, torch.Tensor]:
        """What a client of ``key`` holds after this round's message (shared: do not change it)."""
        return self._tracks[key].reference

    def whole(self, key: object) -> ArrayRecord:
        """The reference itself: in its first round as ``first`` sent it, later encoded exactly (``raw``)."""
        track = self._tracks[key]
        if track.whole is None:
            track.whole, _ = encode_state(track.reference, "raw", round=track.round, direction="downlink")
        return track.whole

    def deltas_since(self, key: object, base: int | None) -> list[ArrayRecord] | None:
        """The deltas that take a client of ``key`` from round ``base`` to this round's reference, in order; None
        when it must be sent the whole reference (no base, or deltas older than those kept)."""
        track = self._tracks[key]
        if base is None or base < track.since or base >= track.round:
            return None
        return [record for r, record, _ in track.deltas if r > base]

    # -- checkpoint ----------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """What a resumed run needs: JSON-ready metadata and arrays by name (each reference's tensors, each kept
        delta as its ArrayRecord's protobuf bytes). Keys must be tuples of strings (the planner's are)."""
        meta: list[dict[str, Any]] = []
        arrays: dict[str, np.ndarray] = {}
        for i, (key, track) in enumerate(self._tracks.items()):
            if not isinstance(key, tuple) or not all(isinstance(k, str) for k in key):
                raise TypeError(f"a reference key to checkpoint must be a tuple of strings, not {key!r}")
            meta.append({"key": list(key), "names": list(track.reference), "since": track.since,
                         "round": track.round, "whole-nbytes": track.whole_nbytes,
                         "deltas": [[r, n] for r, _, n in track.deltas]})
            for j, name in enumerate(track.reference):
                arrays[f"{i}/ref/{j}"] = track.reference[name].numpy().copy()
            for j, (_, record, _) in enumerate(track.deltas):
                arrays[f"{i}/delta/{j}"] = np.frombuffer(array_record_to_proto(record).SerializeToString(),
                                                         dtype=np.uint8).copy()
        return {"tracks": meta}, arrays

    def load(self, meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
        """Restore what :meth:`state` returned; :class:`ValueError` naming what is missing or malformed."""
        tracks = meta.get("tracks")
        if not isinstance(tracks, list):
            raise ValueError("downlink references: 'tracks' must be a list")
        self._tracks = {}
        for i, t in enumerate(tracks):
            try:
                reference = {name: torch.from_numpy(np.array(arrays[f"{i}/ref/{j}"], copy=True))
                             for j, name in enumerate(t["names"])}
                deltas = []
                for j, (rnd, nbytes) in enumerate(t["deltas"]):
                    proto = ProtoArrayRecord()
                    proto.ParseFromString(np.asarray(arrays[f"{i}/delta/{j}"], dtype=np.uint8).tobytes())
                    deltas.append((int(rnd), array_record_from_proto(proto), int(nbytes)))
                self._tracks[tuple(str(k) for k in t["key"])] = _Track(
                    reference, since=int(t["since"]), round=int(t["round"]), whole_nbytes=int(t["whole-nbytes"]),
                    deltas=deltas)
            except (KeyError, TypeError, ValueError, DecodeProtoError) as exc:
                raise ValueError(f"downlink references: track {i} is malformed ({type(exc).__name__}: {exc})") \
                    from None


@dataclass(frozen=True)
class ClientReference:
    """A client's copy of its reference: the tensors, the round they stand for and the fragment they belong to."""

    tensors: dict[str, torch.Tensor]
    round: int
    fragment: str

    @classmethod
    def load(cls, state: RecordDict, limits: DecodeLimits = DEFAULT_LIMITS) -> ClientReference | None:
        """The reference kept in a client's state; None when it has none."""
        if REFERENCE_KEY not in state.array_records or REFERENCE_META not in state.config_records:
            return None
        meta = state.config_records[REFERENCE_META]
        rnd, fragment = meta.get("round"), meta.get("fragment")
        if not isinstance(rnd, int) or not isinstance(fragment, str):
            raise DecodeError(REFERENCE_META, f"round {rnd!r} and fragment {fragment!r} are not an int and a str")
        return cls(decode_record(state.array_records[REFERENCE_KEY], limits=limits), rnd, fragment)

    def save(self, state: RecordDict) -> None:
        state[REFERENCE_KEY], _ = encode_state(self.tensors, "raw", round=self.round, direction="downlink")
        state[REFERENCE_META] = ConfigRecord({"round": self.round, "fragment": self.fragment})


def follow(held: ClientReference | None, base: int, deltas: Sequence[Mapping[str, torch.Tensor]], *,
           server_round: int, fragment: str) -> ClientReference:
    """A client's reference after this round's deltas; :class:`DecodeError` naming the mismatch when the client
    does not hold the round ``base`` the server sent deltas from (its state is lost or older)."""
    if held is None:
        raise DecodeError("downlink", f"deltas from round {base} were sent, but this client holds no reference")
    if held.round != base or held.fragment != fragment:
        raise DecodeError("downlink", f"deltas from round {base} (fragment {fragment or 'whole'}) were sent, but "
                          f"this client holds round {held.round} (fragment {held.fragment or 'whole'})")
    tensors = held.tensors
    for delta in deltas:
        tensors = apply_delta(tensors, delta)
    return ClientReference(tensors, server_round, fragment)
