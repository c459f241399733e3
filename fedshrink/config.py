"""The typed, validated run configuration, composed of the packages' own settings.

Every run setting lives in pyproject's ``[tool.flwr.app.config]`` (Flower's
convention, overridable with ``flwr run . --run-config "key=value"``), under a
flat kebab-case key. Each package declares its settings in a
:class:`~fedshrink.settings.Section` next to its code; :class:`RunConfig`
holds one of each and hands every key to the section that declares it. Both
apps parse ``context.run_config`` once, at start. An unknown key or a bad
value raises :class:`~fedshrink.errors.ConfigError` whose one-line message
names the setting and what is allowed.

pyproject's table and ``docs/settings.md`` are generated from the sections
(:func:`render_toml`, :func:`render_markdown`; ``scripts/gen_settings.py``).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedshrink.compression.chain import ChainConfig
from fedshrink.compression.settings import ChainSettings
from fedshrink.data import PartitionScheme, SplitSpec
from fedshrink.data.settings import DataSettings
from fedshrink.devices.settings import DeviceSettings
from fedshrink.distill import DistillConfig
from fedshrink.distill.settings import DistillSettings
from fedshrink.errors import ConfigError
from fedshrink.fragments.settings import FragmentSettings
from fedshrink.models.settings import ModelSettings
from fedshrink.privacy.settings import PrivacySettings
from fedshrink.report.settings import OutputSettings
from fedshrink.report.tracking import TrackingSettings
from fedshrink.resources.settings import ResourceSettings
from fedshrink.robust.settings import RobustSettings
from fedshrink.settings import Section, Setting, Value
from fedshrink.strategy.settings import FederationSettings
from fedshrink.training import TrainSettings


@dataclass(frozen=True)
class RunConfig:
    """All settings of one run, one section per package; defaults equal pyproject's table."""

    federation: FederationSettings = field(default_factory=FederationSettings)
    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    training: TrainSettings = field(default_factory=TrainSettings)
    chains: ChainSettings = field(default_factory=ChainSettings)
    fragments: FragmentSettings = field(default_factory=FragmentSettings)
    devices: DeviceSettings = field(default_factory=DeviceSettings)
    distill: DistillSettings = field(default_factory=DistillSettings)
    robust: RobustSettings = field(default_factory=RobustSettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)
    resources: ResourceSettings = field(default_factory=ResourceSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)

    def __post_init__(self) -> None:
        if self.model.model_norm == "batch" and self.data.proxy_fraction == 0:
            raise ConfigError("model-norm", self.model.model_norm,
                              "'layer' or 'none' when proxy-fraction is 0 (evaluation freezes static batch "
                              "statistics on the server's proxy inputs)")
        if self.fragments.profile_mix and self.devices.budget_mix:
            raise ConfigError("budget-mix", self.devices.budget_mix,
                              "'' when a profile-mix is set (a client states a profile or a budget, not both: "
                              "add profile-mix='' to give budgets)")
        if self.fragments_enabled and self.fragments.fusion_steps and self.data.proxy_fraction == 0:
            raise ConfigError("fusion-steps", self.fragments.fusion_steps,
                              "0 when proxy-fraction is 0 (fusion distils on the server's proxy inputs)")
        if self.fragments_enabled and self.distill.distill and self.distill.distill_teacher == "ensemble":
            raise ConfigError("distill-teacher", self.distill.distill_teacher,
                              "'global' when a profile-mix or budget-mix makes clients train fragments")
        if self.chains.downlink_delta and self.fragments_enabled and self.fragments.fragment_policy != "static":
            raise ConfigError("downlink-delta", self.chains.downlink_delta,
                              "'' when fragment-policy is not 'static' (a client's reference must keep its shape)")
        if self.devices.absent_updates == "reuse" and self.absent_updates_blocker:
            raise ConfigError("absent-updates", "reuse", f"'drop' or 'auto' when {self.absent_updates_blocker} is "
                              "set (it assumes each update counts once)")
        if self.chains.downlink_start == "seed" and not self.chains.downlink_delta:
            raise ConfigError("downlink-start", "seed", "'sent' when downlink-delta is '' (a client keeps the model "
                              "it builds only as its downlink reference)")
        uplinks = (("uplink-chain", self.chains.uplink_chain), ("profile-uplink", self.fragments.profile_uplink))
        for key, chain in uplinks:
            if self.privacy.enabled and chain and ChainConfig.parse(chain).flat:
                raise ConfigError(key, chain, "a chain without 'flat|' when dp-mode is set (the privacy step clips "
                                  "tensor by tensor)")
        self.privacy.check_with(defence=self.robust.defence, norm_guard=self.robust.norm_guard,
                                pruned_as_zero=self.fragments_enabled and self.fragments.pruned_as_zero)

    @property
    def absent_updates_blocker(self) -> str:
        """The setting that rules out reusing absent clients' updates ('' when none does)."""
        if self.privacy.enabled:
            return "dp-mode"
        if self.robust.defence != "none":
            return "defence"
        return "norm-guard" if self.robust.norm_guard > 0 else ""

    @property
    def server_step(self) -> float:
        """The server's step size, server-lr resolved: auto is 2 with fragments and 1 (FedAvg) without.

        Chosen on digits, the demo's fleet, 20 rounds, seeds 42, 1, 2 (simulations/results/server_step.md): the
        mixed fleet's sparse, partly stale fragment updates move the model too little at 1 (96.11% on average)
        and best at 2 (97.69%; 1.5: 96.57%, 3: 96.76%); full-width fp32 FedAvg at 2 fell 1.67 points on one seed
        of three, so without fragments it stays 1.
        """
        lr = self.federation.server_lr
        return lr if lr > 0 else 2.0 if self.fragments_enabled else 1.0

    @property
    def reuses_absent_updates(self) -> bool:
        """Whether the server counts an absent client's latest update again (absent-updates resolved)."""
        return self.devices.absent_updates == "reuse" or (
            self.devices.absent_updates == "auto" and not self.absent_updates_blocker)

    # -- conversions -----------------------------------------------------------
    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> RunConfig:
        """Build from Flower-style kebab-case keys; unknown keys are refused with a suggestion."""
        owners = setting_owners()
        per_section: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        for key, value in mapping.items():
            if key not in owners:
                close = difflib.get_close_matches(key, list(owners), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ConfigError(key, value, f"a known setting ({hint}see docs/settings.md)")
            per_section[owners[key]][key] = value
        sections: dict[str, Any] = {name: SECTIONS[name].from_values(values) for name, values in per_section.items()}
        return cls(**sections)

    def to_mapping(self) -> dict[str, Value]:
        """Flower-style kebab-case keys, JSON-serialisable values."""
        out: dict[str, Value] = {}
        for name in SECTIONS:
            out.update(getattr(self, name).to_values())
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_mapping(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_mapping(json.loads(text))

    def with_values(self, values: Mapping[str, Any]) -> RunConfig:
        """A copy with some settings changed (kebab-case keys), validated again."""
        return RunConfig.from_mapping({**self.to_mapping(), **values})

    # -- views that need more than one section --------------------------------------
    @property
    def seed(self) -> int:
        return self.federation.seed

    @property
    def fragments_enabled(self) -> bool:
        """Whether clients train fragments: a profile mix, or budgets the planner turns into profiles."""
        return bool(self.fragments.profile_mix or self.devices.budget_mix)

    def split_spec(self) -> SplitSpec:
        return self.data.split_spec(self.federation.seed)

    def partition_scheme(self) -> PartitionScheme:
        return self.data.partition_scheme()

    def distill_config(self) -> DistillConfig:
        return self.distill.config(seed=self.federation.seed)


SECTIONS: dict[str, type[Section]] = {f.name: f.default_factory for f in dataclasses.fields(RunConfig)}  # type: ignore[misc]  # every field has a Section factory


def setting_owners() -> dict[str, str]:
    """Run-config key -> the section that declares it; a key declared by two sections is a bug."""
    owners: dict[str, str] = {}
    for name, section in SECTIONS.items():
        for s in section.settings():
            if s.key in owners:
                raise TypeError(f"setting {s.key!r} is declared by sections {owners[s.key]!r} and {name!r}")
            owners[s.key] = name
    return owners


def all_settings() -> list[tuple[type[Section], Setting]]:
    """Every setting with its section, in declaration order."""
    return [(section, s) for section in SECTIONS.values() for s in section.settings()]


def to_key(field_name: str) -> str:
    return field_name.replace("_", "-")


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


# -- generated documents -----------------------------------------------------------------
def _toml_value(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value)


def render_toml() -> str:
    """The body of pyproject's ``[tool.flwr.app.config]``: every setting and its default, by section."""
    lines: list[str] = []
    for section in SECTIONS.values():
        lines.append(f"# {section.title}")
        lines.extend(f"{s.key} = {_toml_value(s.default)}" for s in section.settings())
    return "\n".join(lines) + "\n"


def render_markdown() -> str:
    """``docs/settings.md``: one table per section (setting, default, allowed values, meaning)."""
    out = ["# Settings", "",
           "Generated from the packages' own declarations by `python scripts/gen_settings.py`; a test fails when",
           "this page or pyproject's `[tool.flwr.app.config]` differs from them. Set any of them with",
           "`--run-config \"key=value ...\"` (`fedshrink run`, `flwr run`). A bad value fails at start with one line",
           "naming the setting and what it allows.", ""]
    for section in SECTIONS.values():
        out += [f"## {section.title}", "", "| setting | default | allowed | meaning |", "|---|---|---|---|"]
        for s in section.settings():
            allowed = s.allowed().replace("|", "\\|")
            meaning = s.help.replace("|", "\\|")
            default = _toml_value(s.default).replace("|", "\\|")
            out.append(f"| `{s.key}` | `{default}` | {allowed} | {meaning} |")
        out.append("")
    return "\n".join(out)
