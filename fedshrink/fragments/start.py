"""The model a run starts from, rebuilt from its seed, so that a client can build it instead of receiving it.

With ``downlink-start = "seed"`` (and downlink deltas), a client that holds no reference in the run's first
round is not sent the model: the instruction carries the run's seed and a digest, the client builds the model
(``torch.manual_seed(seed)``, then :func:`~fedshrink.models.build_model`, as the server's loop does), takes
its fragment, and checks the digest. Its reference is then exact, and the first send costs nothing. A client
whose build differs (another torch build may initialise differently) refuses the round; the server then sends
it the whole reference (raw) in its next round.

Public API::

    start_state(spec, seed, fragment=None, graph=None) -> dict[str, Tensor]   # the model, or its fragment
    state_digest(state) -> int          # 63 bits of BLAKE2b over names, dtypes, shapes and bytes, in order
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping

import numpy as np
import torch

from fedshrink.fragments.graph import LayerGraph, build_graph
from fedshrink.fragments.slicing import extract
from fedshrink.fragments.spec import FragmentSpec
from fedshrink.models import ModelSpec, build_model

_LOCK = threading.Lock()  # the global torch RNG is seeded and restored under it (clients may run in threads)


def start_state(spec: ModelSpec, seed: int, fragment: FragmentSpec | None = None,
                graph: LayerGraph | None = None) -> dict[str, torch.Tensor]:
    """The model ``torch.manual_seed(seed); build_model(spec)`` starts from, or its ``fragment``; the caller's
    global RNG state is left as it was."""
    with _LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(spec)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if fragment is None:
        return state
    return extract(state, graph if graph is not None else build_graph(model), fragment)


def state_digest(state: Mapping[str, torch.Tensor | np.ndarray]) -> int:
    """A digest of a state's names, dtypes, shapes and bytes, in order (equal states, equal digests)."""
    h = hashlib.blake2b(digest_size=8)
    for name, value in state.items():
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        arr = np.ascontiguousarray(arr)
        h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return int.from_bytes(h.digest(), "little") >> 1  # 63 bits: a ConfigRecord's signed integer
