"""Device profiles: moved to :mod:`fedshrink.devices.profiles` (budgets: :mod:`fedshrink.devices.budget`).

This module re-exports their public names so existing imports keep working.
"""

from fedshrink.devices.budget import (
    COMPRESSION_LADDER,
    WIDTH_LADDER,
    Budget,
    CompressionLevel,
    Plan,
    ProfileBudget,
    pick_profile,
    plan_budget,
)
from fedshrink.devices.profiles import (
    DEFAULT_MIX,
    PROFILES,
    PRUNE_KINDS,
    PRUNING_METHOD,
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
    "COMPRESSION_LADDER",
    "DEFAULT_MIX",
    "PROFILES",
    "PRUNE_KINDS",
    "PRUNING_METHOD",
    "WIDTH_LADDER",
    "Budget",
    "CompressionLevel",
    "DeviceProfile",
    "Estimate",
    "Plan",
    "ProfileBudget",
    "assign_profiles",
    "chain_bytes",
    "estimate",
    "get_profile",
    "parse_mix",
    "pick_profile",
    "plan_budget",
    "register_profile",
]
