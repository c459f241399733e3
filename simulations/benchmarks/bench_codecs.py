"""Benchmark every codec chain: compression ratio, error, encode/decode throughput (host measurements).

Usage::

    python simulations/benchmarks/bench_codecs.py [--repeats 9] [--out simulations/results/codecs.md]
        [--json FILE] [--baseline FILE]

Inputs: a 1M-element float32 tensor (standard normal, shaped (1000, 1000) so
per-channel chains have channels); a real model update (the digits CNN,
``build_model(ModelSpec("cnn", (1, 8, 8), 10))``, trained one local epoch on
scikit-learn's digits: update = weights after - weights before); a synthetic
1M-element Laplace(0, 1e-3) update; and the default CNN's state.

Throughput is measured on this host, one thread (``torch.set_num_threads(1)``,
``OMP_NUM_THREADS=1``), as GB/s of float32 input (GB = 10**9 bytes): input
bytes / the median of ``--repeats`` timed runs after one warm-up. Encode time
covers ``Chain.encode`` (selection, quantization, packing, entropy stage, proto
serialisation); decode time covers ``decode_tensor`` (full validation, then the
payload). Ratio = original bytes / bytes on the wire (the serialized
CompressedTensor, header included). ``--json`` saves the 1M-tensor figures;
``--baseline`` adds the GB/s of such a file (for example one written by this
script on an earlier commit) as "before" columns.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fedshrink.compression import Chain, decode_tensor, encode_state, message_nbytes  # noqa: E402
from fedshrink.devices.profiles import PROFILES  # noqa: E402
from fedshrink.errors import ConfigError  # noqa: E402

#: the shipped profiles' chains (their uplinks and downlinks), held to >= 1 GB/s encode and decode;
#: checked against the registered profiles below, so the list cannot fall behind them
SHIPPED = ["topk:0.1|q4|zstd", "topk:0.05|int8|zstd", "int8|zstd"]
#: the same chains with zlib as the entropy stage, for comparison
SHIPPED_ZLIB = [c.replace("|zstd", "|zlib") for c in SHIPPED]


def check_shipped() -> None:
    """Fail if SHIPPED is not exactly the registered profiles' non-raw chains."""
    def canon(text: str) -> str:
        return repr(Chain.parse(text))

    profiles = {canon(c) for p in PROFILES.values() for c in (p.uplink, p.downlink) if c != "raw"}
    listed = {canon(c) for c in SHIPPED}
    if listed != profiles:
        raise SystemExit(f"bench_codecs: SHIPPED {sorted(listed)} is not the profiles' chains {sorted(profiles)}")
CHAINS = [
    "raw",
    "zlib",
    "zstd",
    "fp16",
    "bf16",
    "int8",
    "int8:axis=0",
    "int8:stochastic=true",
    "q4",
    "q4:axis=0",
    "q4:stochastic=true",
    "q3",
    "q2",
    "q1",
    "sign",
    "topk:0.1",
    "topk:0.05",
    "topk:0.01",
    "topk:0.1|q4",
    "topk:0.05|int8",
    "topk:0.05|q4",
    "topk:0.01|int8|zlib",
    "randk:0.05",
    "q4|zlib",
    *SHIPPED_ZLIB,
    *SHIPPED,
]
#: entropy stages compared on the shipped chains' payloads
ENTROPY = ["zlib:6", "zlib:1", "zstd:1", "zstd:3"]
TARGET_GBPS = 1.0


def host() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} logical CPUs"


