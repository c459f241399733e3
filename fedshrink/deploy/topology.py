"""A SuperLink, its Fleet gateway and N SuperNodes: their commands, and a local deployment that runs them.

:class:`Topology` holds what a deployment is made of (the Fleet address the
SuperNodes dial, the loopback address of the SuperLink's Control API, TLS
files, SuperNode authentication, one :class:`NodeSpec` per SuperNode) and
renders the exact ``flower-superlink`` / Fleet gateway / ``flower-supernode``
command lines and the ``flwr`` connection.

Flower 1.42's SuperLink serves its Fleet, Control and runtime APIs on one port,
and its Control API (``flwr run``, ``flwr ls``, ``flwr supernode register``) is
unauthenticated without Flower Enterprise's OIDC. So the SuperLink listens on
``control_host`` (127.0.0.1 unless explicitly exposed, with a
:class:`ControlApiExposedWarning`) and only the Fleet gateway
(:mod:`fedshrink.deploy.gateway`, which forwards ``/v1/fleet/*`` and nothing
else) listens where the devices reach it.

The same commands serve a real multi-machine deployment (run each on its own
machine) and :class:`LocalDeployment`, which starts the whole topology as
processes on 127.0.0.1 under an isolated ``FLWR_HOME``, registers the node keys
with ``flwr supernode register``, runs the app with ``flwr run APP
CONNECTION``, reads the run's status with ``flwr ls``, and stops every process
it started, by PID.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shlex
import ssl
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psutil

from fedshrink.data.sources import known_dataset, unknown_words
from fedshrink.deploy.certs import CertificateSet, check_host
from fedshrink.devices.profiles import PROFILES
from fedshrink.errors import ConfigError, FedShrinkError
from fedshrink.runner.flower import (
    FlowerRun,
    FlowerRunError,
    flower_env,
    flwr_cli,
    flwr_json,
    flwr_run_details,
    free_port,
    parse_run_id,
    process_tree,
    run_config_arg,
    staged_app,
    stop_processes,
    stream_command,
    toml_value,
)

CONNECTION = "fedshrink-deploy"
SUPERLINK_PORT = 9092  # the Fleet API port the SuperNodes dial: the Fleet gateway's (Flower's Fleet API default)
CONTROL_PORT = 9093  # the SuperLink's own port (Control, runtime and Fleet APIs), on loopback; Flower's Control default
ANY_INTERFACE = ("0.0.0.0", "::")
SUPERNODE_PORT = 9094  # a SuperNode's ClientAppIo port (local to its machine)
STATE_FILE = "deployment.json"
# the three-node topology of `fedshrink deploy local`, the e2e test and docker/compose.yaml
DEFAULT_PROFILES = ("iot", "phone", "laptop")
SUPERNODE_READY = "SuperNode ID:"  # what flower-supernode logs once the SuperLink accepted it


class DeploymentError(FedShrinkError):
    """A deployment process did not start, register or stop as expected."""


class ControlApiExposedWarning(UserWarning):
    """The SuperLink's unauthenticated Control API is asked to listen beyond loopback."""


@dataclass(frozen=True)
class NodeSpec:
    """One SuperNode's node config: its partition, device profile and where its data lives."""

    partition_id: int
    num_partitions: int
    profile: str = ""
    dataset: str = ""
    data_dir: str = ""

    def __post_init__(self) -> None:
        if self.num_partitions < 1:
            raise ConfigError("num-partitions", self.num_partitions, "an integer >= 1")
        if not 0 <= self.partition_id < self.num_partitions:
            raise ConfigError("partition-id", self.partition_id, f"an integer in [0, {self.num_partitions})")
        if self.profile and self.profile not in PROFILES:
            raise ConfigError("profile", self.profile, PROFILES.allowed())
        if self.dataset and not known_dataset(self.dataset, self.data_dir):
            raise ConfigError("dataset", self.dataset, unknown_words())

    def items(self) -> dict[str, int | str]:
        out: dict[str, int | str] = {"partition-id": self.partition_id, "num-partitions": self.num_partitions}
        for key, value in (("profile", self.profile), ("dataset", self.dataset), ("data-dir", self.data_dir)):
            if value:
                out[key] = value
        return out

    def node_config(self) -> str:
        """The ``--node-config`` value, e.g. ``partition-id=0 num-partitions=3 profile="iot"``."""
        return " ".join(f"{k}={toml_value(v)}" for k, v in self.items().items())


