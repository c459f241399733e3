"""The one entry point: distil the teacher into a searched student, compress it, export it.

``distill_and_export(teacher, teacher_spec, proxy_x, test, cfg, out_dir)`` does, in order:

1. measure the teacher (params, MACs, bytes, test accuracy, CPU latency);
2. search a student inside ``cfg``'s budget (:mod:`.search`), unless ``cfg.student`` fixes one;
3. distil it from scratch on a transfer set built from every proxy image (``cfg.steps``;
   only ``proxy_x``, no labels unless ``alpha > 0``), prune by magnitude and fine-tune
   with the same loss (``cfg.finetune_steps``, masks kept), bake the masks in; a static-BatchNorm
   student's statistics are then frozen on the transfer set and folded into its layers (:mod:`.fold`);
4. int8 per-channel PTQ calibrated on the proxy images (:mod:`.compress`);
5. write into ``out_dir``: ``student.onnx`` (fp32, checked in onnxruntime against torch
   within 1e-4), ``student_state.pt`` (fp32 pruned state dict), ``student_int8.fsq``
   (packed int8 + sparsity, re-read and checked), ``model_card.json``, ``pareto.json`` and
   ``pareto.csv``; and return a :class:`DistillReport`.

The test set is used only to report accuracies, never to choose or train anything.
The caller decides whether to run (``cfg.enabled``) and how often (``cfg.every_k_rounds``).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedshrink.data import LabelledArrays
from fedshrink.distill.compress import finalize_pruning, pack_int8, prune_student, quantize_int8, sparsity, unpack_int8
from fedshrink.distill.export import (
    check_onnx,
    export_onnx,
    fp32_nbytes,
    measure_latency_ms,
    onnx_accuracy,
    onnx_latency_ms,
    state_dict_nbytes,
    write_json,
)
from fedshrink.distill.fold import fold_batch_norm, freeze_on
from fedshrink.distill.kd import AugmentConfig, EnsembleTeacher, KDSettings, build_transfer_set, distill
from fedshrink.distill.macs import count_macs
from fedshrink.distill.search import (
    Budget,
    SearchSettings,
    candidate_spec,
    measure_figures,
    search_student,
    trained_params,
)
from fedshrink.errors import ConfigError, DistillError
from fedshrink.models import NORMS, ModelSpec, build_model, count_parameters
from fedshrink.training import evaluate

DEFAULT_CANDIDATES = ("mlp:0.1", "mlp:0.2", "cnn:0.125", "cnn:0.1875", "cnn:0.25", "resnet:0.1875",
                      "resnet:0.25", "cnn:0.375", "resnet:0.375", "cnn:0.5", "resnet:0.5")
TEACHERS = ("global", "ensemble")


@dataclass(frozen=True)
class DistillConfig:
    """Every setting of server-side distillation, validated at construction; JSON round-trips."""

    enabled: bool = True
    every_k_rounds: int = 0  # 0 = only at the end of the run (the ServerApp acts on it)
    teacher: str = "global"  # or "ensemble" of the round's client models (FedDF); the caller supplies them
    temperature: float = 4.0
    alpha: float = 0.0  # weight of the labelled CE loss; 0 = pure distillation (proxy is unlabeled)
    steps: int = 2000  # final distillation steps (batches)
    finetune_steps: int = 1000  # distillation steps after pruning, masks kept
    transfer_size: int = 16384  # proxy images + augmented copies, labelled once by the teacher
    batch_size: int = 128
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    prune_amount: float = 0.5  # magnitude pruning of every Conv2d / Linear weight
    # size limits (0 = no limit); bytes = the packed int8 sparse file, latency = fp32 batch 1 one thread
    # (defaults: 110,922 / 15 and 443,688 / 60, rounded down: 15x / 60x for the default cnn teacher). Without
    # limits the largest candidate bounds the student (cnn x0.5: 3.9x fewer parameters than the cnn x1)
    max_params: int = 7390
    max_macs: int = 0
    max_bytes: int = 7390
    max_latency_ms: float = 0.0
    max_gap: float = 0.0  # points > 0: the smallest student whose held-out disagreement is at most this; 0: race
    # search
    candidates: tuple[str, ...] = DEFAULT_CANDIDATES
    student: str = ""  # "<model>:<width>" skips the search
    student_norm: str = ""  # "" = the teacher's; static BatchNorm is folded away before export (fold.py)
    search_rungs: tuple[int, ...] = (100, 300)
    search_eta: int = 3
    search_holdout: float = 0.2
    search_views: int = 4
    latency_repeats: int = 50
    onnx_opset: int = 17
    threads: int = 1  # torch CPU threads while distilling (restored afterwards)
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError("distill.enabled", self.enabled, "true or false")
        for key in ("every_k_rounds", "seed"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"distill.{key}", v, "an integer >= 0")
        for key in ("transfer_size", "threads"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"distill.{key}", v, "an integer >= 1")
        if isinstance(self.latency_repeats, bool) or not isinstance(self.latency_repeats, int) \
                or self.latency_repeats < 1:
            raise ConfigError("distill.latency_repeats", self.latency_repeats, "an integer >= 1")
        if not isinstance(self.onnx_opset, int) or not 13 <= self.onnx_opset <= 20:
            raise ConfigError("distill.onnx_opset", self.onnx_opset, "an integer in [13, 20]")
        if self.teacher not in TEACHERS:
            raise ConfigError("distill.teacher", self.teacher, "one of " + ", ".join(map(repr, TEACHERS)))
        if isinstance(self.prune_amount, bool) or not isinstance(self.prune_amount, int | float) \
                or not 0 <= self.prune_amount < 1:
            raise ConfigError("distill.prune_amount", self.prune_amount, "a number in [0, 1)")
        if self.student_norm and self.student_norm not in NORMS:
            raise ConfigError("distill.student_norm", self.student_norm, "'' or one of " + ", ".join(NORMS))
        object.__setattr__(self, "candidates", tuple(self.candidates))
        object.__setattr__(self, "search_rungs", tuple(self.search_rungs))
        if self.student:
            from fedshrink.distill.search import parse_candidate

            parse_candidate(self.student, "distill.student")
        # the sub-configs validate the rest and name the bad key
        self.kd_settings(self.steps)
        self.kd_settings(self.finetune_steps)
        self.budget()
        self.search_settings()

    def kd_settings(self, steps: int) -> KDSettings:
        return KDSettings(steps, self.batch_size, self.learning_rate, self.weight_decay, self.temperature,
                          self.alpha)

    def budget(self) -> Budget:
        return Budget(self.max_params, self.max_macs, self.max_bytes, self.max_latency_ms)

    def search_settings(self) -> SearchSettings:
        return SearchSettings(self.search_rungs, self.search_eta, self.search_holdout, self.search_views,
                              self.max_gap)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["candidates"] = list(self.candidates)
        d["search_rungs"] = list(self.search_rungs)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError("distill", unknown[0], "one of " + ", ".join(sorted(known)))
        d = dict(d)
        if "augment" in d and isinstance(d["augment"], dict):
            aug_known = {f.name for f in dataclasses.fields(AugmentConfig)}
            bad = sorted(set(d["augment"]) - aug_known)
            if bad:
                raise ConfigError("distill.augment", bad[0], "one of " + ", ".join(sorted(aug_known)))
            d["augment"] = AugmentConfig(**d["augment"])
        for key in ("candidates", "search_rungs"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> DistillConfig:
        return cls.from_dict(json.loads(text))


@dataclass
class DistillReport:
    """What :func:`distill_and_export` measured and wrote; ``card`` is ``model_card.json``'s content."""

    student_spec: ModelSpec
    card: dict[str, Any]
    reason: str
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def teacher(self) -> dict[str, Any]:
        return dict(self.card["teacher"])

    @property
    def student(self) -> dict[str, Any]:
        return dict(self.card["student"])

    @property
    def ratios(self) -> dict[str, float]:
        return dict(self.card["ratios"])


