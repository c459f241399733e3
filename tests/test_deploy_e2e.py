"""End to end on a real deployment: a SuperLink, its Fleet gateway and 2 SuperNodes as processes on 127.0.0.1.

TLS with fedshrink's own CA, SuperNode authentication with registered node
keys, mixed device profiles from each node's node-config. The run's status is
read with ``flwr ls`` (a ServerApp that crashes at start is reported failed,
though ``flwr run`` exits 0); every process started is stopped by PID and no
port is left open. A SuperNode with an unregistered key is refused. The SuperLink,
whose Control API has no authentication, listens on loopback only (read from
its sockets, without sending anything anywhere but 127.0.0.1), and the Fleet
gateway the SuperNodes dial refuses the Control API.
"""

from __future__ import annotations

import csv
import ipaddress
import json
import ssl
import threading
from pathlib import Path

import httpx
import psutil
import pytest
from helpers import port_open

from fedshrink.deploy import DEFAULT_PROFILES, LocalDeployment, Topology, make_certificates, plan_nodes
from fedshrink.deploy.topology import Started
from fedshrink.runner.flower import FlowerRun, free_port, process_tree

pytestmark = pytest.mark.e2e
APP_DIR = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _listening(entry: Started) -> list[tuple[str, int]]:
    """(address, port) of every socket that ``entry``'s process tree listens on, read from the OS."""
    return [(c.laddr.ip, c.laddr.port) for p in process_tree(entry.pid, entry.create_time)
            for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]


def _check_control_api_is_loopback_only(dep: LocalDeployment) -> None:
    topo = dep.topology
    by_name = {s.name: s for s in dep.started}
    superlink, gateway = _listening(by_name["superlink"]), _listening(by_name["gateway"])
    assert (("127.0.0.1", topo.control_api_port) in superlink), superlink
    assert all(ipaddress.ip_address(ip).is_loopback for ip, _ in superlink), superlink  # not 0.0.0.0, not ::
    assert gateway == [("127.0.0.1", topo.port)]
    assert topo.certs is not None
    tls = ssl.create_default_context(cafile=str(topo.certs.ca_cert))
    with httpx.Client(verify=tls, timeout=10) as http:  # to 127.0.0.1 only
        refused = http.post(f"https://{topo.address}/v1/control/list-nodes", content=b"")
        assert refused.status_code == 404 and b"Fleet API" in refused.content  # the gateway, not the SuperLink
        assert http.get(f"https://{topo.address}/health").is_success  # what it does forward


def test_tls_authenticated_deployment(tmp_path: Path) -> None:
    # two SuperNodes, iot and phone (a third cost 33 s of machine CPU here: its SuperNode, SuperExec and two
    # ClientApp processes; the full-width path is tested on the other engines); node-2's key is never registered
    certs = make_certificates(tmp_path / "certs", ["127.0.0.1"], nodes=3)
    topo = Topology(tuple(plan_nodes(2, DEFAULT_PROFILES)), certs=certs, host="127.0.0.1", port=free_port())
    dep = LocalDeployment(topo, tmp_path / "deploy")  # the Control API on a free loopback port of its own
    pids: list[int] = []
    try:
        dep.start()
        pids = dep.pids()
        assert port_open(topo.port)
        _check_control_api_is_loopback_only(dep)
        online = {int(n["node-id"]) for n in dep.nodes() if n["status"] == "online"}
        assert online == set(dep.node_ids.values()) and len(online) == 2

        # a SuperNode with an unregistered key tries to join while the run goes on (in a thread, to save time)
        refused: dict[str, object] = {}
        probe = threading.Thread(target=lambda: refused.update(
            zip(("code", "log"), dep.try_node(certs.node_keys[2], timeout=120), strict=True)))
        probe.start()
        # a ServerApp that crashes at start, submitted while the real run goes on (in a thread too): `flwr run`
        # itself exits 0 here; only `flwr ls` tells the truth
        crashed_runs: list[FlowerRun] = []
        crasher = threading.Thread(target=lambda: crashed_runs.append(dep.run(
            APP_DIR, {"dataset": "mnist", "data-dir": str(tmp_path / "absent"),
                      "output-dir": str(tmp_path / "crashed")}, timeout=300)))
        crasher.start()
        out = tmp_path / "runs"
        # one round: each message starts a ClientApp process on its SuperNode (torch, fedshrink, the data: tens
        # of seconds a round on 2 loaded cores); several rounds run in tests/test_flwr_e2e.py. No final
        # fusion (tests/fragments/test_fusion.py has it): it would add seconds of server work and test nothing here
        run = dep.run(APP_DIR, {"num-server-rounds": 1, "local-epochs": 1, "distill": False, "checkpoint": False,
                                "report": False, "output-dir": str(out), "run-name": "deploy", "fusion-steps": 0,
                                "profile-mix": "laptop:1.0", "device-availability": False}, timeout=900)
        probe.join()
        crasher.join()
        assert {int(n["node-id"]) for n in dep.nodes() if n["status"] == "online"} == online
        pids = sorted(set(pids) | set(dep.pids()))
    finally:
        dep.stop()
    assert refused["code"] not in (0, None), str(refused["log"])[-2000:]
    assert "Exit Code: 305" in str(refused["log"])  # Flower's code for a SuperNode the SuperLink refused
    assert run.status == "finished:completed", run.output[-3000:]  # from `flwr ls`, not the exit code
    assert run.details["network-traffic"]["total-bytes"] > 0
    assert len(crashed_runs) == 1 and crashed_runs[0].status == "finished:failed", crashed_runs[:1]

    summary = json.loads((out / "deploy" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["rounds"] == 1 and summary["clients"] == 2
    rounds = [json.loads(x) for x in (out / "deploy" / "metrics.jsonl").read_text().splitlines()]
    assert [r["clients-good"] for r in rounds] == [2]
    assert set(rounds[-1]["accuracy-width"]) == {"0.25", "0.5"}  # iot and phone fragments besides the full model
    with open(out / "deploy" / "clients.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {(int(r["partition-id"]), r["profile"]) for r in rows} == {(0, "iot"), (1, "phone")}
    assert {int(r["node-id"]) for r in rows} == online  # only the registered nodes trained

    assert pids and not [p for p in pids if _alive(p)], "processes left running"
    assert not [p for p in dep.ports() if port_open(p)], "ports left open"
