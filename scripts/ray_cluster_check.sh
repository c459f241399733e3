#!/usr/bin/env bash
# fedshrink on Flower's simulation engine over a two-node Ray cluster, both nodes on 127.0.0.1:
# a head and a worker with one CPU each, a 2-round run with 4 virtual clients joined to it through
# --ray-address, then which drivers and actors the cluster saw, then `ray stop`.
#   PATH=.venv/bin:$PATH bash scripts/ray_cluster_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 FLWR_TELEMETRY_ENABLED=0
TMP=$(mktemp -d /tmp/fedshrink-ray-XXXXXX)
PORT=$(python -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
trap 'ray stop >/dev/null 2>&1 || true' EXIT

ray start --head --port="$PORT" --node-ip-address=127.0.0.1 --num-cpus=1 --include-dashboard=false \
    --temp-dir="$TMP/ray" --disable-usage-stats >/dev/null
ray start --address="127.0.0.1:$PORT" --node-ip-address=127.0.0.1 --num-cpus=1 --disable-usage-stats >/dev/null

fedshrink run --engine flower --ray-address "127.0.0.1:$PORT" --num-clients 4 --cpus-per-client 1 \
    --run-config "num-server-rounds=2 local-epochs=1 distill=false output-dir='$TMP/runs' run-name='ray'" \
    | tail -1

python - "$PORT" <<'PY'
import os, sys
import ray
from ray._private import state

ray.init(address=f"127.0.0.1:{sys.argv[1]}", logging_level="ERROR")
drivers = [j["DriverPid"] for j in state.jobs() if j["DriverPid"] != os.getpid()]
per_node: dict[str, int] = {}
for actor in state.actors().values():
    per_node[actor["Address"]["NodeID"]] = per_node.get(actor["Address"]["NodeID"], 0) + 1
alive = [n for n in ray.nodes() if n["Alive"]]
print(f"Ray nodes alive: {len(alive)}; drivers that joined: {len(drivers)}; actors per node: {sorted(per_node.values())}")
assert len(alive) == 2 and drivers and len(per_node) == 2, "the simulation did not use both Ray nodes"
PY