def _accuracy(model: nn.Module, test: LabelledArrays) -> float:
    return evaluate(model, test).accuracy


def _latency(model: nn.Module, shape: tuple[int, int, int], repeats: int) -> dict[str, float]:
    return {
        "latency_ms_batch1": measure_latency_ms(model, shape, 1, repeats=repeats),
        "latency_ms_batch64": measure_latency_ms(model, shape, 64, repeats=repeats),
    }


def as_teacher(teacher: nn.Module | Sequence[nn.Module]) -> nn.Module:
    """A module, or a sequence of modules turned into their logit-averaging ensemble."""
    if isinstance(teacher, nn.Module):
        return teacher
    return EnsembleTeacher(list(teacher))


def distill_and_export(
    teacher: nn.Module | Sequence[nn.Module],
    teacher_spec: ModelSpec,
    proxy_x: np.ndarray,
    test: LabelledArrays,
    cfg: DistillConfig,
    out_dir: Path,
    *,
    proxy_y: np.ndarray | None = None,
    log: Any = None,
) -> DistillReport:
    """Distil, search, compress and export (see the module doc); raises :class:`DistillError` on bad input.

    ``teacher`` is the global model, or a sequence of client models whose mean logits teach
    (FedDF). ``proxy_x`` ``(N, C, H, W)`` float32 are the server's proxy images; ``proxy_y``
    is only read when ``cfg.alpha > 0``. ``test`` is used for reporting only. ``log`` (a
    ``print``-like callable) gets progress lines. Runs on ``cfg.threads`` torch threads.
    """
    with torch_threads(cfg.threads):
        return _run(teacher, teacher_spec, proxy_x, test, cfg, out_dir, proxy_y, log)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block on ``n`` torch intra-op threads, restoring the previous count afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class _Inputs:
    """What every phase reads: the teacher, the proxy images (and labels), the test set, the settings."""

    teacher: nn.Module
    kind: str  # "global" or the ensemble's teacher setting
    spec: ModelSpec
    px: torch.Tensor  # (N, C, H, W) proxy images
    py: torch.Tensor | None  # (N,) proxy labels, only when cfg.alpha > 0
    test: LabelledArrays
    cfg: DistillConfig
    say: Any


