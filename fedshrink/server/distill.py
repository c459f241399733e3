"""Distilling the global model (or the last round's client models) into a compact student."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from fedshrink.config import RunConfig
from fedshrink.data import Splits
from fedshrink.distill import DistillReport, distill_and_export
from fedshrink.models import ModelSpec, build_model
from fedshrink.server.evaluation import for_evaluation
from fedshrink.strategy.rounds import ShrinkStrategy


def distill_student(cfg: RunConfig, spec: ModelSpec, model: torch.nn.Module, strategy: ShrinkStrategy,
                    splits: Splits, out_dir: Path, say: Callable[[str], None]) -> DistillReport:
    """Distil the teacher the settings name into a student on the proxy split; export it into ``out_dir``."""
    dcfg = cfg.distill_config()
    teacher: torch.nn.Module | list[torch.nn.Module] = for_evaluation(model, splits)
    if dcfg.teacher == "ensemble" and strategy.outcomes and strategy.outcomes[-1].accepted:
        teacher = []
        for state in strategy.client_models():
            client_model = build_model(spec)
            client_model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
            teacher.append(for_evaluation(client_model, splits))
    out_dir.mkdir(parents=True, exist_ok=True)
    # the proxy's labels are read only when the user gives them weight (distill-alpha > 0)
    proxy_y = splits.proxy.y if dcfg.alpha > 0 else None
    return distill_and_export(teacher, spec, splits.proxy.x, splits.test, dcfg, out_dir, proxy_y=proxy_y, log=say)


def student_summary(student: DistillReport) -> dict[str, object]:
    """The student's figures for ``summary.json``."""
    return {
        "model": f"{student.student_spec.name} x{student.student_spec.width:g}",
        "params": student.student["params"],
        "bytes": student.student["bytes_int8_file"],
        "test-accuracy-fp32": student.student["test_accuracy_fp32"],
        "test-accuracy-int8": student.student["test_accuracy_int8"],
        "ratios": student.ratios,
        "reason": student.reason,
    }