def plan_nodes(num_nodes: int, profiles: Sequence[str] = (), *, dataset: str = "digits",
               data_dir: str = "") -> list[NodeSpec]:
    """``num_nodes`` SuperNodes over as many partitions, with ``profiles`` assigned in turn."""
    if num_nodes < 1:
        raise ConfigError("nodes", num_nodes, "an integer >= 1")
    return [NodeSpec(i, num_nodes, profiles[i % len(profiles)] if profiles else "", dataset, data_dir)
            for i in range(num_nodes)]


def parse_profiles(text: str) -> list[str]:
    """``"iot,phone,laptop"`` -> ``["iot", "phone", "laptop"]`` (each a known profile)."""
    names = [p for p in text.replace(",", " ").split() if p]
    for name in names:
        if name not in PROFILES:
            raise ConfigError("profiles", name, "comma-separated names of " + ", ".join(sorted(PROFILES)))
    return names


@dataclass(frozen=True)
class Topology:
    """A SuperLink at ``host:port`` and its SuperNodes, secured by ``certs`` unless ``insecure``."""

    nodes: tuple[NodeSpec, ...]
    certs: CertificateSet | None = None
    host: str = "127.0.0.1"
    port: int = SUPERLINK_PORT
    insecure: bool = False
    node_auth: bool = True
    control_host: str = "127.0.0.1"  # where the SuperLink (Control API) listens; beyond loopback only on purpose
    control_port: int | None = None  # None: CONTROL_PORT (a LocalDeployment takes a free port)

    def __post_init__(self) -> None:
        check_host(self.host)
        check_host(self.control_host)
        if not self.nodes:
            raise ConfigError("nodes", 0, "at least one SuperNode")
        if self.insecure and self.certs is not None:
            raise ConfigError("insecure", True, "false when certificates are given (TLS or insecure, not both)")
        if not self.insecure and self.certs is None:
            raise ConfigError("certificates", None,
                              "a directory made by `fedshrink deploy certs` (or insecure mode, explicitly)")
        if self.certs is not None and self.host not in self.certs.hosts:
            raise ConfigError("host", self.host, f"a host the server certificate names: {list(self.certs.hosts)}")
        if self.node_auth and self.certs is not None and len(self.certs.node_keys) < len(self.nodes):
            raise ConfigError("nodes", len(self.nodes),
                              f"at most {len(self.certs.node_keys)} (node keys in {self.certs.root})")
        if not 1 <= self.port <= 65535:
            raise ConfigError("port", self.port, "an integer in [1, 65535]")
        self._check_control()
        for i, n in enumerate(self.nodes):
            if n.num_partitions != len(self.nodes) or n.partition_id != i:
                raise ConfigError("node-config", n.node_config(),
                                  f"partition-id={i} num-partitions={len(self.nodes)} (node {i} of {len(self.nodes)})")

    def _check_control(self) -> None:
        if not 1 <= self.control_api_port <= 65535 or self.control_api_port == self.port:
            raise ConfigError("control-port", self.control_api_port,
                              f"an integer in [1, 65535] other than the Fleet port {self.port}")
        if self.certs is not None and self.control_dial_host not in self.certs.hosts:
            raise ConfigError("control-host", self.control_dial_host,
                              f"a host the server certificate names: {list(self.certs.hosts)} (certificates made "
                              "by `fedshrink deploy certs` always name localhost and 127.0.0.1)")
        if self.control_exposed:
            warnings.warn(f"the SuperLink's Control API will listen on {self.control_host}:{self.control_api_port}: "
                          "it has no authentication without Flower Enterprise's OIDC, so anyone who reaches it can "
                          "register SuperNode keys and start or stop runs; keep it on 127.0.0.1 or an admin-only "
                          "network (docs/deployment.md)", ControlApiExposedWarning, stacklevel=4)

    @property
    def control_api_port(self) -> int:
        return CONTROL_PORT if self.control_port is None else self.control_port

    @property
    def control_exposed(self) -> bool:
        """The Control API listens beyond loopback."""
        if self.control_host == "localhost":
            return False
        try:
            return not ipaddress.ip_address(self.control_host).is_loopback
        except ValueError:  # a DNS name: resolved by the SuperLink, maybe to a public address
            return True

    @property
    def control_dial_host(self) -> str:
        """The host ``flwr`` and the Fleet gateway dial for the Control API (loopback for a bind-all address)."""
        return "127.0.0.1" if self.control_host in ANY_INTERFACE else self.control_host

    @property
    def control_address(self) -> str:
        host = self.control_dial_host
        return f"{f'[{host}]' if ':' in host else host}:{self.control_api_port}"

    @property
    def auth(self) -> bool:
        """SuperNode authentication is on (it needs TLS)."""
        return self.node_auth and not self.insecure

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def node_key(self, index: int) -> Path:
        assert self.certs is not None
        return self.certs.node_keys[index]

    def superlink_command(self, database: Path | str, log_file: Path | str | None = None) -> list[str]:
        """``flower-superlink`` for this topology, listening on ``control_host:control_api_port`` only.

        Flower 1.42 serves the Fleet, Control and runtime APIs on this one port (``--host``/``--port``; its
        ``--control-api-address`` and ``--fleet-api-address`` are deprecated and ignored), so the devices reach
        the Fleet API through :meth:`gateway_command` instead.
        """
        cmd = [flwr_cli("flower-superlink")]
        if self.insecure:
            cmd.append("--insecure")
        else:
            assert self.certs is not None
            cmd += ["--ssl-ca-certfile", str(self.certs.ca_cert), "--ssl-certfile", str(self.certs.server_cert),
                    "--ssl-keyfile", str(self.certs.server_key)]
        if self.auth:
            cmd.append("--enable-supernode-auth")
        cmd += ["--disable-runtime-dependency-installation", "--isolation", "subprocess",
                "--host", self.control_host, "--port", str(self.control_api_port), "--database", str(database)]
        if log_file is not None:
            cmd += ["--log-file", str(log_file)]
        return cmd

    def gateway_command(self, *, listen: str | None = None) -> list[str]:
        """The Fleet gateway: on ``listen`` (default ``host``) at ``port``, forwarding the Fleet API only."""
        bind = listen or self.host
        cmd = [sys.executable, "-m", "fedshrink.deploy.gateway",
               "--listen", f"{f'[{bind}]' if ':' in bind else bind}:{self.port}", "--upstream", self.control_address]
        if self.insecure:
            return [*cmd, "--insecure"]
        assert self.certs is not None
        return [*cmd, "--ssl-certfile", str(self.certs.server_cert), "--ssl-keyfile", str(self.certs.server_key),
                "--ssl-ca-certfile", str(self.certs.ca_cert)]

    def supernode_command(self, index: int, *, clientappio_port: int = SUPERNODE_PORT,
                          private_key: Path | None = None) -> list[str]:
        """``flower-supernode`` for node ``index`` (its own key unless ``private_key`` is given)."""
        cmd = [flwr_cli("flower-supernode"), "--superlink", self.address]
        if self.insecure:
            cmd.append("--insecure")
        else:
            assert self.certs is not None
            cmd += ["--root-certificates", str(self.certs.ca_cert)]
        if self.auth:
            cmd += ["--auth-supernode-private-key", str(private_key or self.node_key(index))]
        cmd += ["--node-config", self.nodes[index].node_config(), "--isolation", "subprocess",
                "--host", "127.0.0.1", "--port", str(clientappio_port)]
        return cmd

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": [vars(n) for n in self.nodes], "certs": str(self.certs.root) if self.certs else None,
                "host": self.host, "port": self.port, "insecure": self.insecure, "node_auth": self.node_auth,
                "control_host": self.control_host, "control_port": self.control_port}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Topology:
        certs = CertificateSet.load(Path(d["certs"])) if d.get("certs") else None
        control_port = d.get("control_port")
        return cls(tuple(NodeSpec(**n) for n in d["nodes"]), certs=certs, host=str(d["host"]), port=int(d["port"]),
                   insecure=bool(d["insecure"]), node_auth=bool(d["node_auth"]),
                   control_host=str(d.get("control_host", "127.0.0.1")),
                   control_port=None if control_port is None else int(control_port))

    def connection_toml(self, name: str = CONNECTION) -> str:
        """``$FLWR_HOME/config.toml`` with one connection, the default, to this SuperLink's Control API."""
        lines = ["[superlink]", f"default = {json.dumps(name)}", "", f"[superlink.{name}]",
                 f"address = {json.dumps(self.control_address)}"]
        if self.insecure:
            lines.append("insecure = true")
        else:
            assert self.certs is not None
            lines.append(f"root-certificates = {json.dumps(str(self.certs.ca_cert.resolve()))}")
        return "\n".join(lines) + "\n"


