"""Simulated devices: device models, per-client draws, cost model, fleet clock and budget planner.

Flower-free and pure. Every figure here is *modelled* for a simulated device
(never measured on the host running the simulation)::

    DeviceModel, DEVICE_MODELS, get_device(name)               # .model: figures with sources
    client_device(median, client, seed, spread, trace=None)      # a trace row, else the seeded draw
    draw_device(median, client, seed, spread), is_available(device, client, seed, round)
    parse_trace(text) / load_trace(path) -> DeviceTrace          # .draws: per-client figures
    step_memory(spec, batch) -> StepMemory                       # .memory: graph-walk of one SGD step
    training_memory(step, ...) -> TrainingMemory                 #          the round's bytes by component
    round_cost(device, train_flops=, download_bytes=, upload_bytes=, memory_bytes=) -> RoundCost   # .cost
    sample_size(wanted, over_select), run_round(candidates, wanted=, server_round=, seed=, deadline_s=)
                                                                 # .clock: who is accepted, round time, energy
    RoundOutcome.metrics(), client_metrics(cost, status)         # device-* metric keys (numbers only)
    Budget, parse_budget, parse_budget_mix, assign_budgets, plan_budget(...) -> Plan   # .budget
    device_from_node_config(node_config, default), budget_from_node_config(node_config)  # .nodeconfig
    DeviceProfile, PROFILES, get_profile, estimate(spec, profile) -> Estimate          # .profiles

Formulas, units and sources: the modules' docs and docs/devices.md.
"""

from fedshrink.devices.budget import (
    COMPRESSION_LADDER,
    WIDTH_LADDER,
    Budget,
    Check,
    CompressionLevel,
    Plan,
    assign_budgets,
    parse_budget,
    parse_budget_mix,
    pick_profile,
    plan_budget,
)
from fedshrink.devices.clock import (
    ACCEPTED,
    REASONS,
    STATUS_CODES,
    Candidate,
    ClientOutcome,
    RoundOutcome,
    client_metrics,
    parse_over_select,
    run_round,
    sample_size,
)
from fedshrink.devices.cost import RoundCost, compute_seconds, radio_joules, round_cost, transfer_seconds
from fedshrink.devices.draws import (
    DeviceTrace,
    TraceRow,
    client_device,
    draw_device,
    is_available,
    load_trace,
    parse_trace,
)
from fedshrink.devices.memory import StepMemory, TrainingMemory, module_step_memory, step_memory, training_memory
from fedshrink.devices.model import DEVICE_MODELS, DeviceModel, get_device, register_device
from fedshrink.devices.nodeconfig import BUDGET_KEYS, DEVICE_KEYS, budget_from_node_config, device_from_node_config
from fedshrink.devices.profiles import (
    DEFAULT_MIX,
    PROFILES,
    DeviceProfile,
    Estimate,
    assign_profiles,
    chain_bytes,
    estimate,
    get_profile,
    parse_mix,
    register_profile,
)

__all__ = [
    "ACCEPTED",
    "BUDGET_KEYS",
    "COMPRESSION_LADDER",
    "DEFAULT_MIX",
    "DEVICE_KEYS",
    "DEVICE_MODELS",
    "PROFILES",
    "REASONS",
    "STATUS_CODES",
    "WIDTH_LADDER",
    "Budget",
    "Candidate",
    "Check",
    "ClientOutcome",
    "CompressionLevel",
    "DeviceModel",
    "DeviceProfile",
    "DeviceTrace",
    "Estimate",
    "Plan",
    "RoundCost",
    "RoundOutcome",
    "StepMemory",
    "TraceRow",
    "TrainingMemory",
    "assign_budgets",
    "assign_profiles",
    "budget_from_node_config",
    "chain_bytes",
    "client_device",
    "client_metrics",
    "compute_seconds",
    "device_from_node_config",
    "draw_device",
    "estimate",
    "get_device",
    "get_profile",
    "is_available",
    "load_trace",
    "module_step_memory",
    "parse_budget",
    "parse_budget_mix",
    "parse_mix",
    "parse_over_select",
    "parse_trace",
    "pick_profile",
    "plan_budget",
    "radio_joules",
    "register_device",
    "register_profile",
    "round_cost",
    "run_round",
    "sample_size",
    "step_memory",
    "training_memory",
    "transfer_seconds",
]
