"""Recording a run as it goes: the round ledger, client costs, checkpoints and the console, in one object.

The round loop (:func:`fedshrink.server.loop.serve`) hands each finished
round to :meth:`RunRecorder.round`, which appends it to ``metrics.jsonl``,
adds the clients' resource records to the ledger, writes the checkpoint and
prints the round; :meth:`RunRecorder.finish` writes ``clients.csv``, the
global model and ``summary.json``, and deletes the clients' on-disk state
(only a resume reads it, and a finished run is not resumed: a 1,000-client
run's residuals take about half a GB); :meth:`RunRecorder.failing` records a
failed run and keeps that state for the resume. Reports and plots are built
afterwards from the directory (:func:`fedshrink.report.build_report`).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from flwr.app import ArrayRecord
from flwr.serverapp import Grid

from fedshrink.report.console import RunConsole
from fedshrink.report.determinism import determinism_note
from fedshrink.report.rundir import RunDirectory
from fedshrink.report.tracking import RunTrackers, require_trackers
from fedshrink.resources import ResourceLedger
from fedshrink.resources.ledger import CLIENTS_CSV, ClientRound
from fedshrink.robust.checkpoint import (
    CheckpointError,
    ClientStateGrid,
    ServerCheckpoint,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from fedshrink.runner.state import STATE_DIR, STORE_FILE, close_stores, open_store, store_dir
from fedshrink.strategy.rounds import RoundOutcome, ShrinkStrategy, numpy_to_record, record_to_numpy

if TYPE_CHECKING:
    from fedshrink.config import RunConfig


def finite(value: Any) -> Any:
    """``value`` with every non-finite float left out (dict entries dropped, list items None): valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items() if not (isinstance(v, float) and not math.isfinite(v))}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


