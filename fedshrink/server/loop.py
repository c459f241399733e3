"""The server's round loop, for any Grid (Flower's simulation engine, a SuperLink, or the in-process one).

:func:`serve` builds the global model and the strategy from the settings,
then plays the rounds: the strategy configures per-node instructions, the
grid delivers them, the strategy checks and aggregates the replies, the
server evaluates the global model (and every width in use) on its test set,
and the recorder writes the round. At the end it distils a student if asked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from fedshrink.config import RunConfig
from fedshrink.data import Splits, make_splits
from fedshrink.models import ModelSpec, build_model, count_parameters
from fedshrink.privacy.controller import PrivacyBudgetSpent
from fedshrink.privacy.server import privacy_record, privacy_summary, privacy_text
from fedshrink.report.recorder import RunRecorder
from fedshrink.report.targets import choose_targets, reach_all, targets_json
from fedshrink.robust.checkpoint import resumed_config
from fedshrink.server.distill import distill_student, student_summary
from fedshrink.server.evaluation import evaluate_widths, for_evaluation
from fedshrink.server.factory import build_strategy, explain_budgets
from fedshrink.strategy.rounds import RoundOutcome, ShrinkStrategy
from fedshrink.training import evaluate


@dataclass
class Run:
    """What the loop carries from round to round."""

    cfg: RunConfig
    spec: ModelSpec
    splits: Splits
    model: torch.nn.Module
    strategy: ShrinkStrategy
    recorder: RunRecorder
    grid: Grid


def round_record(rnd: int, outcome: RoundOutcome, accuracy: float, loss: float, seconds: float,
                 widths: dict[str, float], train: dict[str, Any]) -> dict[str, Any]:
    """The round's line in ``metrics.jsonl`` (the recorder adds bytes, energy and costs)."""
    return {
        "round": rnd, "accuracy": accuracy, "loss": loss, "seconds": seconds,
        "clients-sent": outcome.sent, "clients-good": len(outcome.accepted), "clients-dropped": len(outcome.dropped),
        "skipped": outcome.skipped, **({"skip-reason": outcome.skip_reason} if outcome.skip_reason else {}),
        **({"accuracy-width": widths} if widths else {}),
        **{f"{name}-seconds": s for name, s in outcome.refine_seconds.items()},
        "bytes-up-received": outcome.bytes_up,  # every reply, dropped ones included
        "dropped": [{"node-id": d.node_id, "partition-id": d.partition_id, "reason": d.reason}
                    for d in outcome.dropped],
        **({"clients-unreached": len(outcome.unreached),
            "unreached": [{"node-id": d.node_id, "partition-id": d.partition_id, "reason": d.reason}
                          for d in outcome.unreached]} if outcome.unreached else {}),
        **({"examples-capped": outcome.capped} if outcome.capped else {}),
        "train": train,
        **({"stages": outcome.notes} if outcome.notes else {}),
        **outcome.device_round,  # modelled device figures: device-time-s, device-energy-j, ...
    }


def unrefined_accuracy(run: Run, outcome: RoundOutcome) -> float | None:
    """Test accuracy of the round's aggregate before the server's refiners (fusion) changed it, else None.

    The outcome lets go of that model afterwards (the strategy keeps its last outcomes)."""
    state, outcome.unrefined = outcome.unrefined, None
    if state is None:
        return None
    model = build_model(run.spec)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    return evaluate(for_evaluation(model, run.splits), run.splits.test).accuracy


def play_round(run: Run, rnd: int, arrays: ArrayRecord) -> ArrayRecord:
    """One round: instructions, replies, aggregation, evaluation, record; returns the new global model."""
    cfg, strategy = run.cfg, run.strategy
    t0 = time.perf_counter()
    messages = list(strategy.configure_train(rnd, arrays, ConfigRecord(), run.grid))
    replies = run.grid.send_and_receive(messages, timeout=cfg.federation.round_timeout)
    new_arrays, train = strategy.aggregate_train(rnd, replies)
    if new_arrays is not None:
        arrays = new_arrays
    run.model.load_state_dict(arrays.to_torch_state_dict())
    ev = evaluate(for_evaluation(run.model, run.splits), run.splits.test)
    widths = evaluate_widths(run.model, strategy.planner.graph, run.spec, strategy.widths_in_use(), run.splits,
                             scaled=cfg.fragments.fragment_scaling)
    if cfg.distill.distill and cfg.distill.distill_every and rnd % cfg.distill.distill_every == 0 \
            and rnd < cfg.federation.num_server_rounds:
        t_d = time.perf_counter()
        distill_student(cfg, run.spec, run.model, strategy, run.splits, run.recorder.path / f"student-round-{rnd}",
                        run.recorder.say)
        run.recorder.add_distillation(rnd, time.perf_counter() - t_d)
    outcome = strategy.outcomes[-1]
    before = unrefined_accuracy(run, outcome)
    record = {**round_record(rnd, outcome, ev.accuracy, ev.loss, time.perf_counter() - t0, widths, dict(train or {})),
              **({"accuracy-before-fusion": before} if before is not None else {}),
              **privacy_record(strategy)}
    record = run.recorder.round(record, outcome, strategy, arrays)
    run.recorder.say(f"round {rnd:>3}/{cfg.federation.num_server_rounds}  accuracy {ev.accuracy:.4f}  "
                     + (f"(before fusion {before:.4f})  " if before is not None else "")
                     + f"loss {ev.loss:.4f}  {record['seconds']:6.2f}s  clients {len(outcome.accepted)}/{outcome.sent}"
                     + privacy_text(strategy) + ("  (skipped)" if outcome.skipped else ""))
    return arrays