def _inputs(teacher: nn.Module | Sequence[nn.Module], teacher_spec: ModelSpec, proxy_x: np.ndarray,
            test: LabelledArrays, cfg: DistillConfig, proxy_y: np.ndarray | None, log: Any) -> _Inputs:
    """Checked inputs; :class:`DistillError` names what is wrong."""
    proxy_x = np.asarray(proxy_x, dtype=np.float32)
    if proxy_x.ndim != 4 or len(proxy_x) == 0:
        raise DistillError(f"the proxy set is empty or not (N, C, H, W) images (shape {proxy_x.shape}): "
                           "there is nothing to distill on")
    if tuple(proxy_x.shape[1:]) != tuple(teacher_spec.input_shape):
        raise DistillError(f"proxy images have shape {proxy_x.shape[1:]}, the teacher expects "
                           f"{teacher_spec.input_shape}")
    if cfg.alpha > 0 and (proxy_y is None or len(proxy_y) != len(proxy_x)):
        raise DistillError(f"alpha={cfg.alpha} mixes in a labelled loss, but no proxy labels were given")
    py = torch.from_numpy(np.asarray(proxy_y, dtype=np.int64)) if cfg.alpha > 0 and proxy_y is not None else None
    return _Inputs(as_teacher(teacher).eval(), cfg.teacher if not isinstance(teacher, nn.Module) else "global",
                   teacher_spec, torch.from_numpy(proxy_x), py, test, cfg, log or (lambda _line: None))


def _teacher_card(inp: _Inputs) -> dict[str, Any]:
    shape = inp.spec.input_shape
    return {
        "spec": json.loads(inp.spec.to_json()), "kind": inp.kind, "params": count_parameters(inp.teacher),
        "macs": count_macs(inp.teacher, shape), "bytes_fp32": fp32_nbytes(inp.teacher),
        "bytes_state_dict_file": state_dict_nbytes(inp.teacher), "test_accuracy": _accuracy(inp.teacher, inp.test),
        **_latency(inp.teacher, shape, inp.cfg.latency_repeats),
    }


def _choose_student(inp: _Inputs, t_params: int) -> tuple[ModelSpec, str, list[dict[str, Any]]]:
    """The student: fixed by the settings (checked against the budget), or searched. Returns (spec, why, records)."""
    cfg = inp.cfg
    if cfg.student:
        spec = candidate_spec(cfg.student, inp.spec, cfg.student_norm)
        fig = measure_figures(spec, cfg.prune_amount, repeats=cfg.latency_repeats)
        n_params = trained_params(spec)
        if n_params >= t_params:
            raise DistillError(f"student {cfg.student} has {n_params:,} params, not fewer than the "
                               f"teacher's {t_params:,}: a student must be smaller")
        problems = cfg.budget().violations(fig)
        if problems:
            raise DistillError(f"student {cfg.student} does not fit the budget: {'; '.join(problems)}")
        return spec, f"{cfg.student}: fixed by the settings (no search)", []
    result = search_student(
        inp.teacher, inp.spec, inp.px, candidates=cfg.candidates, budget=cfg.budget(),
        search=cfg.search_settings(), kd=cfg.kd_settings(cfg.search_rungs[0]), aug=cfg.augment,
        transfer_size=cfg.transfer_size, prune_amount=cfg.prune_amount, norm=cfg.student_norm, seed=cfg.seed,
        latency_repeats=cfg.latency_repeats, report_accuracy=lambda m: _accuracy(m, inp.test),
    )
    return result.picked.spec, result.reason, [r.row() for r in result.records]


