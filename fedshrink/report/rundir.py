"""The run directory: ``<output-dir>/<run-name>/``.

Holds ``config.json`` (the resolved settings), ``metrics.jsonl`` (one JSON
object per round, appended as rounds finish) and ``summary.json`` (written
once at the end, atomically; the final global test accuracy is under the
plain key ``accuracy``). Created only after the settings validated, so a bad
setting never leaves a half-written run behind.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedshrink.errors import ConfigError

if TYPE_CHECKING:  # fedshrink.config composes this package's settings, so it is imported lazily here
    from fedshrink.config import RunConfig


def default_run_name(cfg: RunConfig) -> str:
    dataset = cfg.data.dataset.replace("/", "--")  # a hub id owner/name
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{dataset}-{cfg.model.model}"


def unique_run_name(cfg: RunConfig) -> str:
    """``cfg.output.run_name``, or a timestamped name with a random suffix when it is empty."""
    return cfg.output.run_name or f"{default_run_name(cfg)}-{uuid.uuid4().hex[:6]}"


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")
    os.replace(tmp, path)


class RunDirectory:
    """Writer for one run's directory."""

    CONFIG = "config.json"
    METRICS = "metrics.jsonl"
    SUMMARY = "summary.json"

    def __init__(self, path: Path) -> None:
        self.path = path

    @staticmethod
    def output_root(cfg: RunConfig, base: Path | None = None) -> Path:
        """``output-dir``, relative paths taken under ``base`` (default: the cwd)."""
        out = Path(cfg.output.output_dir).expanduser()
        return out if out.is_absolute() else (base or Path.cwd()) / out

    @classmethod
    def resolve(cls, cfg: RunConfig, base: Path | None = None) -> Path:
        """Where a run with a fixed ``run-name`` lives."""
        assert cfg.output.run_name, "resolve needs a run-name"
        return cls.output_root(cfg, base) / cfg.output.run_name

    @classmethod
    def create(cls, cfg: RunConfig, *, base: Path | None = None) -> RunDirectory:
        """Make ``<output-dir>/<run-name>`` (a timestamped name when run-name is empty)."""
        out = cls.output_root(cfg, base)
        name = cfg.output.run_name or default_run_name(cfg)
        path = out / name
        if cfg.output.run_name and path.exists():
            raise ConfigError("run-name", cfg.output.run_name, f"a name not used yet in {out}")
        suffix = 2
        while path.exists():  # two timestamped runs in the same second
            path = out / f"{name}-{suffix}"
            suffix += 1
        path.mkdir(parents=True)
        rundir = cls(path)
        write_json_atomic(path / cls.CONFIG, cfg.to_mapping())
        return rundir

    def append_round(self, record: dict[str, Any]) -> None:
        with open(self.path / self.METRICS, "a") as fh:
            fh.write(json.dumps(record, sort_keys=True, allow_nan=False) + "\n")

    def rewrite_rounds(self, records: list[dict[str, Any]]) -> None:
        """Replace ``metrics.jsonl`` with ``records``, atomically (resume cuts it back to its checkpoint)."""
        path = self.path / self.METRICS
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        os.replace(tmp, path)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.path / self.SUMMARY, summary)

    # -- reading back ---------------------------------------------------------------
    def read_config(self) -> RunConfig:
        from fedshrink.config import RunConfig

        return RunConfig.from_json((self.path / self.CONFIG).read_text())

    def read_rounds(self) -> list[dict[str, Any]]:
        lines = (self.path / self.METRICS).read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def read_summary(self) -> dict[str, Any]:
        return dict(json.loads((self.path / self.SUMMARY).read_text()))