def available(text: str) -> bool:
    """Whether this checkout knows every codec of ``text`` (the script also runs on older commits)."""
    try:
        Chain.parse(text)
    except ConfigError:
        print(f"| `{text}` | not available in this checkout |", flush=True)
        return False
    return True


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, float, float]:
    """(median wall-clock s, median CPU s, least CPU s) of ``repeats`` runs of ``fn`` after a warm-up.

    CPU time (of this thread) does not advance while other processes hold the core,
    so it is the per-core cost on a shared host; wall-clock time includes that
    interference. The least CPU time is the run least slowed by a busy sibling core.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - t0)
    return statistics.median(wall), statistics.median(cpu), min(cpu)


def bench_tensor(text: str, x: torch.Tensor, repeats: int) -> dict[str, float]:
    chain = Chain.parse(text)
    rng = np.random.default_rng(0)
    enc = chain.encode("x", x, rng=rng)
    err = (decode_tensor(enc.data).double() - x.double()).abs()
    t_enc, c_enc, b_enc = median_time(lambda: chain.encode("x", x, rng=rng), repeats)
    t_dec, c_dec, b_dec = median_time(lambda: decode_tensor(enc.data), repeats)
    gb = x.numel() * x.element_size() / 1e9
    return {
        "ratio": enc.ratio,
        "bytes": enc.nbytes,
        "max_err": float(err.max()),
        "mean_err": float(err.mean()),
        "enc": gb / t_enc,
        "dec": gb / t_dec,
        "enc_cpu": gb / c_enc,
        "dec_cpu": gb / c_dec,
        "enc_best": gb / b_enc,
        "dec_best": gb / b_dec,
    }


def bench_state(text: str, state: dict[str, torch.Tensor], repeats: int) -> dict[str, float]:
    """Every tensor of ``state`` through ``text``: bytes, error and throughput (per-tensor overhead included)."""
    chain = Chain.parse(text)
    rng = np.random.default_rng(0)
    encs = {k: chain.encode(k, v, rng=rng) for k, v in state.items()}
    decs = {k: decode_tensor(e.data) for k, e in encs.items()}
    floats = [k for k, v in state.items() if v.is_floating_point()]
    errs = torch.cat([(decs[k].double() - state[k].double()).abs().reshape(-1) for k in floats])
    raw = sum(e.raw_nbytes for e in encs.values())
    wire = sum(e.nbytes for e in encs.values())
    t_enc, c_enc, _ = median_time(lambda: [chain.encode(k, v, rng=rng) for k, v in state.items()], repeats)
    t_dec, c_dec, _ = median_time(lambda: [decode_tensor(e.data) for e in encs.values()], repeats)
    return {
        "ratio": raw / wire,
        "bytes": wire,
        "max_err": float(errs.max()),
        "mean_err": float(errs.mean()),
        "enc": raw / 1e9 / t_enc,
        "dec": raw / 1e9 / t_dec,
        "enc_cpu": raw / 1e9 / c_enc,
        "dec_cpu": raw / 1e9 / c_dec,
    }


def message_bytes(text: str, state: dict[str, torch.Tensor]) -> int:
    from flwr.app import Metadata, RecordDict
    from flwr.app.message.message import make_message

    record, _ = encode_state(state, text, rng=np.random.default_rng(0))
    md = Metadata(
        run_id=1,
        message_id="",
        src_node_id=1,
        dst_node_id=0,
        reply_to_message_id="",
        group_id="",
        created_at=0.0,
        ttl=60.0,
        message_type="train",
    )
    return message_nbytes(make_message(metadata=md, content=RecordDict({"arrays": record})))


def cnn_state() -> dict[str, torch.Tensor]:
    from fedshrink.models import ModelSpec, build_model

    torch.manual_seed(0)
    model = build_model(ModelSpec("cnn", input_shape=(1, 8, 8), num_classes=10))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def digits_update() -> dict[str, torch.Tensor]:
    """The float tensors of a real update: the digits CNN after one local epoch minus before."""
    from fedshrink.data.sources import load_source
    from fedshrink.models import ModelSpec, build_model
    from fedshrink.training import TrainSettings, train_local

    torch.manual_seed(0)
    model = build_model(ModelSpec("cnn", input_shape=(1, 8, 8), num_classes=10))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_local(model, load_source("digits").pool, TrainSettings(epochs=1), seed=0)
    after = model.state_dict()
    return {k: (after[k] - v).detach() for k, v in before.items() if v.is_floating_point()}


def fmt_row(text: str, r: dict[str, float], base: dict[str, dict[str, float]] | None) -> str:
    mark = "*" if text in SHIPPED else ""
    cells = [
        f"`{text}`{mark}",
        f"{r['ratio']:.2f}",
        f"{int(r['bytes'])}",
        f"{r['max_err']:.3g}",
        f"{r['mean_err']:.3g}",
        f"{r['enc_cpu']:.2f}",
        f"{r['dec_cpu']:.2f}",
        f"{r['enc_best']:.2f}",
        f"{r['dec_best']:.2f}",
        f"{r['enc']:.2f}",
        f"{r['dec']:.2f}",
    ]
    if base is not None:
        old = base.get(text)
        cells += [f"{old['enc_cpu']:.2f}", f"{old['dec_cpu']:.2f}"] if old else ["n/a", "n/a"]
    return "| " + " | ".join(cells) + " |"


def tensor_section(
    x: torch.Tensor, ns: argparse.Namespace, base: dict[str, dict[str, float]] | None
) -> tuple[list[str], dict[str, dict[str, float]]]:
    cols = "| chain | ratio | wire bytes | max err | mean err | encode GB/s | decode GB/s "
    cols += "| encode (best) | decode (best) | encode (wall) | decode (wall) |"
    rule = "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    if base is not None:
        cols += " before: encode GB/s | before: decode GB/s |"
        rule += "---:|---:|"
    lines = ["## 1M-element float32 tensor (standard normal, shape (1000, 1000))", "", cols, rule]
    results: dict[str, dict[str, float]] = {}
    for text in CHAINS:
        if not available(text):
            continue
        results[text] = r = bench_tensor(text, x, ns.repeats)
        lines.append(fmt_row(text, r, base))
        print(lines[-1], flush=True)
    shipped = [t for t in SHIPPED if t in results]
    missed = [t for t in shipped if min(results[t]["enc_cpu"], results[t]["dec_cpu"]) < TARGET_GBPS]
    met = [t for t in shipped if t not in missed]
    best = [t for t in shipped if min(results[t]["enc_best"], results[t]["dec_best"]) >= TARGET_GBPS]
    lines += [
        "",
        "GB/s: float32 input bytes per CPU-second of the one thread (per-core cost), median; `(best)`: the "
        "fastest run's (least slowed by a busy sibling core); `(wall)`: per wall-clock second (median), which "
        "on this shared host includes time other processes held the core. "
        f"Target: the shipped chains (marked *) encode and decode at >= {TARGET_GBPS:.0f} GB/s per core (CPU time). "
        f"Met by: {', '.join(f'`{t}`' for t in met) or 'none'}. "
        f"Missed by: {', '.join(f'`{t}`' for t in missed) or 'none'}. "
        f"In the best runs: met by {', '.join(f'`{t}`' for t in best) or 'none'}.",
        "",
    ]
    return lines, results


def entropy_section(update: dict[str, torch.Tensor], lap: torch.Tensor, repeats: int) -> list[str]:
    n_update = sum(v.numel() for v in update.values())
    lines = [
        "## Entropy stages on the shipped chains' payloads: zlib vs zstd",
        "",
        f"Real update: the digits CNN after one local epoch (digits, `TrainSettings(epochs=1)`, seed 0) minus "
        f"its initial weights, {len(update)} float tensors, {n_update} elements, encoded tensor by tensor. "
        "Laplace: a synthetic 1M-element Laplace(0, 1e-3) float32 update. GB/s per CPU-second as above "
        "(Laplace tensor).",
        "",
        "| chain | real update: bytes | ratio | vs zlib:6 | Laplace 1M: bytes | ratio | vs zlib:6 "
        "| encode GB/s | decode GB/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for base in ("topk:0.1|q4", "topk:0.05|int8", "int8"):
        ref: tuple[float, float] | None = None
        for ent in ENTROPY:
            text = f"{base}|{ent}"
            if not available(text):
                continue
            real = bench_state(text, update, 1)
            syn = bench_tensor(text, lap, repeats)
            ref = ref or (real["bytes"], syn["bytes"])
            lines.append(
                f"| `{text}` | {int(real['bytes'])} | {real['ratio']:.2f} | {real['bytes'] / ref[0] - 1:+.1%} | "
                f"{int(syn['bytes'])} | {syn['ratio']:.2f} | {syn['bytes'] / ref[1] - 1:+.1%} | "
                f"{syn['enc_cpu']:.2f} | {syn['dec_cpu']:.2f} |"
            )
            print(lines[-1], flush=True)
    return [*lines, ""]


def state_section(state: dict[str, torch.Tensor], repeats: int) -> list[str]:
    n_state = sum(v.numel() for v in state.values())
    lines = [
        f"## Default CNN state ({len(state)} tensors, {n_state} elements)",
        "",
        'Model: `build_model(ModelSpec("cnn", input_shape=(1, 8, 8), num_classes=10))`. `message bytes` is '
        "`message_nbytes` of a Flower Message carrying the whole state (`encode_state`, header included). "
        "Small tensors are dominated by per-tensor overhead (proto header, validation). GB/s per CPU-second.",
        "",
        "| chain | ratio | wire bytes | message bytes | max err | mean err | encode GB/s | decode GB/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for text in filter(available, CHAINS):
        r = bench_state(text, state, repeats)
        lines.append(
            f"| `{text}` | {r['ratio']:.2f} | {int(r['bytes'])} | {message_bytes(text, state)} | "
            f"{r['max_err']:.3g} | {r['mean_err']:.3g} | {r['enc_cpu']:.2f} | {r['dec_cpu']:.2f} |"
        )
        print(lines[-1], flush=True)
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", type=Path, default=ROOT / "simulations" / "results" / "codecs.md")
    parser.add_argument("--json", type=Path, default=None, help="also save the 1M-tensor figures here")
    parser.add_argument("--baseline", type=Path, default=None, help="a --json file to show as 'before'")
    parser.add_argument("--note", default="", help="what this run measures (stored in the --json file)")
    ns = parser.parse_args(argv)
    check_shipped()
    torch.set_num_threads(1)
    base = json.loads(ns.baseline.read_text()) if ns.baseline else None
    base_meta = base.pop("_meta", {}) if base is not None else {}
    load0 = os.getloadavg()
    torch.manual_seed(0)
    x = torch.randn(1000, 1000)
    lap = torch.distributions.Laplace(0.0, 1e-3).sample((1_000_000,))
    body, results = tensor_section(x, ns, base)
    body += entropy_section(digits_update(), lap, ns.repeats)
    body += state_section(cnn_state(), ns.repeats)
    load1 = os.getloadavg()
    command = "OMP_NUM_THREADS=1 python simulations/benchmarks/bench_codecs.py " + " ".join(argv or sys.argv[1:])
    head = [
        "# Codec benchmark (host measurements)",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"Measured on this host on {datetime.date.today().isoformat()}: {host()}; one thread "
        f"(`torch.set_num_threads(1)`, `OMP_NUM_THREADS=1`); python {platform.python_version()}, "
        f"torch {torch.__version__}, numpy {np.__version__}. Load average (1, 5, 15 min) "
        f"{load0[0]:.2f}, {load0[1]:.2f}, {load0[2]:.2f} at the start and "
        f"{load1[0]:.2f}, {load1[1]:.2f}, {load1[2]:.2f} at the end (other processes share the host). "
        f"Throughput in GB/s of float32 input (GB = 10^9 bytes), median of {ns.repeats} runs after a warm-up, "
        "per CPU-second of the measuring thread unless marked (wall). "
        "Ratio = original bytes / bytes on the wire (serialized CompressedTensor, header included). "
        "Errors are absolute, over all elements.",
        "",
    ]
    if base is not None:
        head += [
            f"'before' columns (GB/s per CPU-second, as above): `{ns.baseline}`, written by this script with "
            f"`--json`: {base_meta.get('note', 'an earlier run')}; load average at its start "
            f"{base_meta.get('load', 'not recorded')}.",
            "",
        ]
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text("\n".join(head + body))
    if ns.json:
        meta = {"note": ns.note, "date": datetime.date.today().isoformat(), "load": f"{load0[0]:.2f}"}
        ns.json.write_text(json.dumps({"_meta": meta, **results}, indent=1, sort_keys=True))
    print(f"wrote {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
