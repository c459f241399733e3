"""``fedshrink deploy``: certificates, the commands of a deployment, and a local one to try it out.

* ``certs``: a CA, a server certificate for ``--hosts`` and ``--nodes`` SuperNode key pairs.
* ``plan``: print the ``flower-superlink`` / Fleet gateway / ``flwr supernode
  register`` / ``flower-supernode`` commands of a topology (run each on its machine).
* ``up``: start that topology on this machine (127.0.0.1), leave it running;
  ``run``: run the app on it with ``flwr run``; ``down``: stop it, by PID.
* ``local``: up, run, down in one go (``make deploy-local``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fedshrink.cli.common import overrides, prepare, run_config_argument
from fedshrink.deploy.topology import DEFAULT_PROFILES
from fedshrink.errors import ConfigError, FedShrinkError

APP_DIR = Path(__file__).resolve().parents[2]


def add_parser(sub: Any) -> None:
    dep = sub.add_parser("deploy", help="SuperLink + SuperNodes deployment (certificates, local topology)")
    dsub = dep.add_subparsers(dest="deploy_command", required=True)

    certs = dsub.add_parser("certs", help="make a CA, a server certificate and SuperNode key pairs")
    certs.add_argument("--hosts", nargs="+", required=True,
                       help="names and IP addresses the SuperLink is reached at (the certificate's SANs)")
    certs.add_argument("--nodes", type=int, required=True, help="SuperNode key pairs to make")
    certs.add_argument("--out", type=Path, required=True, help="output directory")
    certs.add_argument("--days", type=int, default=365, help="validity in days (default 365)")
    certs.add_argument("--shared-readable", action="store_true",
                       help="private keys readable by other users (for containers running as another user)")

    def topology_args(p: argparse.ArgumentParser, *, workdir: bool) -> None:
        p.add_argument("--nodes", type=int, default=3, help="SuperNodes (default 3)")
        p.add_argument("--profiles", default=",".join(DEFAULT_PROFILES),
                       help="device profiles given to the nodes in turn (default iot,phone,laptop)")
        p.add_argument("--dataset", default="digits", help="data set each node loads (node-config dataset)")
        p.add_argument("--data-dir", default="", help="where each node's copy of the data set lives (node-config)")
        p.add_argument("--host", default="127.0.0.1", help="the Fleet API's address as the nodes dial it")
        p.add_argument("--port", type=int, default=0, help="the Fleet API's port, the gateway's (default: 9092 "
                                                         "for plan, a free one locally)")
        p.add_argument("--control-port", type=int, default=0, help="the SuperLink's own port, with the Control "
                       "API (default: 9093 for plan, a free one locally)")
        p.add_argument("--expose-control-api", metavar="HOST", default="127.0.0.1",
                       help="bind the SuperLink, whose Control API (flwr run/ls, flwr supernode register) has no "
                            "authentication, to HOST instead of 127.0.0.1: only on an admin-only network")
        p.add_argument("--certs", type=Path, help="directory made by `fedshrink deploy certs`")
        p.add_argument("--insecure", action="store_true", help="no TLS and no node authentication (explicitly)")
        if workdir:
            p.add_argument("--workdir", type=Path, default=Path("deploy-local"),
                           help="logs, state and FLWR_HOME of the local deployment (default ./deploy-local)")

    plan = dsub.add_parser("plan", help="print the commands of a topology")
    topology_args(plan, workdir=False)
    up = dsub.add_parser("up", help="start a SuperLink and its SuperNodes on this machine and leave them running")
    topology_args(up, workdir=True)
    local = dsub.add_parser("local", help="start a local topology, run the app on it, stop it")
    topology_args(local, workdir=True)
    for p in (local, dsub.add_parser("run", help="run the app on the topology `deploy up` started")):
        run_config_argument(p)
        p.add_argument("--app-dir", type=Path, default=APP_DIR, help="the Flower app directory")
        if p is not local:
            p.add_argument("--workdir", type=Path, default=Path("deploy-local"))
    down = dsub.add_parser("down", help="stop the topology `deploy up` started, by PID")
    down.add_argument("--workdir", type=Path, default=Path("deploy-local"))
    dep.set_defaults(handler=cmd_deploy)


def _topology(args: argparse.Namespace, *, local: bool) -> Any:
    from fedshrink.deploy import (
        CertificateSet,
        LocalDeployment,
        Topology,
        make_certificates,
        parse_profiles,
        plan_nodes,
    )
    from fedshrink.deploy.topology import CONTROL_PORT, SUPERLINK_PORT
    from fedshrink.runner.flower import free_port

    nodes = plan_nodes(args.nodes, parse_profiles(args.profiles), dataset=args.dataset, data_dir=args.data_dir)
    if args.insecure and args.certs:
        raise ConfigError("--insecure", True, "absent when --certs is given")
    if local:
        LocalDeployment.check_free(args.workdir)  # before new certificates replace those in use
    certs = None
    if args.certs:
        certs = CertificateSet.load(args.certs)
    elif not args.insecure:
        if not local:
            raise ConfigError("--certs", None, "a directory made by `fedshrink deploy certs` (or --insecure)")
        certs = make_certificates(args.workdir / "certs", [args.host, "localhost"], args.nodes)
        print(f"made certificates and {args.nodes} node keys in {certs.root}")
    port = args.port or (free_port() if local else SUPERLINK_PORT)
    control_port = args.control_port or (free_port() if local else CONTROL_PORT)
    return Topology(tuple(nodes), certs=certs, host=args.host, port=port, insecure=args.insecure,
                    control_host=args.expose_control_api, control_port=control_port)


def _run(dep: Any, args: argparse.Namespace) -> int:
    from fedshrink.report import RunDirectory
    from fedshrink.runner.flower import FlowerRunError

    cfg, settings = prepare(overrides(args.run_config))
    run = dep.run(args.app_dir.resolve(), settings)
    if run.status != "finished:completed":
        raise FlowerRunError(f"run {run.run_id} ended with status {run.status!r} (flwr ls)")
    summary = RunDirectory(RunDirectory.resolve(cfg)).read_summary()
    print(f"fedshrink: run {run.run_id} {run.status}, accuracy {summary['accuracy']:.4f}, "
          f"run directory {summary['run-dir']}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from fedshrink.deploy import LocalDeployment, make_certificates, shell_commands

    c = args.deploy_command
    if c == "certs":
        s = make_certificates(args.out, args.hosts, args.nodes, days=args.days, shared_readable=args.shared_readable)
        print(f"wrote {s.ca_cert}, {s.server_cert} (hosts: {', '.join(s.hosts)}) and {len(s.node_keys)} "
              f"node key pairs in {s.root / 'nodes'}")
        return 0
    if c == "plan":
        print(shell_commands(_topology(args, local=False)))
        return 0
    if c in ("up", "local"):
        topo = _topology(args, local=True)
        if topo.host not in ("127.0.0.1", "localhost", "::1"):
            raise ConfigError("--host", topo.host, "127.0.0.1 or localhost for a local deployment")
        dep = LocalDeployment(topo, args.workdir, echo=True)
        dep.__enter__()
        ids = ", ".join(f"{i}:{nid}" for i, nid in dep.node_ids.items()) or "none (no node authentication)"
        print(f"Fleet API (gateway) on {topo.address}, SuperLink with the Control API on {topo.control_address}, "
              f"{len(topo.nodes)} SuperNodes online; registered node ids {ids}; logs and state in {dep.workdir}")
        if c == "up":
            print(json.dumps({"pids": dep.pids()}))
            return 0
        try:
            return _run(dep, args)
        finally:
            dep.stop()
            print("stopped every process of the local deployment")
    dep = LocalDeployment.attach(args.workdir)
    if c == "run":
        dep.echo = True
        return _run(dep, args)
    if c == "down":
        dep.stop()
        print(f"stopped the local deployment in {dep.workdir}")
        return 0
    raise FedShrinkError(f"unknown deploy command {c!r}")
