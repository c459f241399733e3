"""Export and measurement: ONNX (checked in onnxruntime), state dict, CPU latency, model card.

Latency is wall-clock time of ``model(x)`` under ``torch.inference_mode`` on one
CPU thread (``torch.set_num_threads(1)``, restored afterwards), after warm-up
runs; reported as the median over ``repeats`` runs, in milliseconds per call
(a batch-64 figure is per batch, not per sample). onnxruntime latency uses a
session with one intra-op thread, measured the same way.
"""

from __future__ import annotations

import io
import json
import statistics
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedshrink.errors import DistillError

ONNX_TOLERANCE = 1e-4  # max |onnxruntime - torch| over every logit checked


def measure_latency_ms(
    model: nn.Module, input_shape: tuple[int, int, int], batch: int, *, repeats: int = 30, warmup: int = 3
) -> float:
    """Median wall-clock milliseconds of one forward pass of a ``(batch, C, H, W)`` input, one thread."""
    x = torch.rand((batch, *input_shape), generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model.eval()
    times = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(x)
                times.append((time.perf_counter() - t0) * 1e3)
    finally:
        torch.set_num_threads(threads)
    return statistics.median(times)


def state_dict_nbytes(model: nn.Module) -> int:
    """Size of ``torch.save(model.state_dict())`` in bytes (what a ``.pt`` file holds)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def fp32_nbytes(model: nn.Module) -> int:
    """Raw float32 parameter bytes: 4 x parameters (no container overhead)."""
    return 4 * sum(p.numel() for p in model.parameters())


def export_onnx(model: nn.Module, input_shape: tuple[int, int, int], path: Path, *, opset: int = 17) -> None:
    """Export ``model`` (float32, eval mode) with a dynamic batch axis: input ``x``, output ``logits``."""
    model.eval()
    x = torch.zeros((1, *input_shape))
    # the TorchScript exporter (dynamo=False) needs no onnxscript; torch warns that it is the legacy path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, opset_version=opset,
            input_names=["x"], output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )


def onnx_session(path: Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@torch.no_grad()
def check_onnx(model: nn.Module, path: Path, x: np.ndarray, *, tolerance: float = ONNX_TOLERANCE) -> float:
    """Max absolute difference between onnxruntime's and torch's logits on images ``x`` ``(N, C, H, W)``.

    Raises :class:`DistillError` above ``tolerance``.
    """
    sess = onnx_session(path)
    model.eval()
    got = sess.run(None, {"x": x.astype(np.float32)})[0]  # (N, K)
    want = model(torch.from_numpy(x)).numpy()  # (N, K)
    diff = float(np.abs(got - want).max())
    if not diff <= tolerance:
        raise DistillError(f"ONNX export of {path.name} differs from torch by {diff:.3g} (> {tolerance:g})")
    return diff


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    logits = onnx_session(path).run(None, {"x": x.astype(np.float32)})[0]  # (N, K)
    return float((logits.argmax(1) == y).mean())


def onnx_latency_ms(path: Path, input_shape: tuple[int, int, int], batch: int, *, repeats: int = 30) -> float:
    sess = onnx_session(path)
    x = np.random.default_rng(0).random((batch, *input_shape), dtype=np.float32)
    for _ in range(3):
        sess.run(None, {"x": x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, {"x": x})
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