@dataclass
class Started:
    """A process this deployment started: enough to find it again (PID and start time) from another process."""

    name: str
    pid: int
    create_time: float
    log: str
    port: int

    def alive(self) -> bool:
        return bool(process_tree(self.pid, self.create_time))


@dataclass
class LocalDeployment:
    """The whole topology as processes on this machine, under ``workdir`` (logs, state, ``FLWR_HOME``)."""

    topology: Topology
    workdir: Path
    startup_timeout: float = 60.0
    echo: bool = False
    started: list[Started] = field(default_factory=list)
    node_ids: dict[int, int] = field(default_factory=dict)
    _popen: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.topology.control_port is None:  # not Flower's fixed default: one test machine runs many
            self.topology = replace(self.topology, control_port=free_port())
        self.workdir = Path(self.workdir).resolve()
        self.flwr_home = self.workdir / "flwr-home"
        self.env = flower_env(self.flwr_home)

    # -- lifecycle -------------------------------------------------------------------
    def __enter__(self) -> LocalDeployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """SuperLink and Fleet gateway, node registration, SuperNodes; returns once every SuperNode is online."""
        self.prepare()
        self.start_superlink()
        if self.topology.auth:
            self.register_all()
        for i in range(len(self.topology.nodes)):
            self._spawn(f"supernode-{i}", self.topology.supernode_command(i, clientappio_port=free_port()))
        self.wait_online(len(self.topology.nodes))
        self.save()

    @staticmethod
    def check_free(workdir: Path) -> None:
        """:class:`ConfigError` if a deployment started in ``workdir`` still runs; forget a dead one."""
        state = Path(workdir) / STATE_FILE
        if state.is_file():
            running = [s for s in LocalDeployment.attach(workdir).started if s.alive()]
            if running:
                raise ConfigError("workdir", str(workdir), "a directory without a running deployment "
                                  f"(PIDs {[s.pid for s in running]}; `fedshrink deploy down` stops them)")
            state.unlink()

    def prepare(self) -> None:
        """Fresh state under ``workdir`` and the ``flwr`` connection; refuses a workdir still in use."""
        self.check_free(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "state.db").unlink(missing_ok=True)  # registrations of an earlier deployment
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(self.topology.connection_toml())

    def start_superlink(self) -> None:
        """The SuperLink (on ``control_address``) and its Fleet gateway (on ``address``), started together;
        returns once the SuperLink answers ``/health`` through the gateway."""
        t = self.topology
        procs = {"flower-superlink": self._spawn("superlink", t.superlink_command(self.workdir / "state.db"),
                                                 port=t.control_api_port),
                 "the Fleet gateway": self._spawn("gateway", t.gateway_command(), port=t.port)}
        deadline = time.monotonic() + self.startup_timeout
        while not self._healthy():
            for name, proc in procs.items():
                if proc.poll() is not None:
                    log = "superlink.log" if name == "flower-superlink" else "gateway.log"
                    raise DeploymentError(f"{name} exited with code {proc.returncode}; see {self.workdir / log}")
            if time.monotonic() > deadline:
                raise DeploymentError(f"SuperLink not healthy through the Fleet gateway after "
                                      f"{self.startup_timeout:.0f}s")
            time.sleep(0.2)

    def _healthy(self) -> bool:
        import httpx

        t = self.topology
        scheme = "http" if t.insecure else "https"
        verify: bool | ssl.SSLContext = True
        if t.certs is not None:
            verify = ssl.create_default_context(cafile=str(t.certs.ca_cert))
        try:  # through the gateway: both processes are up
            return httpx.get(f"{scheme}://{t.address}/health", timeout=0.5, verify=verify).is_success
        except httpx.HTTPError:
            return False

    def _spawn(self, name: str, cmd: list[str], *, port: int | None = None) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        with open(log, "ab") as fh:
            proc = subprocess.Popen(cmd, env=self.env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=self.workdir)
        if port is None:
            port = int(cmd[cmd.index("--port") + 1])
        self.started.append(Started(name, proc.pid, psutil.Process(proc.pid).create_time(), str(log), port))
        self._popen[proc.pid] = proc
        return proc

    def register_all(self) -> None:
        """Register every node's public key, concurrently (each ``flwr`` call is a fresh interpreter)."""
        keys = [CertificateSet.public_key(self.topology.node_key(i)) for i in range(len(self.topology.nodes))]
        with ThreadPoolExecutor(max_workers=len(keys)) as pool:
            ids = list(pool.map(lambda ik: self.register(ik[1], name=f"node-{ik[0]}"), enumerate(keys)))
        self.node_ids = dict(enumerate(ids))

    def register(self, public_key: Path, *, name: str = "") -> int:
        """``flwr supernode register KEY.pub CONNECTION``; the node id the SuperLink gave it."""
        args = ["supernode", "register", str(public_key), CONNECTION, *(["--name", name] if name else [])]
        out = flwr_json(args, self.env)
        if not out.get("success") or "node-id" not in out:
            raise DeploymentError(f"flwr supernode register {public_key} failed: {out}")
        return int(out["node-id"])

    def nodes(self) -> list[dict[str, Any]]:
        """``flwr supernode ls CONNECTION --format json``: every node the SuperLink knows, with its status."""
        return list(flwr_json(["supernode", "ls", CONNECTION], self.env).get("nodes", []))

    def wait_online(self, count: int) -> None:
        """Until ``count`` SuperNodes are online (``flwr supernode ls``), or :class:`DeploymentError`."""
        deadline = time.monotonic() + self.startup_timeout
        # cheap first: each SuperNode logs its id once the SuperLink has accepted it; then one `flwr` call confirms
        logs = [Path(s.log) for s in self.started if s.name.startswith("supernode")]
        while time.monotonic() < deadline - self.startup_timeout / 2:
            if all(SUPERNODE_READY in log.read_text(errors="replace") for log in logs):
                break
            if any(not s.alive() for s in self.started if s.name.startswith("supernode")):
                break
            time.sleep(0.2)
        while True:
            online = [n for n in self.nodes() if n.get("status") == "online"]
            if len(online) >= count:
                return
            dead = [s.name for s in self.started if s.name.startswith("supernode") and not s.alive()]
            if dead or time.monotonic() > deadline:
                raise DeploymentError(f"{len(online)}/{count} SuperNodes online"
                                      + (f"; exited: {', '.join(dead)} (see their logs in {self.workdir})"
                                         if dead else f" after {self.startup_timeout:.0f}s"))
            time.sleep(0.5)

    def try_node(self, private_key: Path, *, timeout: float = 60.0) -> tuple[int | None, str]:
        """Start one more SuperNode (node 0's config) with ``private_key``; wait for it to exit.

        Returns its exit code (None if it still ran after ``timeout`` s; it is then stopped) and its log.
        """
        proc = self._spawn(f"extra-node-{len(self.started)}", self.topology.supernode_command(
            0, clientappio_port=free_port(), private_key=private_key))
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        entry = self.started[-1]
        if code is None:
            stop_processes(process_tree(entry.pid, entry.create_time))
        return code, Path(entry.log).read_text(errors="replace")

    def pids(self) -> list[int]:
        """Every live process this deployment started, and their children."""
        return [p.pid for s in self.started for p in process_tree(s.pid, s.create_time)]

    def ports(self) -> list[int]:
        return [s.port for s in self.started]

    def stop(self, timeout: float = 15.0) -> None:
        """Stop every process started (SuperNodes first), each with its process tree, by PID."""
        for entry in reversed(self.started):
            stop_processes(process_tree(entry.pid, entry.create_time), timeout=timeout)
            proc = self._popen.pop(entry.pid, None)
            if proc is not None:
                proc.wait(timeout=5)
        state = self.workdir / STATE_FILE
        if self.started and state.exists():  # only the deployment that wrote it removes it
            state.unlink()
        self.started = []

    # -- state across commands (fedshrink deploy up / run / down) ----------------------
    def save(self) -> None:
        state = {"started": [vars(s) for s in self.started], "node-ids": self.node_ids,
                 "topology": self.topology.to_dict()}
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2))

    @classmethod
    def attach(cls, workdir: Path) -> LocalDeployment:
        """The deployment ``fedshrink deploy up`` left running in ``workdir``."""
        path = Path(workdir) / STATE_FILE
        if not path.is_file():
            raise ConfigError("workdir", str(workdir), f"a directory where `fedshrink deploy up` runs ({STATE_FILE})")
        state = json.loads(path.read_text())
        dep = cls(Topology.from_dict(state["topology"]), Path(workdir))
        dep.started = [Started(**s) for s in state["started"]]
        dep.node_ids = {int(k): int(v) for k, v in state.get("node-ids", {}).items()}
        return dep

    # -- runs ------------------------------------------------------------------------
    def run(self, app_dir: Path, overrides: Mapping[str, Any], *, timeout: float = 1800.0) -> FlowerRun:
        """``flwr run APP CONNECTION --stream``; the status comes from ``flwr ls``, not the exit code."""
        with staged_app(app_dir) as app:
            cmd = [flwr_cli(), "run", str(app), CONNECTION, "--stream"]
            if overrides:
                cmd += ["--run-config", run_config_arg(overrides)]
            returncode, output = stream_command(cmd, self.env, app, timeout=timeout, echo=self.echo)
        run_id = parse_run_id(output, returncode)
        details = flwr_run_details(self.env, run_id, connection=CONNECTION)
        if not details:
            raise FlowerRunError(f"flwr ls does not know run {run_id}")
        return FlowerRun(run_id=run_id, status=str(details.get("status", "unknown")), details=details,
                         output=output)


