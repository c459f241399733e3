"""Model fragments: channel-group graph, FragmentSpec, slicing and scatter, policies, nested training, fusion.

Pure functions over tensors / state dicts; no Flower, no codecs::

    graph = build_graph(model)                                   # torch.fx, any registered model
    spec = make_policy("rolling").spec_for(graph, 0.5, server_round, node_id)
    wire = spec.to_json()          ->   FragmentSpec.from_json(wire)   # str for a ConfigRecord
    sub = extract(global_state, graph, spec)                     # loads into build_model(ms.at_width(0.5))
    values, held = scatter(sub, graph, spec)                     # full shapes + bool masks

Modules: :mod:`.graph` (tracing and channel groups), :mod:`.spec`
(FragmentSpec and its wire form), :mod:`.slicing` (extract / scatter), :mod:`.policies` (static, rolling, random).
"""

from fedshrink.fragments.graph import ChannelGroup, DimRule, LayerGraph, TensorRule, build_graph, canonical_key
from fedshrink.fragments.policies import (
    POLICIES,
    FragmentPolicy,
    PolicyConfig,
    RandomConfig,
    RandomPolicy,
    RollingConfig,
    RollingPolicy,
    StaticConfig,
    StaticPolicy,
    client_seed,
    make_policy,
)
from fedshrink.fragments.slicing import (
    extract,
    scatter,
    sub_shapes,
    tensor_indices,
)
from fedshrink.fragments.spec import FORMAT, FragmentSpec, full_spec, kept_fraction, spec_from_counts

__all__ = [
    "FORMAT",
    "POLICIES",
    "ChannelGroup",
    "DimRule",
    "FragmentPolicy",
    "FragmentSpec",
    "LayerGraph",
    "PolicyConfig",
    "RandomConfig",
    "RandomPolicy",
    "RollingConfig",
    "RollingPolicy",
    "StaticConfig",
    "StaticPolicy",
    "TensorRule",
    "build_graph",
    "canonical_key",
    "client_seed",
    "extract",
    "full_spec",
    "kept_fraction",
    "make_policy",
    "scatter",
    "spec_from_counts",
    "sub_shapes",
    "tensor_indices",
]