def summarise(run: Run, seconds: float) -> dict[str, Any]:
    """``summary.json``'s figures over the rounds played (the recorder adds resources)."""
    history, cfg = run.recorder.history, run.cfg
    final = history[-1]
    return {
        "status": "completed", "accuracy": final["accuracy"], "loss": final["loss"],
        **({"accuracy-before-fusion": final["accuracy-before-fusion"]} if "accuracy-before-fusion" in final else {}),
        "best-accuracy": max(r["accuracy"] for r in history), "rounds": cfg.federation.num_server_rounds,
        "rounds-skipped": sum(r["skipped"] for r in history),
        "replies-dropped": sum(r["clients-dropped"] for r in history), "server-step": cfg.server_step,
        "defence": cfg.robust.defence,
        "attack": cfg.robust.attack if cfg.robust.attack_fraction > 0 else "none",
        "dataset": cfg.data.dataset, "classes": run.splits.num_classes, "input-shape": list(run.splits.input_shape),
        "clients": len(list(run.grid.get_node_ids())), "model": cfg.model.model,
        "model-parameters": count_parameters(run.model), "seconds": seconds,
        "bytes-up": sum(r["bytes-up"] for r in history), "bytes-down": sum(r["bytes-down"] for r in history),
        "bytes-up-uncompressed": sum(r["bytes-up-uncompressed"] for r in history),
        "energy-j": sum(r["energy-j"] for r in history),
        "energy-estimated": any(r["energy-estimated"] for r in history),
        # bytes and rounds to this run's final accuracy - 1 point (`fedshrink report --targets/--baseline` redoes it)
        "targets": targets_json(reach_all(history, choose_targets((), own_final=final["accuracy"]))),
        **privacy_summary(run.strategy),
    }


def start(grid: Grid, cfg: RunConfig, base_dir: Path | None) -> tuple[Run, ArrayRecord]:
    """The run's pieces and its starting model (fresh, or from the checkpoint it resumes)."""
    splits = make_splits(cfg.split_spec())
    spec = ModelSpec(cfg.model.model, splits.input_shape, splits.num_classes, cfg.model.model_width,
                     cfg.model.model_norm)
    torch.manual_seed(cfg.seed)
    model = build_model(spec)
    strategy = build_strategy(cfg, spec, splits)
    typical = splits.typical_client_samples(len(list(grid.get_node_ids())))
    budgets = explain_budgets(cfg, spec, typical) if cfg.devices.budget_mix else []  # nothing fits: fails here
    recorder = RunRecorder.open(cfg, grid, base_dir)
    for line in budgets:
        recorder.say(f"planner: {line}")
    run = Run(cfg, spec, splits, model, strategy, recorder, grid)
    recorder.say(f"fedshrink: {cfg.data.dataset} ({splits.describe()}, {len(splits.test)} test, "
                 f"{len(splits.proxy)} proxy), {cfg.model.model} x{cfg.model.model_width} "
                 f"({count_parameters(model):,} parameters), {cfg.federation.num_server_rounds} rounds "
                 f"-> {recorder.path}")
    arrays = ArrayRecord(model.state_dict())
    if cfg.robust.resume:
        arrays = recorder.resume(strategy)
        recorder.say(f"resuming {recorder.path} after round {len(recorder.history)}")
    return run, arrays


def serve(grid: Grid, cfg: RunConfig, *, base_dir: Path | None = None) -> dict[str, Any]:
    """Run the rounds the settings ask for on ``grid``; return the summary written to disk."""
    t_start = time.perf_counter()
    run, arrays = start(grid, resumed_config(cfg), base_dir)
    cfg, recorder = run.cfg, run.recorder
    recorder.console.start(cfg.federation.num_server_rounds, title=f"{cfg.data.dataset} / {cfg.model.model}")
    with recorder.failing():
        stopped = ""
        for rnd in range(len(recorder.history) + 1, cfg.federation.num_server_rounds + 1):
            try:
                arrays = play_round(run, rnd, arrays)
            except PrivacyBudgetSpent as exc:  # dp-at-target = stop: before a round that would pass the budget
                if not recorder.history:
                    raise
                stopped = str(exc)
                recorder.say(f"stopped: {stopped}")
                break
        summary = {**summarise(run, time.perf_counter() - t_start), **({"stopped": stopped} if stopped else {})}
        if cfg.distill.distill:
            t_d = time.perf_counter()
            student = distill_student(cfg, run.spec, run.model, run.strategy, run.splits, recorder.path,
                                      recorder.say)
            summary["distillation-seconds"] = time.perf_counter() - t_d
            recorder.add_distillation(cfg.federation.num_server_rounds, summary["distillation-seconds"])
            summary["student"] = student_summary(student)
            summary["seconds"] = time.perf_counter() - t_start
    return recorder.finish(summary, run.model)
