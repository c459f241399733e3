"""Benchmark: the wall time of a deployment round and where it goes.

Usage: ``python simulations/benchmarks/bench_deploy.py [--rounds 3] [--out simulations/results/deploy.md]``

Starts the topology of ``fedshrink deploy local`` on 127.0.0.1 (a SuperLink
with TLS and SuperNode authentication, 3 SuperNodes with profiles iot, phone,
laptop over digits), times each start-up step, runs the app for ``--rounds``
rounds (one local epoch, no distillation, fragments on), stops every process
by PID, and splits each round's wall time (``seconds`` in metrics.jsonl,
measured by the ServerApp) into:

* ClientApp work: the slowest client's metered span that round (decode,
  build the model, train, encode; ``host-wall-s`` in clients.csv);
* ClientApp process overhead: Flower starts a fresh ``flwr-clientapp``
  process per message, which imports torch, Flower and fedshrink again and
  rebuilds the node's data split. Measured as the mean ClientApp lifetime
  (``compute-time.clientapp-seconds`` of ``flwr ls`` over the number of
  ClientApp messages) minus the mean metered work. A cold
  ``import flwr.clientapp, torch, fedshrink.client_app`` is timed as a
  cross-check;
* server: aggregation (``aggregation-s``);
* polling, transport and evaluation: the rest. SuperNodes and the ServerApp
  both poll the SuperLink every 3 s while they wait, requests go over TLS,
  and the server evaluates each width in use.

Round 1 also carries the profile query (one more ClientApp process per node).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fedshrink.deploy import DEFAULT_PROFILES, LocalDeployment, Topology, make_certificates, plan_nodes  # noqa: E402
from fedshrink.runner.flower import flower_env, free_port  # noqa: E402


def import_seconds(repeats: int = 3) -> float:
    """Median wall time of a cold interpreter importing what a ClientApp process imports."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import flwr.clientapp, torch, fedshrink.client_app"], check=True,
                       env=flower_env(Path(tempfile.gettempdir())))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=ROOT / "simulations" / "results" / "deploy.md")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="fedshrink-bench-deploy-"))
    certs = make_certificates(work / "certs", ["127.0.0.1"], 3)
    topo = Topology(tuple(plan_nodes(3, DEFAULT_PROFILES)), certs=certs, port=free_port())
    dep = LocalDeployment(topo, work / "deploy")
    steps: dict[str, float] = {}
    overrides = {"num-server-rounds": args.rounds, "local-epochs": 1, "distill": False, "profile-mix": "laptop:1.0",
                 "output-dir": str(work / "runs"), "run-name": "bench", "quiet": True}
    try:
        t0 = time.perf_counter()
        dep.prepare()
        dep.start_superlink()
        steps["SuperLink healthy"] = time.perf_counter() - t0
        t = time.perf_counter()
        dep.register_all()
        steps["3 node keys registered (`flwr supernode register`, concurrently)"] = time.perf_counter() - t
        t = time.perf_counter()
        for i in range(3):
            dep._spawn(f"supernode-{i}", topo.supernode_command(i, clientappio_port=free_port()))
        dep.wait_online(3)
        steps["3 SuperNodes online"] = time.perf_counter() - t
        t = time.perf_counter()
        run = dep.run(ROOT, overrides, timeout=1800)
        steps[f"`flwr run` ({args.rounds} rounds) until `flwr ls` reports it finished"] = time.perf_counter() - t
    finally:
        t = time.perf_counter()
        dep.stop()
        steps["stop every process by PID"] = time.perf_counter() - t
    if run.status != "finished:completed":
        print(f"run ended {run.status}", file=sys.stderr)
        return 1
    run_dir = work / "runs" / "bench"
    rounds = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    with open(run_dir / "clients.csv") as fh:
        clients = list(csv.DictReader(fh))
    load = os.getloadavg()[1]
    start = import_seconds()

    lines = [
        "# Deployment round: wall time and where it goes",
        "",
        f"{datetime.date.today()}, {platform.machine()}, {platform.python_version()}, "
        "3 SuperNodes + SuperLink on 127.0.0.1 with TLS and SuperNode authentication "
        "(profiles iot / phone / laptop, digits, default CNN, one local epoch). "
        f"{os.cpu_count()} cores; 5-minute load average at the end of the run {load:.1f} "
        "(other jobs shared the machine when this exceeds the core count, and every figure grows with it).",
        "",
        "Command: `python simulations/benchmarks/bench_deploy.py"
        + (f" --rounds {args.rounds}" if args.rounds != 3 else "") + "`",
        "",
        "## Start-up and shutdown",
        "",
        "| step | seconds |",
        "|---|---:|",
        *[f"| {k} | {v:.1f} |" for k, v in steps.items()],
        "",
        f"`flwr ls`: status {run.status}, ServerApp {run.details['compute-time']['serverapp-seconds']:.1f} s, "
        f"ClientApps {run.details['compute-time']['clientapp-seconds']:.1f} s of compute, "
        f"{run.details['network-traffic']['total-bytes']:,} bytes through the SuperLink.",
        "",
        "## Rounds",
        "",
        f"Cold `import flwr.clientapp, torch, fedshrink.client_app` in a fresh interpreter (median of 3): "
        f"{start:.1f} s.",
        "",
        "| round | wall s | ClientApp work s (slowest client) | ClientApp process overhead s | aggregation s "
        "| polling, transport, evaluation s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    messages = len(topo.nodes) * (args.rounds + 1)  # a train message per node and round, plus the profile query
    lifetime = float(run.details["compute-time"]["clientapp-seconds"]) / messages
    overhead = lifetime - sum(float(c["host-wall-s"]) for c in clients) / messages
    for r in rounds:
        n = int(r["round"])
        busy = max(float(c["host-wall-s"]) for c in clients if int(c["round"]) == n)
        proc = overhead * (2 if n == 1 else 1)  # round 1: the profile query runs one more ClientApp per node
        rest = float(r["seconds"]) - busy - proc - float(r["aggregation-s"])
        lines.append(f"| {n} | {r['seconds']:.1f} | {busy:.1f} | {proc:.1f} | {r['aggregation-s']:.2f} | "
                     f"{rest:.1f} |")
    lines += ["", f"Mean ClientApp process lifetime {lifetime:.1f} s over {messages} messages. Process start-up "
              "and polling are fixed costs of Flower's deployment runtime (a fresh ClientApp process per message, "
              "3 s poll intervals on both sides). Only the ClientApp work grows with the model and the data."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