def shell_commands(topology: Topology, *, listen: str = "0.0.0.0") -> str:
    """The topology as shell commands, grouped by machine (for docs and ``fedshrink deploy plan``).

    The Fleet gateway listens on ``listen`` (all interfaces by default) and SuperNodes dial
    ``topology.address``; the SuperLink, with its Control API, listens on ``topology.control_address``.
    """
    t = topology
    where = "loopback only" if not t.control_exposed else "EXPOSED: unauthenticated, admin-only network"
    lines = [f"# server: the SuperLink; Control API on {t.control_host}:{t.control_api_port} ({where})",
             shlex.join(t.superlink_command("state.db")), "",
             f"# server: the Fleet gateway, the only port the devices reach ({listen}:{t.port}, /v1/fleet/ only)",
             shlex.join(t.gateway_command(listen=listen)), "",
             "# the server itself (or an SSH tunnel to it) runs flwr: $FLWR_HOME/config.toml",
             *("#   " + x for x in t.connection_toml().splitlines())]
    if topology.auth:
        lines += [shlex.join(["flwr", "supernode", "register",
                              str(CertificateSet.public_key(topology.node_key(i))), CONNECTION])
                  for i in range(len(topology.nodes))]
    for i in range(len(topology.nodes)):
        lines += ["", f"# device {i}", shlex.join(topology.supernode_command(i))]
    lines += ["", "# the machine that runs flwr (the server, or through an SSH tunnel), from the app directory",
              f"flwr run . {CONNECTION} --stream", f"flwr ls {CONNECTION} --run-id RUN_ID --format json"]
    return "\n".join(line.replace(os.path.dirname(flwr_cli()) + os.sep, "") for line in lines)