class RunRecorder:
    """Everything a run writes while it runs (see the module doc)."""

    def __init__(self, cfg: RunConfig, rundir: RunDirectory, grid: Grid) -> None:
        self.cfg = cfg
        self.rundir = rundir
        self.grid = grid
        self.ledger = ResourceLedger(spool=rundir.path / CLIENTS_CSV)  # each round's rows go to disk
        self.console = RunConsole(quiet=cfg.output.quiet)
        self.history: list[dict[str, Any]] = []
        self.trackers = RunTrackers.start(cfg.tracking, rundir.path, cfg.to_mapping())

    @classmethod
    def open(cls, cfg: RunConfig, grid: Grid, base_dir: Path | None = None) -> RunRecorder:
        """A new run directory, or the one ``resume`` names."""
        require_trackers(cfg.tracking)  # before anything is written
        if cfg.robust.resume:
            return cls(cfg, RunDirectory(Path(cfg.robust.resume).expanduser()), grid)
        recorder = cls(cfg, RunDirectory.create(cfg, base=base_dir), grid)
        if cfg.resources.client_state == "disk" and not cfg.output.run_name and not cfg.resources.client_state_dir:
            # a bare `flwr run` without a run-name: clients keep their state under the Flower run id; link it
            # from the run directory, where a resume looks for it
            target = store_dir(cfg.to_mapping(), {}, grid.run.run_id)
            (recorder.path / STATE_DIR).symlink_to(target, target_is_directory=True)
        return recorder

    @property
    def path(self) -> Path:
        return self.rundir.path

    def say(self, text: str) -> None:
        self.console.say(text)

    # -- rounds ------------------------------------------------------------------------------
    def round(self, record: dict[str, Any], outcome: RoundOutcome, strategy: ShrinkStrategy,
              arrays: ArrayRecord) -> dict[str, Any]:
        """Record one finished round; returns the record as written."""
        rnd = int(record["round"])
        for reply in outcome.accepted:
            if reply.resources is not None:
                profile = strategy.profile_of(reply.node_id)
                self.ledger.add(rnd, reply.partition_id, reply.resources, node_id=reply.node_id,
                                profile=profile.name if profile is not None else "default",
                                device=outcome.device_clients.get(reply.node_id))
        self.ledger.add_server(rnd, aggregation_seconds=outcome.aggregate_seconds, bytes_down=outcome.bytes_down)
        record = finite({**record, **self.ledger.round_record(rnd)})
        self.rundir.append_round(record)
        self.history.append(record)
        rows = self.ledger.in_round(rnd)
        self.ledger.close_round()  # before the checkpoint, which counts the rows on disk
        if self.cfg.robust.checkpoint:
            self.checkpoint(rnd, arrays, strategy)
        self.console.round(record)
        self.trackers.round(record, [r.to_row() for r in rows])
        return record

    def add_distillation(self, rnd: int, seconds: float) -> None:
        self.ledger.add_server(rnd, distillation_seconds=seconds)

    # -- checkpoints ----------------------------------------------------------------------------
    def checkpoint(self, rnd: int, arrays: ArrayRecord, strategy: ShrinkStrategy) -> None:
        """The server's state after round ``rnd`` (see :mod:`fedshrink.robust.checkpoint`), written atomically."""
        save_checkpoint(self.path, ServerCheckpoint(
            round=rnd, arrays=record_to_numpy(arrays), strategy=strategy.checkpoint_state(), rng=capture_rng(),
            ledger={"clients-csv-rows": self.ledger.spooled,
                    "server": {str(k): [c.aggregation_seconds, c.distillation_seconds, c.bytes_down]
                               for k, c in self.ledger.server.items()}},
            client_states=self.grid.export_client_states() if isinstance(self.grid, ClientStateGrid) else None,
            strategy_arrays=strategy.checkpoint_arrays(),
        ))

    def resume(self, strategy: ShrinkStrategy) -> ArrayRecord:
        """Restore the server (and in-process clients) from the run's checkpoint; return the global model."""
        ckpt = load_checkpoint(self.path)
        try:
            strategy.restore_state(ckpt.strategy)
            strategy.restore_arrays(ckpt.strategy, ckpt.strategy_arrays)
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"strategy state in {self.path}: {exc}") from exc
        restore_rng(ckpt.rng)
        if "clients-csv-rows" in ckpt.ledger:
            self.ledger.resume_spool(int(ckpt.ledger["clients-csv-rows"]))
        else:  # a checkpoint that carries the rows themselves
            for row in ckpt.ledger.get("rows", []):
                self.ledger.add_row(ClientRound.from_row(row))
        for rnd, (agg, dist, down) in ckpt.ledger.get("server", {}).items():
            self.ledger.add_server(int(rnd), aggregation_seconds=agg, distillation_seconds=dist, bytes_down=down)
        if isinstance(self.grid, ClientStateGrid):
            if ckpt.client_states is None:
                raise CheckpointError(f"{self.path}: the checkpoint holds no simulated clients' states")
            self.grid.import_client_states(ckpt.client_states)
        self._rewind_client_store(ckpt.round)
        metrics = self.path / self.rundir.METRICS
        history = [r for r in self.rundir.read_rounds() if r["round"] <= ckpt.round] if metrics.exists() else []
        if [r["round"] for r in history] != list(range(1, ckpt.round + 1)):
            raise CheckpointError(f"{self.path}: metrics.jsonl does not hold rounds 1..{ckpt.round}")
        self.rundir.rewrite_rounds(history)  # drop rounds recorded after the checkpoint
        self.history = history
        return numpy_to_record(ckpt.arrays)

    def _rewind_client_store(self, rnd: int) -> None:
        """Drop client states written after round ``rnd`` from the run's on-disk store, where this process can
        reach it (simulation); clients elsewhere read only versions from before the round they play anyway."""
        if self.cfg.resources.client_state != "disk":
            return
        path = store_dir(self.cfg.to_mapping(), {}, self.grid.run.run_id) / STORE_FILE
        if path.is_file():
            open_store(path, self.cfg.resources.client_state_compress).discard_after(rnd)

    # -- the end ------------------------------------------------------------------------------------
    @contextmanager
    def failing(self) -> Iterator[None]:
        """Record a failed run (and re-raise) if the block raises."""
        try:
            yield
        except BaseException as exc:
            self.console.finish({})
            self.rundir.write_summary({"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                                       "rounds-completed": len(self.history)})
            self.trackers.finish({}, failed=True)
            raise

    def finish(self, summary: dict[str, Any], model: torch.nn.Module) -> dict[str, Any]:
        """``clients.csv``, the global model and ``summary.json``; returns the summary as written."""
        store = self._client_store()
        if store is not None and store.is_dir():  # its size on disk (host), before it is deleted below
            summary = {**summary, "client-state-bytes": sum(f.stat().st_size for f in store.rglob("*") if f.is_file())}
        summary = finite({**summary, **determinism_note(self.cfg), "resources": self.ledger.summary(),
                          "run-dir": str(self.path)})
        self.ledger.write_csv(self.path)
        torch.save(model.state_dict(), self.path / "global_model.pt")
        self.rundir.write_summary(summary)
        self.console.finish(summary)
        self.trackers.finish(summary, report=self.cfg.output.report)
        self._drop_client_store(store)
        return summary

    def _client_store(self) -> Path | None:
        """The directory of the run's on-disk client state as this process finds it, or None (state in memory)."""
        if self.cfg.resources.client_state != "disk":
            return None
        return store_dir(self.cfg.to_mapping(), {}, self.grid.run.run_id)

    def _drop_client_store(self, where: Path | None) -> None:
        """Delete the run's on-disk client state ``where`` this process finds it (simulation, or a SuperNode on
        this machine); stores on other machines are their SuperNodes' to manage."""
        if where is None:
            return
        close_stores(where)
        shutil.rmtree(where, ignore_errors=True)
        link = self.path / STATE_DIR
        if link.is_symlink():
            link.unlink()
