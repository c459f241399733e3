"""Benchmark the data layer: generation speed, the glyphs set's difficulty, the fleet's memory and speed.

Usage::

    python simulations/benchmarks/bench_data.py centralised [--dataset glyphs] [--epochs 3] [--seed 0]
    python simulations/benchmarks/bench_data.py generate
    python simulations/benchmarks/bench_data.py fleet [--writers 100000] [--clients 200]

``centralised``: the default model (``cnn`` x1.0, static BatchNorm, as
``build_model(ModelSpec('cnn', shape, classes))``) trained on the whole
client pool of ``make_splits(SplitSpec(dataset))`` (train split, seed 42)
with fedshrink's default local-training settings (SGD lr 0.01, momentum 0.9,
batch 16) for ``--epochs`` epochs, then evaluated on the test split after
freezing BatchNorm statistics on 512 proxy images (as the server does).
Prints the test accuracy after each epoch.

``generate``: host seconds to generate the glyphs pool (20,000 images) and test split.

``fleet``: host figures for the generated fleet: peak traced Python memory
(``tracemalloc``) while building the spec and loading ``--clients`` writers'
data from a fleet of ``--writers`` (and of 1,000), and the median host wall
and process CPU time to generate one writer's data (50 images); the CPU time
is the steadier figure on a shared machine.

Every figure is measured on the host that runs it; each command writes its
section of ``simulations/results/data.md`` with the command, replacing that
command's previous section (sections under other headings are kept).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fedshrink.data import SplitSpec, make_splits  # noqa: E402
from fedshrink.models import ModelSpec, build_model, freeze_batch_stats  # noqa: E402
from fedshrink.training import TrainSettings, evaluate, train_local  # noqa: E402

RESULTS = ROOT / "simulations" / "results" / "data.md"


def host() -> str:
    return f"{platform.machine()} {platform.processor() or platform.system()}, {torch.get_num_threads()} torch threads"


def centralised(dataset: str, epochs: int, seed: int, threads: int) -> list[str]:
    torch.set_num_threads(threads)
    splits = make_splits(SplitSpec(dataset=dataset))
    spec = ModelSpec("cnn", splits.input_shape, splits.num_classes)
    torch.manual_seed(seed)
    model = build_model(spec)
    settings = TrainSettings(epochs=1)
    proxy = torch.from_numpy(splits.proxy.x[:512])
    lines = [f"- `{dataset}`: {len(splits.train)} train, {len(splits.test)} test images {splits.input_shape}; "
             f"cnn x1.0, default local settings (SGD lr 0.01, momentum 0.9, batch 16), seed {seed}"]
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        res = train_local(model, splits.train, settings, seed=seed * 1000 + epoch)
        acc = evaluate(freeze_batch_stats(model, proxy), splits.test).accuracy
        secs = time.perf_counter() - t0
        line = f"  - epoch {epoch}: test accuracy {acc:.4f} (train loss {res.mean_loss:.3f}; host {secs:.0f} s)"
        print(line, flush=True)
        lines.append(line)
    return lines


def generate() -> list[str]:
    from fedshrink.data import glyphs

    out = []
    for n, seed in ((glyphs.POOL_SIZE, glyphs.POOL_SEED), (glyphs.TEST_SIZE, glyphs.TEST_SEED)):
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            glyphs.generate(n, seed)
            times.append(time.perf_counter() - t0)
        out.append(f"- glyphs: {n} images in {min(times):.2f} s (host, best of 3)")
        print(out[-1], flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("centralised")
    c.add_argument("--dataset", default="glyphs")
    c.add_argument("--epochs", type=int, default=3)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, default=2)
    sub.add_parser("generate")
    f = sub.add_parser("fleet")
    f.add_argument("--writers", type=int, default=100_000)
    f.add_argument("--clients", type=int, default=200)
    args = p.parse_args(argv)
    if args.cmd == "centralised":
        lines = centralised(args.dataset, args.epochs, args.seed, args.threads)
    elif args.cmd == "generate":
        lines = generate()
    else:
        lines = fleet(args.writers, args.clients)
    cmd = "python simulations/benchmarks/bench_data.py " + " ".join(sys.argv[1:] if argv is None else argv)
    stamp = datetime.date.today().isoformat()
    section = f"## {args.cmd} ({stamp}; host: {host()})\n\n`{cmd}`\n\n" + "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(put_section(RESULTS.read_text() if RESULTS.exists() else "", args.cmd, section))
    return 0


def put_section(text: str, cmd: str, section: str) -> str:
    """``text`` with its last ``## cmd (...)`` section replaced by ``section``, or ``section`` appended."""
    heads = [m for m in re.finditer(r"^## (.*)$", text, flags=re.M)]
    mine = [i for i, m in enumerate(heads) if m.group(1).startswith(f"{cmd} (")]
    if not mine:
        return text.rstrip("\n") + "\n\n" + section
    i = mine[-1]
    end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
    rest = text[end:]
    return text[:heads[i].start()] + section + ("\n" + rest if rest else "")


def fleet(writers: int, clients: int) -> list[str]:
    import tracemalloc

    from fedshrink.data import FleetSpec, PartitionScheme, SplitSpec, client_data
    from fedshrink.data.fleet import load_fleet

    scheme = PartitionScheme("natural")
    lines = []
    for population in sorted({1_000, writers}):
        spec = SplitSpec(dataset="writers", fleet=FleetSpec(population, (50, 50)))
        load_fleet.cache_clear()
        tracemalloc.start()
        ids = np.linspace(0, population - 1, clients).astype(int)
        held = sum(client_data(spec, scheme, int(i), population).x.nbytes for i in ids)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        times, cpu = [], []
        for i in ids:
            t0, c0 = time.perf_counter(), time.process_time()
            client_data(spec, scheme, int(i), population)
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        lines.append(f"- {population:,} writers, {clients} clients of 50 images (28x28) loaded one after another: "
                     f"peak traced memory {peak / 2**20:.1f} MiB (host; each client's arrays "
                     f"{held / clients / 1024:.0f} KiB); one client's data in "
                     f"{1000 * statistics.median(times):.1f} ms median, "
                     f"{1000 * max(times):.1f} ms max (host wall time); "
                     f"{1000 * statistics.median(cpu):.1f} ms median process CPU time (host)")
        print(lines[-1], flush=True)
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
