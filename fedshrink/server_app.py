"""The ServerApp: builds the global model, runs the rounds, evaluates, records.

``main`` is what Flower calls; :func:`serve` does the work for any Grid (the
simulation engine's, a SuperLink's, or the in-process one in
:mod:`fedshrink.runner`). Each round: the Strategy configures per-node train
messages, the Grid delivers them, the Strategy validates and aggregates the
replies, the server evaluates the global model on its test set, and the round
is appended to ``metrics.jsonl`` and printed as one console line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedshrink.config import RunConfig
from fedshrink.data import Splits, make_splits
from fedshrink.distill import DistillReport, distill_and_export
from fedshrink.errors import ConfigError, ReplyError
from fedshrink.fragments.fusion import prefix_sub_model
from fedshrink.models import ModelSpec, build_model, count_parameters, freeze_batch_stats
from fedshrink.report import RunConsole, RunDirectory, build_report
from fedshrink.resources import ResourceLedger
from fedshrink.resources.ledger import ClientRound
from fedshrink.robust.checkpoint import (
    ClientStateGrid,
    ServerCheckpoint,
    capture_rng,
    load_checkpoint,
    restore_rng,
    resumed_config,
    save_checkpoint,
)
from fedshrink.robust.defences import DefenceEnv, RootUpdate
from fedshrink.robust.wrappers import build_defence
from fedshrink.strategy import FedShrink, numpy_to_record, record_to_numpy
from fedshrink.strategy.fragments import FragmentStrategy
from fedshrink.training import evaluate, seed_for, train_local

app = ServerApp()
log = logging.getLogger("fedshrink.server")


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = RunConfig.from_mapping(context.run_config)
    serve(grid, cfg)


def train_config_for(cfg: RunConfig, spec: ModelSpec) -> ConfigRecord:
    """The per-round settings every client trains with (taken from the run config)."""
    return ConfigRecord(
        {"model-spec": spec.to_json(), "uplink-chain": cfg.chains.uplink_chain, **cfg.training.to_values()}
    )


def distill_student(
    cfg: RunConfig,
    spec: ModelSpec,
    model: torch.nn.Module,
    strategy: FedShrink,
    splits: Splits,
    out_dir: Path,
    say: Callable[[str], None],
) -> DistillReport:
    """Distil the global model (or the latest round's client models) into a student on the proxy split."""
    dcfg = cfg.distill_config()
    teacher: torch.nn.Module | list[torch.nn.Module] = for_evaluation(model, splits)
    if dcfg.teacher == "ensemble" and strategy.outcomes and strategy.outcomes[-1].good:
        teacher = []
        for state in strategy.client_states(strategy.outcomes[-1]):
            client_model = build_model(spec)
            client_model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
            teacher.append(for_evaluation(client_model, splits))
    out_dir.mkdir(parents=True, exist_ok=True)
    # the proxy's labels are read only when the user gives them weight (distill-alpha > 0)
    proxy_y = splits.proxy.y if dcfg.alpha > 0 else None
    return distill_and_export(teacher, spec, splits.proxy.x, splits.test, dcfg, out_dir, proxy_y=proxy_y, log=say)


def profile_of(strategy: FedShrink, node_id: int) -> str:
    """The device profile a node trained with ("default" when every client trains the full model)."""
    if isinstance(strategy, FragmentStrategy) and node_id in strategy.node_profiles:
        return strategy.node_profiles[node_id].name
    return "default"


def for_evaluation(model: torch.nn.Module, splits: Splits) -> torch.nn.Module:
    """``model`` with static batch statistics frozen on the proxy inputs, so no test batch normalises itself."""
    return freeze_batch_stats(model, torch.from_numpy(splits.proxy.x[:512]))


def evaluate_widths(strategy: FragmentStrategy, model: torch.nn.Module, spec: ModelSpec, splits: Splits
                    ) -> dict[str, float]:
    """Test accuracy of the sub-model of every width in use (its static, prefix fragment)."""
    out: dict[str, float] = {}
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    for width in strategy.widths_in_use():
        if width >= 1.0:
            continue
        sub_model = prefix_sub_model(state, strategy.graph, spec, width, scaled=strategy.input_scaling)
        out[f"{width:g}"] = evaluate(for_evaluation(sub_model, splits), splits.test).accuracy
    return out


def root_trainer(cfg: RunConfig, spec: ModelSpec, splits: Splits) -> RootUpdate:
    """FLTrust's root update: the global model trained on the first ``fltrust-root-size`` labelled proxy samples.

    The server holds these labels (FLTrust's threat model: a small clean root
    set collected by the service); the rest of the proxy split stays unlabeled.
    """
    n = min(cfg.robust.extras["fltrust-root-size"], len(splits.proxy))
    if n < 1:
        raise ConfigError("defence", cfg.robust.defence, "no fltrust when the proxy split is empty (proxy-fraction = 0)")
    root = splits.proxy.subset(np.arange(n))
    settings = cfg.training

    def update(global_state: Mapping[str, np.ndarray], server_round: int) -> dict[str, np.ndarray]:
        model = build_model(spec)
        model.load_state_dict({k: torch.from_numpy(np.array(v, copy=True)) for k, v in global_state.items()})
        train_local(model, root, settings, seed=seed_for(cfg.seed, server_round, 0xF1))
        return {k: v.numpy() - global_state[k] for k, v in model.state_dict().items()}

    return update


def write_checkpoint(rundir: RunDirectory, rnd: int, arrays: ArrayRecord, strategy: FedShrink,
                     ledger: ResourceLedger, grid: Grid) -> None:
    """The server's state after round ``rnd`` (see :mod:`fedshrink.robust.checkpoint`), written atomically."""
    save_checkpoint(rundir.path, ServerCheckpoint(
        round=rnd,
        arrays=record_to_numpy(arrays),
        strategy=strategy.checkpoint_state(),
        rng=capture_rng(),
        ledger={"rows": [{k: str(v) for k, v in r.to_row().items()} for r in ledger.records],  # as clients.csv
                "server": {str(k): [c.aggregation_seconds, c.distillation_seconds, c.bytes_down]
                           for k, c in ledger.server.items()}},
        client_states=grid.export_client_states() if isinstance(grid, ClientStateGrid) else None,
    ))


def resume_from(rundir: RunDirectory, strategy: FedShrink, ledger: ResourceLedger, grid: Grid
                ) -> tuple[ArrayRecord, list[dict[str, Any]]]:
    """Restore the server (and in-process clients) from the run's checkpoint; return the model and rounds so far."""
    ckpt = load_checkpoint(rundir.path)
    strategy.restore_state(ckpt.strategy)
    restore_rng(ckpt.rng)
    ledger.records = [ClientRound.from_row(row) for row in ckpt.ledger.get("rows", [])]
    for rnd, (agg, dist, down) in ckpt.ledger.get("server", {}).items():
        ledger.add_server(int(rnd), aggregation_seconds=agg, distillation_seconds=dist, bytes_down=down)
    if isinstance(grid, ClientStateGrid):
        if ckpt.client_states is None:
            raise ConfigError("resume", str(rundir.path), "a checkpoint holding the simulated clients' states")
        grid.import_client_states(ckpt.client_states)
    history = [r for r in rundir.read_rounds() if r["round"] <= ckpt.round] if (rundir.path / rundir.METRICS).exists() \
        else []
    if [r["round"] for r in history] != list(range(1, ckpt.round + 1)):
        raise ConfigError("resume", str(rundir.path), f"a run whose metrics.jsonl holds rounds 1..{ckpt.round}")
    rundir.rewrite_rounds(history)  # drop rounds recorded after the checkpoint
    return numpy_to_record(ckpt.arrays), history


def serve(
    grid: Grid,
    cfg: RunConfig,
    *,
    base_dir: Path | None = None,
) -> dict[str, Any]:
    """Run ``cfg.federation.num_server_rounds`` rounds on ``grid``; return the summary written to disk."""
    t_start = time.perf_counter()
    cfg = resumed_config(cfg)  # resume: the settings the run was started with
    splits = make_splits(cfg.split_spec())
    spec = ModelSpec(cfg.model.model, splits.input_shape, splits.num_classes, cfg.model.model_width, cfg.model.model_norm)
    torch.manual_seed(cfg.seed)
    model = build_model(spec)
    common = dict(
        fraction_train=cfg.federation.fraction_train,
        min_train_clients=cfg.federation.min_train_clients,
        min_available_nodes=cfg.federation.min_train_clients,
        seed=cfg.seed,
        wait_timeout=cfg.federation.round_timeout,
        downlink_chain=cfg.chains.downlink_chain,
        max_reply_bytes=cfg.federation.max_reply_bytes,
        norm_guard=cfg.robust.norm_guard,
    )
    base: FedShrink = (
        FragmentStrategy(model_spec=spec, policy=cfg.fragments.policy(cfg.seed), pruned_as_zero=cfg.fragments.pruned_as_zero,
                         input_scaling=cfg.fragments.fragment_scaling, nested=cfg.fragments.nested(),
                         derive_masks=cfg.fragments.derive_masks, init=cfg.fragments.fragment_init, fusion=cfg.fragments.fusion(),
                         proxy_x=torch.from_numpy(splits.proxy.x) if cfg.fragments.fusion_steps else None, **common)
        if cfg.fragments.profile_mix
        else FedShrink(**common)  # type: ignore[arg-type]
    )
    # robust aggregation wraps the strategy (fedshrink/robust); `base` stays the FedShrink it wraps
    env = DefenceEnv(root_update=root_trainer(cfg, spec, splits)) if "fltrust" in cfg.robust.defence.split("+") \
        else DefenceEnv()
    strategy: Strategy = build_defence(base, cfg.robust.defences(), env)
    rundir = RunDirectory(Path(cfg.robust.resume).expanduser()) if cfg.robust.resume else RunDirectory.create(cfg, base=base_dir)
    ledger = ResourceLedger()
    console = RunConsole(quiet=cfg.output.quiet)
    say = console.say
    say(
        f"fedshrink: {cfg.data.dataset} ({len(splits.train)} client samples, {len(splits.test)} test, "
        f"{len(splits.proxy)} proxy), {cfg.model.model} x{cfg.model.model_width} ({count_parameters(model):,} "
        f"parameters), {cfg.federation.num_server_rounds} rounds -> {rundir.path}"
    )

    arrays = ArrayRecord(model.state_dict())
    train_config = train_config_for(cfg, spec)
    history: list[dict[str, Any]] = []
    first_round = 1
    if cfg.robust.resume:
        arrays, history = resume_from(rundir, base, ledger, grid)
        first_round = len(history) + 1
        say(f"resuming {rundir.path} after round {first_round - 1}")
    console.start(cfg.federation.num_server_rounds, title=f"{cfg.data.dataset} / {cfg.model.model}")
    try:
        for rnd in range(first_round, cfg.federation.num_server_rounds + 1):
            t0 = time.perf_counter()
            messages = list(strategy.configure_train(rnd, arrays, train_config, grid))
            replies = grid.send_and_receive(messages, timeout=cfg.federation.round_timeout)
            new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
            if new_arrays is not None:
                arrays = new_arrays
            model.load_state_dict(arrays.to_torch_state_dict())
            ev = evaluate(for_evaluation(model, splits), splits.test)
            outcome = base.outcomes[-1]
            width_acc = evaluate_widths(base, model, spec, splits) if isinstance(base, FragmentStrategy) else {}
            if cfg.distill.distill and cfg.distill.distill_every and rnd % cfg.distill.distill_every == 0 and rnd < cfg.federation.num_server_rounds:
                t_d = time.perf_counter()
                distill_student(cfg, spec, model, base, splits, rundir.path / f"student-round-{rnd}", say)
                ledger.add_server(rnd, distillation_seconds=time.perf_counter() - t_d)
            for reply in outcome.good:
                try:
                    ledger.add_reply(rnd, reply.metrics, profile=profile_of(base, reply.node_id),
                                     node_id=reply.node_id)
                except ReplyError as exc:  # telemetry only: the update itself was valid and is kept
                    log.warning("round %d: resource record of node %d ignored: %s", rnd, reply.node_id, exc)
            ledger.add_server(rnd, aggregation_seconds=outcome.aggregate_seconds, bytes_down=outcome.bytes_down)
            record: dict[str, Any] = {
                "round": rnd,
                "accuracy": ev.accuracy,
                "loss": ev.loss,
                "seconds": time.perf_counter() - t0,
                "clients-sent": len(messages),
                "clients-good": len(outcome.good),
                "clients-dropped": len(outcome.dropped),
                "skipped": outcome.skipped,
                **({"skip-reason": outcome.skip_reason} if outcome.skip_reason else {}),
                **({"accuracy-width": width_acc} if width_acc else {}),
                **({"fusion-seconds": outcome.refine_seconds} if isinstance(base, FragmentStrategy) and base.fusion
                   else {}),
                **ledger.round_record(rnd),  # bytes up/down (exact), fp32 equivalent, energy, FLOPs ...
                "bytes-up-received": outcome.bytes_up,  # every reply, dropped ones included
                "dropped": [
                    {"node-id": d.node_id, "partition-id": d.partition_id, "reason": d.reason}
                    for d in outcome.dropped
                ],
                "train": dict(train_metrics or {}),
                **({"robust": outcome.robust} if outcome.robust else {}),
            }
            rundir.append_round(record)
            history.append(record)
            if cfg.robust.checkpoint:
                write_checkpoint(rundir, rnd, arrays, base, ledger, grid)
            console.round(record)
            say(
                f"round {rnd:>3}/{cfg.federation.num_server_rounds}  accuracy {ev.accuracy:.4f}  "
                f"loss {ev.loss:.4f}  {record['seconds']:6.2f}s  "
                f"clients {len(outcome.good)}/{len(messages)}" + ("  (skipped)" if outcome.skipped else "")
            )
    except BaseException as exc:
        console.finish({})
        rundir.write_summary({"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                              "rounds-completed": len(history)})
        raise

    final = history[-1]
    summary: dict[str, Any] = {
        "status": "completed",
        "accuracy": final["accuracy"],
        "loss": final["loss"],
        "best-accuracy": max(r["accuracy"] for r in history),
        "rounds": cfg.federation.num_server_rounds,
        "rounds-skipped": sum(r["skipped"] for r in history),
        "replies-dropped": sum(r["clients-dropped"] for r in history),
        "defence": cfg.robust.defence,
        "attack": cfg.robust.attack if cfg.robust.attack_fraction > 0 else "none",
        "clients": len(list(grid.get_node_ids())),
        "model": cfg.model.model,
        "model-parameters": count_parameters(model),
        "seconds": time.perf_counter() - t_start,
        "bytes-up": sum(r["bytes-up"] for r in history),
        "bytes-down": sum(r["bytes-down"] for r in history),
        "bytes-up-uncompressed": sum(r["bytes-up-uncompressed"] for r in history),
        "energy-j": sum(r["energy-j"] for r in history),
        "energy-estimated": any(r["energy-estimated"] for r in history),
        "resources": ledger.summary(),
        "run-dir": str(rundir.path),
    }
    if cfg.distill.distill:
        t_d = time.perf_counter()
        student = distill_student(cfg, spec, model, base, splits, rundir.path, say)
        summary["distillation-seconds"] = time.perf_counter() - t_d
        ledger.add_server(cfg.federation.num_server_rounds, distillation_seconds=summary["distillation-seconds"])
        summary["student"] = {
            "model": f"{student.student_spec.name} x{student.student_spec.width:g}",
            "params": student.student["params"],
            "bytes": student.student["bytes_int8_file"],
            "test-accuracy-fp32": student.student["test_accuracy_fp32"],
            "test-accuracy-int8": student.student["test_accuracy_int8"],
            "ratios": student.ratios,
            "reason": student.reason,
        }
        summary["resources"] = ledger.summary()
        summary["seconds"] = time.perf_counter() - t_start
    ledger.write_csv(rundir.path)
    torch.save(model.state_dict(), rundir.path / "global_model.pt")
    rundir.write_summary(summary)
    report = build_report(rundir.path)
    summary["report"] = str(report.path)
    console.finish(summary)
    say(f"run directory {rundir.path} (report: {report.path.name})")
    return summary
