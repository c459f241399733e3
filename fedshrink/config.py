"""The typed, validated run configuration.

Every run setting lives in pyproject's ``[tool.flwr.app.config]`` (Flower's
convention, overridable with ``flwr run . --run-config "key=value"``). Both apps
parse ``context.run_config`` once, at start, into a frozen :class:`RunConfig`.
An unknown key or a bad value raises :class:`~fedshrink.errors.ConfigError`
whose one-line message names the setting and its allowed values.

Setting names on the Flower side are kebab-case (``num-server-rounds``); the
dataclass fields are the same names in snake_case.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedshrink.data import PARTITIONERS as _PARTITIONERS
from fedshrink.data import SOURCES, PartitionScheme, SplitSpec
from fedshrink.distill import DistillConfig
from fedshrink.errors import ConfigError
from fedshrink.fragments.fusion import INITS, FusionConfig
from fedshrink.fragments.nested import NestedConfig
from fedshrink.models import MODELS as _MODELS
from fedshrink.models import NORMS
from fedshrink.robust.attacks import ATTACK_NAMES, ATTACKS, AttackConfig
from fedshrink.robust.defences import DEFENCES, DefenceConfig
from fedshrink.training import LOSSES, TrainSettings

Check = Callable[[Any], bool]


def _setting(default: Any, check: Check, allowed: str) -> Any:
    """A dataclass field carrying its validator and a description of what is allowed."""
    return field(default=default, metadata={"check": check, "allowed": allowed})


def _choices(*names: str) -> tuple[Check, str]:
    return (lambda v: v in names), "one of " + ", ".join(repr(n) for n in names)


def _positive_int() -> tuple[Check, str]:
    return (lambda v: v >= 1), "an integer >= 1"


def _fraction(lo_open: bool, hi_closed: bool) -> tuple[Check, str]:
    def check(v: float) -> bool:
        lo_ok = v > 0.0 if lo_open else v >= 0.0
        hi_ok = v <= 1.0 if hi_closed else v < 1.0
        return lo_ok and hi_ok

    lo = "(0" if lo_open else "[0"
    hi = "1]" if hi_closed else "1)"
    return check, f"a number in {lo}, {hi}"


DATASETS = tuple(SOURCES)
PARTITIONERS = tuple(_PARTITIONERS)
MODELS = tuple(_MODELS)


_CHAIN_HELP = "a codec chain such as 'raw', 'int8', 'q4|zlib' or 'topk:0.05|int8|zlib'"


def _chain_ok(text: str) -> bool:
    from fedshrink.compression import Chain

    try:
        Chain.parse(text)
    except ConfigError:
        return False
    return True


def _mix_ok(text: str) -> bool:
    from fedshrink.profiles import parse_mix

    if text == "":
        return True
    try:
        parse_mix(text)
    except ConfigError:
        return False
    return True


def _defence_ok(text: str) -> bool:
    from fedshrink.robust.defences import parse_defence

    try:
        parse_defence(text)
    except ConfigError:
        return False
    return True


_DEFENCE_HELP = ("'none' or defences joined by '+' (applied left to right) from "
                 + ", ".join(repr(n) for n in DEFENCES) + "; at most one of "
                 + ", ".join(repr(n) for n, cls in DEFENCES.items() if cls.combines))


@dataclass(frozen=True)
class RunConfig:
    """All settings of one run; defaults equal pyproject's ``[tool.flwr.app.config]``."""

    # --- federation ---------------------------------------------------------
    num_server_rounds: int = _setting(40, *_positive_int())
    fraction_train: float = _setting(1.0, *_fraction(lo_open=True, hi_closed=True))
    min_train_clients: int = _setting(2, *_positive_int())
    round_timeout: float = _setting(600.0, lambda v: v > 0, "a number of seconds > 0")
    seed: int = _setting(42, lambda v: v >= 0, "an integer >= 0")
    # --- data -----------------------------------------------------------------
    dataset: str = _setting("digits", *_choices(*DATASETS))
    data_dir: str = _setting("", lambda v: True, "a path to a dataset saved with save_to_disk, or ''")
    partitioner: str = _setting("dirichlet", *_choices(*PARTITIONERS))
    dirichlet_alpha: float = _setting(0.5, lambda v: v > 0, "a number > 0")
    classes_per_client: int = _setting(2, *_positive_int())
    test_fraction: float = _setting(0.2, *_fraction(lo_open=True, hi_closed=False))
    proxy_fraction: float = _setting(0.1, *_fraction(lo_open=False, hi_closed=False))
    # --- model ----------------------------------------------------------------
    model: str = _setting("cnn", *_choices(*MODELS))
    model_width: float = _setting(1.0, lambda v: 0 < v <= 4, "a number in (0, 4]")
    model_norm: str = _setting("batch", *_choices(*NORMS))
    # --- heterogeneous clients (fedshrink/fragments, fedshrink/profiles) ---------
    profile_mix: str = _setting(
        "", lambda v: _mix_ok(v),
        "'' (every client trains the full model) or a mix of device profiles such as 'iot:0.4,phone:0.4,laptop:0.2'",
    )
    fragment_policy: str = _setting("static", *_choices("static", "rolling", "random"))
    pruned_as_zero: bool = _setting(True, lambda v: True, "true or false")
    fragment_scaling: bool = _setting(False, lambda v: True, "true or false")
    nested_distill: bool = _setting(True, lambda v: True, "true or false")
    nested_temperature: float = _setting(1.0, lambda v: 0 < v <= 100, "a number in (0, 100]")
    nested_weight: float = _setting(1.0, lambda v: 0 <= v <= 100, "a number in [0, 100]")
    fragment_init: str = _setting("nested", *_choices(*INITS))
    fusion_steps: int = _setting(20, lambda v: v >= 0, "an integer >= 0 (0 = no fusion)")
    fusion_temperature: float = _setting(2.0, lambda v: 0 < v <= 100, "a number in (0, 100]")
    fusion_lr: float = _setting(0.001, lambda v: 0 < v <= 1, "a number in (0, 1]")
    derive_masks: bool = _setting(True, lambda v: True, "true or false")
    # --- communication --------------------------------------------------------
    uplink_chain: str = _setting("raw", lambda v: _chain_ok(v), _CHAIN_HELP)
    downlink_chain: str = _setting("raw", lambda v: _chain_ok(v), _CHAIN_HELP)
    # --- local training -------------------------------------------------------
    local_epochs: int = _setting(2, *_positive_int())
    batch_size: int = _setting(16, *_positive_int())
    learning_rate: float = _setting(0.01, lambda v: v > 0, "a number > 0")
    momentum: float = _setting(0.9, lambda v: 0 <= v < 1, "a number in [0, 1)")
    weight_decay: float = _setting(0.0, lambda v: v >= 0, "a number >= 0")
    local_loss: str = _setting("ce", *_choices(*LOSSES))
    # --- distillation into a compact student (fedshrink/distill) -----------------
    distill: bool = _setting(True, lambda v: True, "true or false")
    distill_every: int = _setting(0, lambda v: v >= 0, "an integer >= 0 (0 = only at the end of the run)")
    distill_teacher: str = _setting("global", *_choices("global", "ensemble"))
    distill_temperature: float = _setting(4.0, lambda v: 0 < v <= 100, "a number in (0, 100]")
    distill_alpha: float = _setting(
        0.0, lambda v: 0 <= v <= 1, "a number in [0, 1] (weight of the proxy's labels; 0 = unlabeled proxy)"
    )
    distill_steps: int = _setting(2000, *_positive_int())
    distill_finetune_steps: int = _setting(1000, lambda v: v >= 0, "an integer >= 0")
    student_max_params: int = _setting(7390, lambda v: v >= 0, "an integer >= 0 (0 = no limit)")
    student_max_macs: int = _setting(0, lambda v: v >= 0, "an integer >= 0 (0 = no limit)")
    student_max_bytes: int = _setting(7390, lambda v: v >= 0, "an integer >= 0 (0 = no limit)")
    student_max_latency_ms: float = _setting(0.0, lambda v: v >= 0, "a number >= 0 (0 = no limit)")
    distill_threads: int = _setting(1, *_positive_int())
    # --- resources --------------------------------------------------------------
    client_threads: int = _setting(1, *_positive_int())  # torch intra-op threads of a ClientApp
    watts_per_core: float = _setting(
        12.0, lambda v: 0 < v <= 1000, "a number of watts per busy core in (0, 1000] (energy estimate)"
    )
    # --- robustness: defences, attack simulation, faults, checkpoints (fedshrink/robust) ---
    defence: str = _setting("none", lambda v: _defence_ok(v), _DEFENCE_HELP)
    trim_fraction: float = _setting(0.2, lambda v: 0 <= v < 0.5, "a number in [0, 0.5) (trimmed-mean, each side)")
    byzantine_fraction: float = _setting(
        0.2, lambda v: 0 <= v < 0.5, "a number in [0, 0.5) (share of clients multi-krum and bulyan assume bad)")
    clip_norm: float = _setting(0.0, lambda v: v >= 0, "a number >= 0 (clip; 0 = adaptive, the round's median)")
    fltrust_root_size: int = _setting(100, *_positive_int())
    attack: str = _setting("none", *_choices(*ATTACK_NAMES))
    attack_fraction: float = _setting(0.0, *_fraction(lo_open=False, hi_closed=False))
    attack_scale: float = _setting(10.0, lambda v: v > 0, "a number > 0 (sign-flip: update x -scale)")
    attack_noise_std: float = _setting(1.0, lambda v: v > 0, "a number > 0 (gaussian: std of the noise sent)")
    attack_z: float = _setting(0.0, lambda v: v >= 0, "a number >= 0 (alie; 0 = the paper's z_max)")
    attack_samples: int = _setting(3, lambda v: v >= 2, "an integer >= 2 (alie: updates to estimate mean/std)")
    dropout_rate: float = _setting(0.0, *_fraction(lo_open=False, hi_closed=False))
    max_reply_bytes: int = _setting(0, lambda v: v >= 0, "an integer >= 0 (0 = only the decoder's caps)")
    norm_guard: float = _setting(0.0, lambda v: v >= 0, "a number >= 0 (robust z-score; 0 = off)")
    checkpoint: bool = _setting(True, lambda v: True, "true or false")
    resume: str = _setting("", lambda v: True, "'' or the run directory to continue from its checkpoint")
    # --- outputs --------------------------------------------------------------
    output_dir: str = _setting("runs", lambda v: v != "", "a non-empty directory path")
    run_name: str = _setting(
        "",
        lambda v: v == "" or (all(c.isalnum() or c in "-_." for c in v) and not v.startswith(".")),
        "'' (a timestamped name) or letters, digits, '-', '_', '.'",
    )
    quiet: bool = _setting(False, lambda v: True, "true or false")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            key = to_key(f.name)
            expected = _FIELD_TYPES[f.name]
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
                value = float(value)
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ConfigError(key, value, f"{_TYPE_WORDS[expected]}: {f.metadata['allowed']}")
            if not f.metadata["check"](value):
                raise ConfigError(key, value, f.metadata["allowed"])
        if self.model_norm == "batch" and self.proxy_fraction == 0:
            raise ConfigError("model-norm", self.model_norm,
                              "'layer' or 'none' when proxy-fraction is 0 (evaluation freezes static batch "
                              "statistics on the server's proxy inputs)")
        if self.profile_mix and self.fusion_steps and self.proxy_fraction == 0:
            raise ConfigError("fusion-steps", self.fusion_steps,
                              "0 when proxy-fraction is 0 (fusion distils on the server's proxy inputs)")
        if self.profile_mix and self.distill and self.distill_teacher == "ensemble":
            raise ConfigError("distill-teacher", self.distill_teacher,
                              "'global' when a profile-mix makes clients train fragments")

    # -- conversions -----------------------------------------------------------
    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> RunConfig:
        """Build from Flower-style kebab-case keys; unknown keys are refused."""
        known = {to_key(f.name): f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in mapping.items():
            if key not in known:
                raise ConfigError(key, value, "a known setting: " + ", ".join(sorted(known)))
            kwargs[known[key]] = value
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, Any]:
        """Flower-style kebab-case keys, JSON-serialisable values."""
        return {to_key(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_json(self) -> str:
        return json.dumps(self.to_mapping(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_mapping(json.loads(text))

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    # -- views for the layers below ----------------------------------------------
    def split_spec(self) -> SplitSpec:
        return SplitSpec(self.dataset, self.data_dir, self.test_fraction, self.proxy_fraction, self.seed)

    def partition_scheme(self) -> PartitionScheme:
        return PartitionScheme(self.partitioner, self.dirichlet_alpha, self.classes_per_client)

    def distill_config(self) -> DistillConfig:
        return DistillConfig(
            enabled=self.distill,
            every_k_rounds=self.distill_every,
            teacher=self.distill_teacher,
            temperature=self.distill_temperature,
            alpha=self.distill_alpha,
            steps=self.distill_steps,
            finetune_steps=self.distill_finetune_steps,
            max_params=self.student_max_params,
            max_macs=self.student_max_macs,
            max_bytes=self.student_max_bytes,
            max_latency_ms=self.student_max_latency_ms,
            threads=self.distill_threads,
            seed=self.seed,
            # static BatchNorm needs batch statistics, which a batch-of-1 edge runtime lacks
            student_norm="layer" if self.model_norm == "batch" else "",
        )

    def fusion_config(self) -> FusionConfig | None:
        """Server-side fusion into the outer coordinates (None when ``fusion-steps`` is 0)."""
        if self.fusion_steps == 0:
            return None
        return FusionConfig(self.fusion_steps, temperature=self.fusion_temperature, lr=self.fusion_lr)

    def nested_config(self) -> NestedConfig | None:
        """Self-distillation across widths on the clients (None when ``nested-distill`` is off)."""
        if not self.nested_distill:
            return None
        return NestedConfig((), temperature=self.nested_temperature, weight=self.nested_weight)

    def defence_params(self) -> dict[str, dict[str, Any]]:
        """Options of every defence, keyed by its registry name (see :mod:`fedshrink.robust.defences`)."""
        return {
            "trimmed-mean": {"trim": self.trim_fraction},
            "bulyan": {"byzantine_fraction": self.byzantine_fraction},
            "multi-krum": {"byzantine_fraction": self.byzantine_fraction},
            "clip": {"max_norm": self.clip_norm},
            "fltrust": {"root_size": self.fltrust_root_size},
        }

    def defence_configs(self) -> list[DefenceConfig]:
        from fedshrink.robust.defences import parse_defence

        params = self.defence_params()
        return [DEFENCES[n](**params.get(n, {})) for n in parse_defence(self.defence)]

    def attack_config(self) -> AttackConfig | None:
        """The simulated attack (None for ``attack = "none"``)."""
        if self.attack == "none":
            return None
        options: dict[str, dict[str, Any]] = {
            "sign-flip": {"scale": self.attack_scale},
            "gaussian": {"std": self.attack_noise_std},
            "label-flip": {},
            "alie": {"z": self.attack_z, "samples": self.attack_samples},
        }
        return ATTACKS[self.attack](**options[self.attack])

    def train_settings(self) -> TrainSettings:
        return TrainSettings(
            epochs=self.local_epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            loss=self.local_loss,
        )


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "a boolean"}


def to_key(field_name: str) -> str:
    return field_name.replace("_", "-")


_FIELD_TYPES: dict[str, type] = {
    f.name: {"int": int, "float": float, "str": str, "bool": bool}[str(f.type)]
    for f in dataclasses.fields(RunConfig)
}


def parse_override(text: str) -> dict[str, Any]:
    """Parse ``"key=value key2=value2"`` as Flower's ``--run-config`` does (TOML values).

    Bare words that are not TOML literals are taken as strings, so
    ``model=mlp`` and ``model="mlp"`` both work.
    """
    import tomllib

    out: dict[str, Any] = {}
    for item in text.split():
        if "=" not in item:
            raise ConfigError(item, item, "key=value pairs separated by spaces")
        key, raw = item.split("=", 1)
        try:
            out[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = raw
    return out
