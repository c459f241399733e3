"""Server-side knowledge distillation, student search, final compression and export.

Entry point: :func:`distill_and_export` with a :class:`DistillConfig`; see :mod:`.pipeline`.
"""

from fedshrink.distill.kd import AugmentConfig, EnsembleTeacher, KDSettings, distill, kd_loss
from fedshrink.distill.macs import count_macs
from fedshrink.distill.pipeline import DistillConfig, DistillReport, distill_and_export
from fedshrink.distill.search import Budget

__all__ = [
    "AugmentConfig",
    "Budget",
    "DistillConfig",
    "DistillReport",
    "EnsembleTeacher",
    "KDSettings",
    "count_macs",
    "distill",
    "distill_and_export",
    "kd_loss",
]
