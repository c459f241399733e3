"""A sweep file, read and checked: which runs a sweep makes.

A sweep file is TOML (or YAML, same keys)::

    name = "fragments"            # optional; default: the file's name without its suffix
    description = "..."           # optional, copied into the summary
    seeds = [1, 2, 3]             # every configuration runs once per seed (default: [42], the seed default)
    num-clients = 20              # simulated clients of every run
    engine = "inprocess"          # or "flower" (Flower's simulation engine through `flwr run`)
    workers = 0                   # runs at once on this machine; 0 = one per core (1 for engine "flower")
    targets = [0.90, 0.95]        # accuracies: the summary gives uplink bytes to first reach each

    [base]                        # run settings every run shares (any key of docs/settings.md)
    num-server-rounds = 50
    distill = false

    [grid]                        # every combination of these axes
    fragment-policy = ["static", "rolling"]              # a setting and its values, or
    defence = [{name = "guard", norm-guard = 5.0},      # named sets of settings
               {name = "clip", defence = "clip"}]

    [[runs]]                      # named configurations, each crossed with [grid]
    name = "fedavg"
    [[runs]]
    name = "mixed"
    settings = {profile-mix = "phone:0.4,laptop:0.6"}
    seeds = [1]                   # optional: this configuration's own seeds
    grid = {attack = ["sign-flip", "gaussian"]}         # optional: axes of this configuration only

A configuration's settings are ``base``, then its run's ``settings``, then
its grid point (later wins); its label is the run's name followed by
``axis=value`` for each grid axis (``base`` when there are neither). Every
configuration is checked when the file is read: an unknown key or a bad value
fails at once with one line (the run settings' own
:class:`~fedshrink.errors.ConfigError`, or one naming the sweep key). The seed
is the sweep's to set (``seeds``), so ``seed`` may not appear among the settings.
"""

from __future__ import annotations

import functools
import itertools
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedshrink.config import RunConfig
from fedshrink.data import PartitionScheme, SplitSpec
from fedshrink.errors import ConfigError
from fedshrink.report.tracking import require_trackers
from fedshrink.settings import Value
from fedshrink.sweep.hashing import settings_hash

ENGINES = ("inprocess", "flower")
TOP_KEYS = ("name", "description", "seeds", "num-clients", "engine", "workers", "targets", "base", "grid", "runs")
RUN_KEYS = ("name", "settings", "seeds", "grid")
# what a sweep sets unless its base says otherwise: nothing on the console, no checkpoints (a killed run is
# rerun from scratch), no per-run report (the sweep has its own summary)
SWEEP_DEFAULTS: dict[str, Value] = {"quiet": True, "checkpoint": False, "report": False}


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: a configuration at a seed, and the hash that names its directory."""

    config: str  # the configuration's label
    axes: dict[str, str]  # run name and grid axes -> the label of the value taken
    seed: int
    settings: dict[str, Value]  # run settings, the seed included (output-dir and run-name are the sweep's)
    key: str  # settings_hash of the resolved settings

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "axes": self.axes, "seed": self.seed, "settings": self.settings,
                "key": self.key}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PlannedRun:
        return cls(str(d["config"]), dict(d["axes"]), int(d["seed"]), dict(d["settings"]), str(d["key"]))


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep file and the runs it plans (see the module doc)."""

    name: str
    runs: tuple[PlannedRun, ...]
    num_clients: int
    engine: str = "inprocess"
    workers: int = 0
    targets: tuple[float, ...] = ()
    description: str = ""
    source: str = ""  # the sweep file's path as given
    text: str = ""  # the sweep file's text

    @property
    def configs(self) -> list[str]:
        """Configuration labels in the order the file gives them."""
        return list(dict.fromkeys(r.config for r in self.runs))

    def unique_runs(self) -> list[PlannedRun]:
        """One planned run per hash (two labels that resolve to the same settings share a run)."""
        return list({r.key: r for r in reversed(self.runs)}.values())[::-1]

    def worker_count(self) -> int:
        if self.workers:
            return self.workers
        return 1 if self.engine == "flower" else max(1, os.cpu_count() or 1)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, name: str = "sweep", source: str = "",
                     text: str = "") -> SweepSpec:
        """Check ``data`` (a parsed sweep file) and plan its runs."""
        _known(data, TOP_KEYS, "sweep file key")
        name = str(data.get("name", name))
        if not name or name.startswith(".") or not all(c.isalnum() or c in "-_." for c in name):
            raise ConfigError("name", name, "letters, digits, '-', '_', '.' (it names the sweep's directory)")
        seeds = _seeds(data.get("seeds", [RunConfig().seed]), "seeds")
        num_clients = _int(data.get("num-clients", 20), "num-clients", 1)
        engine = data.get("engine", "inprocess")
        if engine not in ENGINES:
            raise ConfigError("engine", engine, "one of " + ", ".join(repr(e) for e in ENGINES))
        targets = data.get("targets", [])
        if not isinstance(targets, list) or not all(_number(t) and 0 < t <= 1 for t in targets):
            raise ConfigError("targets", targets, "a list of accuracies in (0, 1]")
        base = _settings(data.get("base", {}), "base")
        top_grid = _grid(data.get("grid", {}), "grid")
        runs = data.get("runs", [{}])
        if not isinstance(runs, list) or not runs or not all(isinstance(r, Mapping) for r in runs):
            raise ConfigError("runs", runs, "a non-empty list of tables ([[runs]])")
        planned = []
        for i, run in enumerate(runs):
            planned += _plan_run(run, i, base, top_grid, seeds, num_clients)
        seen: set[tuple[str, int]] = set()
        for p in planned:
            if (p.config, p.seed) in seen:
                raise ConfigError("runs", p.config, "configurations with different labels (this one appears twice)")
            seen.add((p.config, p.seed))
        return cls(name=name, runs=tuple(planned), num_clients=num_clients, engine=engine,
                   workers=_int(data.get("workers", 0), "workers", 0), targets=tuple(float(t) for t in targets),
                   description=str(data.get("description", "")), source=source, text=text)


