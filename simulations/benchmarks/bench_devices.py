"""Benchmark: simulated devices. Parts run with ``--part`` (default: all of them).

Usage: ``python simulations/benchmarks/bench_devices.py [--part memory] [--part profiles]
[--out simulations/results/devices.md]``

``memory``: the training-memory model (:func:`fedshrink.devices.step_memory`,
:class:`fedshrink.devices.TrainingMemory`) against a measurement of ONE
client's training step, for every registered model on an 8x8 (digits) and a
28x28 input, at widths 0.25, 0.5 and 1, fp32, batch 16, SGD momentum 0.9,
static BatchNorm (the run default). Each configuration runs in a child
process of its own (``subprocess``; torch on one thread) that:

1. imports torch and fedshrink, builds the same model (same shapes) and trains
   it for two steps, then deletes it, collects garbage and calls glibc's
   ``malloc_trim(0)``: kernel code, primitive caches and lazily created
   framework state now belong to the baseline;
2. reads the baseline RSS (``VmRSS``), builds the model, its optimizer and
   one batch, and trains five steps; before each step it resets the peak RSS
   (``/proc/self/clear_refs`` = 5) and after it reads ``VmHWM``: the step's
   peak RSS growth over the baseline (steps 2-5 counted, when the momentum
   buffers exist, as in every step of a real round but the first);
3. profiles one more step with torch's profiler (``profile_memory=True``) and
   sums its allocation events in time order: the peak of live tensor bytes
   above the persistent state, to which the measured bytes of the weights,
   momentum buffers and batch are added; the live bytes at the end of the
   forward pass give the activations kept for backward.

The child runs with ``MALLOC_MMAP_THRESHOLD_=16384``, so every tensor of
16 kB or more is its own mapping and goes back to the kernel when freed: RSS
then follows live memory instead of glibc's free lists (with the default
allocator the peak RSS of the largest configurations was measured at up to
1.8x the live tensor bytes, from fragmentation). Each configuration is
measured twice: with PyTorch's native convolution (oneDNN off; an im2col
engine that unfolds one sample at a time, as the model assumes) and with the
default oneDNN backend, whose blocked-layout workspaces the model does not
describe. Not measured: the client's data set, the reference copy, the
error-feedback residual and codec buffers of a round (modelled only).

``profiles``: the modelled figures of the shipped profiles on the default
model (cnn, digits), per device model: memory by component, bytes, time and
energy of one round of 2 epochs over 180 examples. Modelled, not measured.

Parts still to come (fleet time-to-accuracy runs) add themselves to ``PARTS``.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MODELS = ("mlp", "cnn", "resnet")
SIDES = (8, 28)
WIDTHS = (0.25, 0.5, 1.0)
BATCH = 16
STEPS = 5
TOLERANCE = 0.25
LARGE = 1e6  # bytes: RSS is compared where the modelled step is at least this large


# ---- the child: one configuration, measured in a fresh process ------------------------------------


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def child(name: str, side: int, width: float, backend: str) -> dict[str, Any]:
    import torch
    from torch import nn
    from torch.profiler import ProfilerActivity, profile, record_function

    from fedshrink.models import ModelSpec, build_model

    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = backend == "onednn"
    spec = ModelSpec(name, (1, side, side), 10, width=width, norm="batch")

    def trainer(model: nn.Module) -> tuple[torch.optim.Optimizer, Callable[[torch.Tensor, torch.Tensor], None]]:
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            opt.zero_grad(set_to_none=True)
            with record_function("forward"):
                loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()

        return opt, step

    torch.manual_seed(0)
    warm = build_model(spec)
    _, warm_step = trainer(warm)
    xw, yw = torch.randn(BATCH, 1, side, side), torch.randint(0, 10, (BATCH,))
    for _ in range(2):
        warm_step(xw, yw)
    del warm, warm_step, xw, yw
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)

    base = _status("VmRSS")
    model = build_model(spec)
    opt, step = trainer(model)
    x, y = torch.randn(BATCH, 1, side, side), torch.randint(0, 10, (BATCH,))  # (B, C, H, W), (B,)
    rss = []
    for _ in range(STEPS):
        _reset_peak()
        step(x, y)
        rss.append(_status("VmHWM") - base)

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(x, y)
    events = prof.profiler.kineto_results.events()
    forward_end = next(e.end_ns() for e in events if e.name() == "forward")
    live = peak = at_forward_end = 0
    for t, nbytes in sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"):
        live += nbytes  # frees of the previous step's gradients are not reported; they net out against
        peak = max(peak, live)  # the new gradients, so ``live`` is relative to weights + momentum + batch
        if t <= forward_end:
            at_forward_end = live
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    momentum = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
                   if isinstance(v, torch.Tensor))
    return {"weights": weights, "momentum": momentum, "batch": x.nbytes + y.nbytes, "saved": at_forward_end,
            "working": peak, "rss_growth": max(rss[1:]), "rss_steps": rss}


MALLOC_TRIALS: tuple[dict[str, str], ...] = (
    {"MALLOC_MMAP_THRESHOLD_": "16384"},
    {"MALLOC_MMAP_THRESHOLD_": "16384", "MALLOC_TRIM_THRESHOLD_": "0"},
    {"MALLOC_MMAP_THRESHOLD_": "4096"},
    {"MALLOC_MMAP_THRESHOLD_": "4096", "MALLOC_TRIM_THRESHOLD_": "0"},
)


def measure(name: str, side: int, width: float, backend: str, malloc: dict[str, str] | None = None
            ) -> dict[str, Any]:
    env = {**os.environ, **(malloc or MALLOC_TRIALS[0]), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--child", json.dumps([name, side, width, backend])]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# ---- part: memory ----------------------------------------------------------------------------------


def _mb(n: float) -> str:
    return f"{n / 1e6:.3f}"


def _err(model: float, measured: float) -> float:
    return model / measured - 1.0


def _modelled_step(spec: Any) -> tuple[Any, int]:
    from fedshrink.devices import step_memory

    m = step_memory(spec, BATCH)
    return m, 2 * m.param_bytes + m.batch_bytes + m.working_bytes  # weights + momentum + batch + working


def _row(name: str, side: int, width: float) -> tuple[str, dict[str, float], int]:
    """One configuration: its table row, its errors and its modelled step bytes."""
    from fedshrink.models import ModelSpec

    m, model_step = _modelled_step(ModelSpec(name, (1, side, side), 10, width=width, norm="batch"))
    native, onednn = measure(name, side, width, "native"), measure(name, side, width, "onednn")
    meas_step = native["weights"] + native["momentum"] + native["batch"] + native["working"]
    dnn_step = onednn["weights"] + onednn["momentum"] + onednn["batch"] + onednn["working"]
    errs = {"allocator": _err(model_step, meas_step), "rss": _err(model_step, native["rss_growth"]),
            "onednn": _err(model_step, dnn_step)}
    errs["rss_large"] = errs["rss"] if model_step >= LARGE else 0.0
    print(f"{name} {side}x{side} w{width}: model {model_step} B, allocator {meas_step} B, "
          f"RSS {native['rss_growth']} B, oneDNN {dnn_step} B", flush=True)
    row = (f"| {name} | {side}x{side} | {width:g} | {m.params} | {_mb(2 * m.param_bytes)} / {_mb(m.batch_bytes)} / "
           f"{_mb(m.saved_bytes)} / {_mb(m.working_bytes)} / **{_mb(model_step)}** | "
           f"{_mb(native['weights'] + native['momentum'])} / {_mb(native['batch'])} / "
           f"{_mb(native['saved'])} / {_mb(native['working'])} / **{_mb(meas_step)}** | "
           f"{errs['allocator']:+.1%} | {_mb(native['rss_growth'])} | {errs['rss']:+.1%} | "
           f"{_mb(dnn_step)} | {errs['onednn']:+.1%} |")
    return row, errs, model_step


def part_memory() -> list[str]:
    from fedshrink.models import ModelSpec

    head = ("| model | input | width | params | modelled: weights+momentum / batch / kept at end of forward / "
            "working peak / **step** (MB) | measured, allocator (native conv): same (MB) | error | "
            "measured RSS growth (native conv, MB) | error | measured, allocator (oneDNN): step (MB) | error |")
    rows = [head, "|" + "---|" * 11]
    worst: dict[str, float] = {"allocator": 0.0, "rss": 0.0, "rss_large": 0.0, "onednn": 0.0}
    worst_rss: tuple[str, int, float] = (MODELS[0], SIDES[0], WIDTHS[0])
    for name in MODELS:
        for side in SIDES:
            for width in WIDTHS:
                row, errs, _ = _row(name, side, width)
                rows.append(row)
                if abs(errs["rss"]) > worst["rss"]:
                    worst_rss = (name, side, width)
                for k, v in errs.items():
                    worst[k] = max(worst[k], abs(v))
    trials = [measure(*worst_rss, "native", malloc)["rss_growth"] for malloc in MALLOC_TRIALS]
    _, w_model = _modelled_step(ModelSpec(worst_rss[0], (1, worst_rss[1], worst_rss[1]), 10, width=worst_rss[2],
                                          norm="batch"))
    settings = "; ".join(" ".join(f"{k}={v}" for k, v in m.items()) for m in MALLOC_TRIALS)
    verdict = [
        f"Largest |error| of the modelled step against the allocator's live tensor bytes (torch's profiler, native "
        f"convolution): **{worst['allocator']:.1%}**. Target: within {TOLERANCE:.0%} for every configuration; this "
        f"run {'**meets**' if worst['allocator'] <= TOLERANCE else '**misses**'} it.",
        "",
        f"Against RSS growth (native convolution): **{worst['rss_large']:.1%}** where the modelled step is "
        f"{LARGE / 1e6:g} MB or more, **{worst['rss']:.1%}** over all configurations. Below about a megabyte RSS "
        "is dominated by what the model leaves out on purpose (Python and autograd objects, small tensors served "
        "from glibc's heap, 4 kB pages). The same child for the configuration farthest from RSS "
        f"({worst_rss[0]} {worst_rss[1]}x{worst_rss[1]}, width {worst_rss[2]:g}; modelled step {_mb(w_model)} MB), "
        f"run again under four malloc settings ({settings}), measured RSS growth of "
        f"{', '.join(_mb(t) for t in trials)} MB: the allocator's choices alone move it by "
        f"{_mb(max(trials) - min(trials))} MB.",
        "",
        f"With oneDNN (PyTorch's default CPU convolution) the allocator's peak is up to **{worst['onednn']:.1%}** "
        "away from the model: its convolution backward passes allocate blocked-layout copies and weight-gradient "
        "workspaces (visible as extra allocation events in these children's profiles) that an im2col engine does "
        "not need. The model describes the device's engine, not the host's library, so these are reported, not "
        "modelled.",
    ]
    return ["## Memory model vs one measured training step", "", *rows, "", *verdict, ""]


# ---- part: profiles (modelled only) --------------------------------------------------------------


def part_profiles() -> list[str]:
    from fedshrink.devices import PROFILES, estimate, get_device
    from fedshrink.models import ModelSpec

    spec = ModelSpec("cnn", (1, 8, 8), 10, norm="batch")
    samples = 2 * 180
    rows = ["| profile | device | width | round memory (MB) | step / train / decode / encode (MB) | upload (kB) | "
            "download (kB) | time (s) | compute / radio energy (J) |", "|" + "---|" * 9]
    for name in ("iot", "phone", "edge", "laptop"):
        prof = PROFILES[name]
        est = estimate(spec, prof)
        mem = est.memory
        cost = est.cost(get_device(prof.device), samples)
        rows.append(f"| {name} | {prof.device} | {prof.width:g} | {_mb(mem.round_peak)} | {_mb(mem.step_peak)} / "
                    f"{_mb(mem.train_peak)} / {_mb(mem.decode_peak)} / {_mb(mem.encode_peak)} | "
                    f"{est.upload_bytes / 1e3:.2f} | {est.download_bytes / 1e3:.2f} | {cost.time_s:.3f} | "
                    f"{cost.compute_j:.3f} / {cost.radio_j:.4f} |")
    return ["## Shipped profiles on the default model (modelled device figures)", "",
            f"cnn on digits (1x8x8), static BatchNorm, one round of 2 epochs over 180 examples ({samples} samples), "
            "each profile on its own device model at the medians. Every figure here is modelled "
            "(fedshrink.devices), none measured.", "", *rows, ""]


PARTS: dict[str, Callable[[], list[str]]] = {"memory": part_memory, "profiles": part_profiles}


def host() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    import torch

    return (f"{cpu}, {os.cpu_count()} logical cores, {platform.machine()} / Python {platform.python_version()} / "
            f"torch {torch.__version__}, torch threads = 1")


def merge(current: str, part: str, block: list[str]) -> str:
    """``current`` with ``part``'s block (between its markers) replaced, or appended when absent."""
    start, end = f"<!-- part:{part} -->", f"<!-- /part:{part} -->"
    body = "\n".join([start, *block, end])
    if not current.strip():
        current = ("# Simulated devices\n\n"
                   "Each part of `simulations/benchmarks/bench_devices.py` writes its own section.\n")
    if start in current and end in current:
        i, j = current.index(start), current.index(end) + len(end)
        return current[:i] + body + current[j:]
    return current.rstrip("\n") + "\n\n" + body + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", action="append", choices=sorted(PARTS), help="parts to run (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "simulations" / "results" / "devices.md")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return 0
    text = args.out.read_text() if args.out.exists() else ""
    for part in args.part or list(PARTS):
        stamp = (f"Generated by `python simulations/benchmarks/bench_devices.py --part {part}` on "
                 f"{datetime.date.today().isoformat()}; host: {host()}.")
        block = PARTS[part]()
        text = merge(text, part, [block[0], "", stamp, *block[1:]])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
