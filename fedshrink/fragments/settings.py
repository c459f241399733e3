"""Settings of heterogeneous clients: profile mix, fragment policy, nested training, fusion."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from fedshrink.compression.settings import OPTIONAL_UPLINK
from fedshrink.devices.profiles import PROFILES, parse_mix
from fedshrink.fragments.fusion import INITS, TEACHERS, FusionConfig
from fedshrink.fragments.nested import NestedConfig
from fedshrink.fragments.policies import POLICIES, FragmentPolicy, make_policy
from fedshrink.settings import (
    Section,
    Setting,
    accepted_by,
    at_least,
    between,
    merge_settings,
    one_of,
    option,
    settings_of,
)


def _mix(text: str) -> object:
    return parse_mix(text) if text else {}


def _mix_words() -> str:
    return ("'' (every client trains the full model) or name:share pairs of known profiles ("
            + ", ".join(sorted(PROFILES)) + ") summing to 1, e.g. 'phone:0.4,laptop:0.6'")


@dataclass(frozen=True)
class FragmentSettings(Section):
    title: ClassVar[str] = "fragments"

    profile_mix: str = option(
        "iot:0.2,phone:0.4,laptop:0.4",
        "a mix of device profiles (each client trains the fragment its profile sets); `''`: every client trains "
        "the full model (plain FedAvg)",
        rule=accepted_by(_mix, _mix_words))
    profile_uplink: str = option(
        "", "`''` (each profile's own uplink chain) or a codec chain every profile-mix client sends its update "
        "with instead, e.g. `flat|topk:0.004|int8|zstd` (to compare a fleet and FedAvg under one codec)",
        rule=OPTIONAL_UPLINK)
    fragment_policy: str = option("static", "which channels a client's fragment keeps: `static` (prefix), "
                                  "`rolling` (a window moving each round), `random` (per client and round)",
                                  rule=one_of(lambda: POLICIES))
    pruned_as_zero: bool = option(True, "count a client's pruned weights as zeros in aggregation "
                                  "(false: as not held)")
    fragment_scaling: bool = option(False, "scale each sub-model layer's input by full / kept fan-in "
                                    "(HeteroFL's scaler)")
    nested_distill: bool = option(False, "wide clients also train their nested prefixes at the narrower widths "
                                  "in use, distilled from their own output (FjORD-style)")
    nested_temperature: float = option(1.0, "softmax temperature of that self-distillation",
                                       rule=between(0, 100, lo_open=True))
    nested_weight: float = option(1.0, "weight of that self-distillation loss", rule=between(0, 100))
    fragment_init: str = option("random", "`nested`: weights that read channels outside the widest narrower "
                                "sub-model start at zero; `random`: plain initialisation", rule=one_of(INITS))
    fusion_steps: int = option(50, "after an aggregation (see fusion-last-rounds), Adam steps distilling the "
                               "teacher (fusion-teacher) into the coordinates only full-width clients train, on the "
                               "proxy inputs", rule=at_least(0).noting("0 = off"))
    fusion_teacher: str = option("self", "fusion's teacher: `sub-models` (the mean softmax of the global model's "
                                 "nested sub-models) or `self` (that mean with the global model itself)",
                                 rule=one_of(lambda: TEACHERS))
    fusion_last_rounds: int = option(1, "fuse after the aggregations of the run's last this many rounds (1: the "
                                     "final model only)", rule=at_least(0).noting("0 = after every round"))
    fusion_temperature: float = option(2.0, "softmax temperature of fusion", rule=between(0, 100, lo_open=True))
    fusion_lr: float = option(0.001, "Adam learning rate of fusion", rule=between(0, 1, lo_open=True))
    fusion_batch: int = option(256, "proxy images a fusion step uses at most (a seeded draw when the proxy is "
                               "larger): bounds fusion's cost per round on large data sets", rule=at_least(1))
    derive_masks: bool = option(True, "the server rebuilds a client's unstructured prune masks from the fragment "
                                "it sent; the client sends a 48-bit digest instead of the bitmaps")

    @classmethod
    def extra_settings(cls) -> tuple[Setting, ...]:
        return merge_settings((settings_of(p.config_cls) for p in POLICIES.values()), "fragment policies")

    def policy(self, run_seed: int) -> FragmentPolicy:
        """The fragment policy with its options (the random policy's seed is derived from the run's)."""
        cls = POLICIES[self.fragment_policy]
        options = {s.name: self.extras[s.key] for s in settings_of(cls.config_cls) if s.key in self.extras}
        if "seed" in cls.config_cls.__dataclass_fields__:
            options["seed"] = run_seed
        return make_policy(self.fragment_policy, **options)

    def fusion(self) -> FusionConfig | None:
        """Server-side fusion into the outer coordinates (None when ``fusion-steps`` is 0)."""
        if self.fusion_steps == 0:
            return None
        return FusionConfig(self.fusion_steps, temperature=self.fusion_temperature, lr=self.fusion_lr,
                            batch=self.fusion_batch, teacher=self.fusion_teacher,
                            last_rounds=self.fusion_last_rounds)

    def nested(self) -> NestedConfig | None:
        """Self-distillation across widths on the clients (None when ``nested-distill`` is off)."""
        if not self.nested_distill:
            return None
        return NestedConfig((), temperature=self.nested_temperature, weight=self.nested_weight)