@dataclass(frozen=True)
class _Trained:
    student: nn.Module  # pruned (masks baked in), static BatchNorm folded away, fp32, eval mode
    spec: ModelSpec  # the student's, as exported (norm 'none' once a static BatchNorm is folded)
    accuracy_dense: float  # before pruning
    main: Any  # the distillation result before pruning
    finetune: Any  # after pruning


def _train_student(inp: _Inputs, spec: ModelSpec, t_params: int) -> _Trained:
    """Distil from scratch on a transfer set of every proxy image, prune by magnitude, fine-tune, bake the masks."""
    cfg = inp.cfg
    torch.manual_seed(cfg.seed)
    student = build_model(spec)
    if count_parameters(student) >= t_params:
        raise DistillError(f"student has {count_parameters(student):,} params, not fewer than the teacher's "
                           f"{t_params:,}: a student must be smaller")
    transfer = build_transfer_set(inp.px, inp.teacher if cfg.alpha < 1 else None, cfg.transfer_size, cfg.augment,
                                  seed=cfg.seed + 1, proxy_y=inp.py, num_classes=inp.spec.num_classes)
    kd_main = distill(student, transfer, cfg.kd_settings(cfg.steps), seed=cfg.seed + 1)
    acc_dense = _accuracy(freeze_on(student, transfer.x), inp.test)
    prune_student(student, cfg.prune_amount)
    kd_ft = distill(student, transfer, cfg.kd_settings(cfg.finetune_steps), seed=cfg.seed + 2)
    finalize_pruning(student)
    if spec.norm == "batch":
        student, spec = fold_batch_norm(student, spec, transfer.x)
    student.eval()
    return _Trained(student, spec, acc_dense, kd_main, kd_ft)


def _output_files(out_dir: Path) -> dict[str, Path]:
    names = {"onnx": "student.onnx", "state_dict": "student_state.pt", "int8": "student_int8.fsq",
             "card": "model_card.json", "pareto_json": "pareto.json", "pareto_csv": "pareto.csv"}
    return {k: out_dir / v for k, v in names.items()}


def _export(inp: _Inputs, trained: _Trained, files: dict[str, Path]) -> tuple[nn.Module, float]:
    """int8 PTQ calibrated on the proxy images, packed and re-read; the fp32 state and ONNX, checked.

    Returns the int8 model as read back from its bytes and the largest ONNX-vs-torch difference.
    """
    qmodel = quantize_int8(trained.student, inp.px)
    files["int8"].write_bytes(pack_int8(qmodel))
    q_loaded = unpack_int8(files["int8"].read_bytes())
    with torch.no_grad():
        if not torch.equal(q_loaded(inp.px[:64]), qmodel(inp.px[:64])):
            raise DistillError("the packed int8 student does not reproduce the in-memory one")
    torch.save(trained.student.state_dict(), files["state_dict"])
    export_onnx(trained.student, inp.spec.input_shape, files["onnx"], opset=inp.cfg.onnx_opset)
    check_x = np.concatenate([inp.test.x[:256], inp.px[:64].numpy()])
    return q_loaded, check_onnx(trained.student, files["onnx"], check_x)


def _student_card(inp: _Inputs, spec: ModelSpec, trained: _Trained, q_loaded: nn.Module, onnx_diff: float,
                  files: dict[str, Path]) -> dict[str, Any]:
    student, shape, repeats = trained.student, inp.spec.input_shape, inp.cfg.latency_repeats
    return {
        "spec": json.loads(spec.to_json()), "params": count_parameters(student),
        "nonzero_weights": int(sum(int((m.weight != 0).sum()) for m in student.modules()
                                   if isinstance(m, nn.Conv2d | nn.Linear))),
        "sparsity": sparsity(student), "macs": count_macs(student, shape),
        "bytes_int8_file": files["int8"].stat().st_size, "bytes_fp32": fp32_nbytes(student),
        "bytes_state_dict_file": files["state_dict"].stat().st_size,
        "bytes_onnx_file": files["onnx"].stat().st_size,
        "test_accuracy_dense_fp32": trained.accuracy_dense, "test_accuracy_fp32": _accuracy(student, inp.test),
        "test_accuracy_int8": _accuracy(q_loaded, inp.test),
        "test_accuracy_onnx": onnx_accuracy(files["onnx"], inp.test.x, inp.test.y), "onnx_max_abs_diff": onnx_diff,
        **_latency(student, shape, repeats),
        "onnx_latency_ms_batch1": onnx_latency_ms(files["onnx"], shape, 1, repeats=repeats),
        "onnx_latency_ms_batch64": onnx_latency_ms(files["onnx"], shape, 64, repeats=repeats),
    }