def load_sweep(path: Path | str) -> SweepSpec:
    """Read and check a sweep file (``.toml``, or ``.yaml`` / ``.yml``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("sweep file", str(path), "an existing .toml or .yaml file")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError("sweep file", str(path), "a .toml file (YAML needs pyyaml installed)") from None

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError("sweep file", str(path), f"valid YAML ({' '.join(str(exc).split())})") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("sweep file", str(path), f"valid TOML ({exc})") from None
    if not isinstance(data, Mapping):
        raise ConfigError("sweep file", str(path), "a table of sweep keys at the top level")
    return SweepSpec.from_mapping(data, name=path.stem, source=str(path), text=text)


# -- planning ---------------------------------------------------------------------------------
def _plan_run(run: Mapping[str, Any], index: int, base: dict[str, Value], top_grid: list[tuple[str, list[Any]]],
              seeds: list[int], num_clients: int) -> list[PlannedRun]:
    _known(run, RUN_KEYS, f"runs[{index}] key")
    run_name = str(run.get("name", ""))
    own = _settings(run.get("settings", {}), f"runs[{index}].settings")
    run_seeds = _seeds(run["seeds"], f"runs[{index}].seeds") if "seeds" in run else seeds
    axes = top_grid + _grid(run.get("grid", {}), f"runs[{index}].grid")
    out = []
    for point in itertools.product(*(values for _, values in axes)):
        chosen: dict[str, str] = {"run": run_name} if run_name else {}
        settings: dict[str, Value] = {**base, **own}
        for (axis, _), value in zip(axes, point, strict=True):
            label, values = value
            chosen[axis] = label
            settings.update(values)
        label = " ".join([run_name] * bool(run_name) + [f"{a}={v}" for a, v in chosen.items() if a != "run"])
        for seed in run_seeds:
            resolved = _resolve({**SWEEP_DEFAULTS, **settings, "seed": seed}, num_clients)
            out.append(PlannedRun(label or "base", chosen, seed, {**SWEEP_DEFAULTS, **settings, "seed": seed},
                                  settings_hash(resolved, num_clients)))
    return out


def _resolve(settings: Mapping[str, Value], num_clients: int) -> RunConfig:
    """The run's :class:`RunConfig` (its own one-line error when a setting is bad); trackers and clients checked."""
    cfg = RunConfig.from_mapping(settings)
    require_trackers(cfg.tracking)
    pool = _client_pool(cfg.split_spec(), cfg.partition_scheme())
    if num_clients > pool:
        raise ConfigError("num-clients", num_clients, f"an integer in [1, {pool}] (the clients {cfg.data.dataset!r} "
                          "allows)")
    return cfg


@functools.lru_cache(maxsize=64)
def _client_pool(split: SplitSpec, scheme: PartitionScheme) -> int:
    from fedshrink.data.federated import max_clients

    return max_clients(split, scheme)


# -- checks -----------------------------------------------------------------------------------
def _known(d: Any, allowed: Sequence[str], what: str) -> None:
    if not isinstance(d, Mapping):
        raise ConfigError(what.rsplit(" ", 1)[0], d, "a table")
    for key in d:
        if key not in allowed:
            raise ConfigError(what, key, "one of " + ", ".join(allowed))


def _text(v: Any) -> str:
    """A value as a label shows it: ``true`` (not ``True``), ``''`` for the empty string."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v) if v != "" else "''"


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _int(v: Any, key: str, lo: int) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        raise ConfigError(key, v, f"an integer >= {lo}")
    return v


def _seeds(v: Any, key: str) -> list[int]:
    if not isinstance(v, list) or not v or not all(isinstance(s, int) and not isinstance(s, bool) for s in v) \
            or len(set(v)) != len(v):
        raise ConfigError(key, v, "a non-empty list of distinct integers")
    return list(v)


def _settings(v: Any, key: str) -> dict[str, Value]:
    if not isinstance(v, Mapping):
        raise ConfigError(key, v, "a table of run settings")
    if "seed" in v:
        raise ConfigError(f"{key}.seed", v["seed"], "no seed here: the sweep's `seeds` list sets it")
    for k, value in v.items():
        if not isinstance(value, bool | int | float | str):
            raise ConfigError(f"{key}.{k}", value, "a boolean, number or string")
    return dict(v)


def _grid(v: Any, key: str) -> list[tuple[str, list[tuple[str, dict[str, Value]]]]]:
    """Axes as (name, [(value label, settings)]): a plain value sets the axis's own setting."""
    if not isinstance(v, Mapping):
        raise ConfigError(key, v, "a table of axes")
    axes = []
    for axis, values in v.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{key}.{axis}", values, "a non-empty list of values or of named settings tables")
        items = []
        for item in values:
            if isinstance(item, Mapping):
                named = dict(item)
                label = str(named.pop("name", "")) or ",".join(f"{k}={x}" for k, x in named.items())
                items.append((label, _settings(named, f"{key}.{axis}")))
            else:
                items.append((_text(item), _settings({axis: item}, key)))
        labels = [lab for lab, _ in items]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{key}.{axis}", labels, "values with distinct names")
        axes.append((str(axis), items))
    return axes
