"""Benchmark: what metering costs, as a percentage of a client's round time.

Usage: ``python simulations/benchmarks/bench_overhead.py [--repeats 30] [--out simulations/results/overhead.md]``

One client round, as the ClientApp does it: load the received ArrayRecord into
the default CNN (digits, width 1, layer norm), train one local epoch on
partition 0 of 10 (Dirichlet 0.5, batch 16, SGD momentum 0.9) and build the
reply Message. The *metered* round does the same inside a
:class:`~fedshrink.resources.ResourceMeter` (default settings: RSS sampler
thread every 10 ms, VmHWM reset, energy probe) and adds everything the
metering needs: ``message_size`` of the received message, ``count_parameters``,
``macs_per_sample`` (a hooked forward pass, cached per architecture as the
ClientApp would), the record, and ``reply_with_record`` (sizes the reply until
its own size settles; two or three ``message_to_proto`` calls).

Plain and metered rounds alternate (pairs, order swapped every pair) after two
warm-up pairs; every round starts from the same weights and the same seed.
Overhead = median over pairs of (metered - plain) / plain, and also the ratio
of the two medians. torch runs on one thread (``torch.set_num_threads(1)``)
so that the two cores of a small machine do not add noise of their own.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fedshrink.config import RunConfig  # noqa: E402
from fedshrink.data import client_data  # noqa: E402
from fedshrink.models import ModelSpec, build_model, count_parameters  # noqa: E402
from fedshrink.resources import (  # noqa: E402
    ENERGY_METHODS,
    ResourceMeter,
    macs_per_sample,
    message_size,
    reply_with_record,
)
from fedshrink.runner.inprocess import server_identity  # noqa: E402
from fedshrink.training import TrainSettings, train_local  # noqa: E402


def setup() -> tuple[Message, ModelSpec, object, TrainSettings]:
    cfg = RunConfig()
    data = client_data(cfg.split_spec(), cfg.partition_scheme(), 0, 10)
    spec = ModelSpec("cnn", (1, 8, 8), 10)
    torch.manual_seed(0)
    model = build_model(spec)
    with server_identity(4242):
        msg = Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                  "config": ConfigRecord({"server-round": 1, "model-spec": spec.to_json()})}),
                      dst_node_id=1001, message_type="train", group_id="1")
    return msg, spec, data, TrainSettings(epochs=1, batch_size=16)


def round_plain(msg: Message, spec: ModelSpec, data: object, settings: TrainSettings) -> Message:
    model = build_model(spec)
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    res = train_local(model, data, settings, seed=7)  # type: ignore[arg-type]
    metrics = MetricRecord({"num-examples": res.num_examples, "train-loss": res.mean_loss})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


def round_metered(msg: Message, spec: ModelSpec, data: object, settings: TrainSettings) -> Message:
    meter = ResourceMeter()
    with meter:
        model = build_model(spec)
        model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
        res = train_local(model, data, settings, seed=7)  # type: ignore[arg-type]
    record = meter.record(bytes_received=message_size(msg), parameters=count_parameters(model),
                          macs_per_sample=macs_per_sample(model, spec.input_shape),
                          samples=res.num_examples * settings.epochs)

    metrics = MetricRecord({"num-examples": res.num_examples, "train-loss": res.mean_loss})
    reply = Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)
    reply_with_record(reply, record)
    return reply


def timed(fn, *args) -> float:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=30, help="timed pairs (default 30)")
    ap.add_argument("--out", type=Path, default=ROOT / "simulations" / "results" / "overhead.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    msg, spec, data, settings = setup()
    a = (msg, spec, data, settings)
    for _ in range(2):  # warm-up
        round_plain(*a)
        round_metered(*a)
    plain, metered, ratios = [], [], []
    for i in range(args.repeats):
        if i % 2 == 0:
            p, m = timed(round_plain, *a), timed(round_metered, *a)
        else:
            m, p = timed(round_metered, *a), timed(round_plain, *a)
        plain.append(p)
        metered.append(m)
        ratios.append((m - p) / p)
    # the fixed cost of the meter itself around an empty block
    empty = []
    for _ in range(50):
        t0 = time.perf_counter()
        with ResourceMeter():
            pass
        empty.append(time.perf_counter() - t0)
    sampler_p, sampler_m = [], []
    for i in range(args.repeats):
        def forced() -> None:
            with ResourceMeter(sample=True):
                round_plain(*a)
        if i % 2 == 0:
            p, m = timed(round_plain, *a), timed(forced)
        else:
            m, p = timed(forced), timed(round_plain, *a)
        sampler_p.append(p)
        sampler_m.append((m - p) / p)
    reading = ResourceMeter()
    with reading:
        round_plain(*a)
    med_p, med_m = statistics.median(plain), statistics.median(metered)
    pair = statistics.median(ratios)
    q = statistics.quantiles(ratios, n=4)
    verdict = "meets" if pair < 0.05 else "MISSES"
    lines = [
        "# Metering overhead",
        "",
        f"Generated by `python simulations/benchmarks/bench_overhead.py --repeats {args.repeats}` on "
        f"{datetime.date.today().isoformat()}, {platform.machine()} / Python {platform.python_version()} / "
        f"torch {torch.__version__}, torch threads = 1. "
        f"RSS peak method on this machine: `{reading.reading.peak_method if reading.reading else '?'}`, "
        f"energy method: `{ENERGY_METHODS[reading.reading.energy_method] if reading.reading else '?'}`.",
        "",
        "One client round = load the received weights into the default CNN (digits 8x8, width 1), train one "
        f"local epoch on partition 0 of 10 ({len(data)} samples, batch 16), build the reply. "  # type: ignore[arg-type]
        "Metered = the same inside `ResourceMeter()` (default settings: VmHWM reset, the 10 ms RSS sampler "
        "only where the reset is refused, energy probe) plus "
        "`message_size` of the received message, `macs_per_sample`, the record and `reply_with_record` "
        "(exact reply size).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| plain round, median | {med_p * 1e3:.1f} ms |",
        f"| metered round, median | {med_m * 1e3:.1f} ms |",
        f"| overhead, median of per-pair (metered - plain) / plain | **{pair * 100:+.2f} %** "
        f"(quartiles {q[0] * 100:+.2f} % .. {q[2] * 100:+.2f} %) |",
        f"| overhead, ratio of medians | {(med_m / med_p - 1) * 100:+.2f} % |",
        f"| meter around an empty block, median | {statistics.median(empty) * 1e3:.2f} ms |",
        f"| with the 10 ms RSS sampler forced on (`sample=True`, what a machine without the VmHWM reset "
        f"pays), median per-pair overhead of the meter alone | {statistics.median(sampler_m) * 100:+.2f} % |",
        f"| pairs | {args.repeats} (after 2 warm-up pairs, order alternated) |",
        "",
        f"Target: under 5 % of round time; this run **{verdict}** it.",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