def _model_card(inp: _Inputs, teacher: dict[str, Any], student: dict[str, Any], trained: _Trained, reason: str,
                seconds: dict[str, float]) -> dict[str, Any]:
    return {
        "format": "fedshrink-model-card/1", "teacher": teacher, "student": student,
        "ratios": {
            "params": teacher["params"] / student["params"],
            "bytes": teacher["bytes_fp32"] / student["bytes_int8_file"],
            "bytes_vs_teacher_file": teacher["bytes_state_dict_file"] / student["bytes_int8_file"],
            "macs": teacher["macs"] / max(student["macs"], 1),
            "latency_batch1": teacher["latency_ms_batch1"] / student["latency_ms_batch1"],
        },
        "accuracy_gap_points": {
            "fp32": 100 * (teacher["test_accuracy"] - student["test_accuracy_fp32"]),
            "int8": 100 * (teacher["test_accuracy"] - student["test_accuracy_int8"]),
        },
        "selection": reason, "proxy_images": len(inp.px), "labels_used": inp.cfg.alpha > 0,
        "distillation": {"steps": trained.main.steps, "finetune_steps": trained.finetune.steps,
                         "final_loss": trained.main.final_loss, "finetune_loss": trained.finetune.final_loss},
        "seconds": seconds,
        "definitions": {
            "macs": "multiply-accumulates per sample, Conv2d + Linear only (fedshrink.distill.macs)",
            "bytes_int8_file": "size of student_int8.fsq: int8 nonzeros + bitmap + per-channel fp32 scales "
                               "+ fp32 biases/norms + header (fedshrink.distill.compress)",
            "bytes_fp32": "4 bytes x parameters",
            "latency": "median ms per forward call, one CPU thread, torch.inference_mode (batch 64: per batch)",
        },
        "config": inp.cfg.to_dict(),
    }


def _write_search(files: dict[str, Path], cfg: DistillConfig, spec: ModelSpec, reason: str,
                  records: list[dict[str, Any]]) -> None:
    write_json(files["pareto_json"], {"budget": cfg.budget().describe(), "picked": spec.name + f":{spec.width:g}",
                                      "reason": reason, "candidates": records})
    with files["pareto_csv"].open("w", newline="") as fh:
        if records:
            writer = csv.DictWriter(fh, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)


def _run(
    teacher: nn.Module | Sequence[nn.Module],
    teacher_spec: ModelSpec,
    proxy_x: np.ndarray,
    test: LabelledArrays,
    cfg: DistillConfig,
    out_dir: Path,
    proxy_y: np.ndarray | None,
    log: Any,
) -> DistillReport:
    t_start = time.perf_counter()
    inp = _inputs(teacher, teacher_spec, proxy_x, test, cfg, proxy_y, log)
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher_card = _teacher_card(inp)
    inp.say(f"distill: teacher {teacher_card['params']:,} params, test accuracy {teacher_card['test_accuracy']:.4f}")
    t0 = time.perf_counter()
    spec, reason, records = _choose_student(inp, teacher_card["params"])
    search_s = time.perf_counter() - t0
    inp.say(f"distill: picked {reason} ({search_s:.1f}s)")
    t0 = time.perf_counter()
    trained = _train_student(inp, spec, teacher_card["params"])
    train_s = time.perf_counter() - t0
    files = _output_files(out_dir)
    q_loaded, onnx_diff = _export(inp, trained, files)
    spec = trained.spec
    student_card = _student_card(inp, spec, trained, q_loaded, onnx_diff, files)
    card = _model_card(inp, teacher_card, student_card, trained, reason,
                       {"search": search_s, "train": train_s, "total": time.perf_counter() - t_start})
    _write_search(files, cfg, spec, reason, records)
    write_json(files["card"], card)
    inp.say(
        f"distill: student {spec.name} x{spec.width:g}: {student_card['params']:,} params "
        f"({card['ratios']['params']:.1f}x fewer), {student_card['bytes_int8_file']:,} bytes "
        f"({card['ratios']['bytes']:.1f}x smaller), test accuracy fp32 {student_card['test_accuracy_fp32']:.4f} / "
        f"int8 {student_card['test_accuracy_int8']:.4f} (teacher {teacher_card['test_accuracy']:.4f}) in "
        f"{card['seconds']['total']:.1f}s -> {out_dir}"
    )
    if not math.isfinite(trained.main.final_loss):
        raise DistillError(f"distillation diverged (final loss {trained.main.final_loss})")
    return DistillReport(student_spec=spec, card=card, reason=reason, files=files)
