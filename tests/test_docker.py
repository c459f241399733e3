"""The Docker files, parsed and checked (there is no Docker engine here).

The compose topology must mirror the process-based deployment of
tests/test_deploy_e2e.py: the same node configs and profiles, the same
SuperLink and Fleet gateway ports, TLS and node-authentication flags, never
--insecure, and no runtime dependency installation. The SuperLink's Control
API must not be reachable from other hosts or from the SuperNodes: only the
Fleet gateway faces them.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import flwr
import pytest
import yaml

from fedshrink.deploy import DEFAULT_PROFILES, ControlApiExposedWarning, Topology, make_certificates, plan_nodes
from fedshrink.deploy.topology import CONTROL_PORT, SUPERLINK_PORT, SUPERNODE_PORT

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", path.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Topology:
    """The compose topology: inside its container the SuperLink binds every interface of the `control` network."""
    certs = make_certificates(tmp_path_factory.mktemp("certs"), ["fleet-gateway", "superlink"], 3)
    with pytest.warns(ControlApiExposedWarning):
        return Topology(tuple(plan_nodes(3, DEFAULT_PROFILES)), certs=certs, host="fleet-gateway",
                        port=SUPERLINK_PORT, control_host="0.0.0.0")


def _flags(cmd: list[str]) -> set[str]:
    return {c for c in cmd if c.startswith("--")}


def _arg(cmd: list[str], flag: str) -> str:
    return str(cmd[cmd.index(flag) + 1])


def test_superlink_image_is_flowers_at_our_version() -> None:
    ins = _instructions(DOCKER / "superlink.Dockerfile")
    assert ins[0] == ("FROM", f"flwr/superlink:{flwr.__version__}")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert f"flwr=={flwr.__version__}" in pyproject["project"]["dependencies"]
    # Ray (Flower's simulation engine) is an extra, at the same Flower version, in the simulation image and in dev
    extras = pyproject["project"]["optional-dependencies"]
    assert f"flwr[simulation]=={flwr.__version__}" in extras["simulation"]
    assert f"flwr[simulation]=={flwr.__version__}" in extras["dev"]
    runs = [v for k, v in _instructions(DOCKER / "simulation.Dockerfile") if k == "RUN"]
    assert any('pip install ".[simulation]"' in v for v in runs)
    env = " ".join(v for k, v in ins if k == "ENV")
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in env


def test_supernode_image_has_fedshrink_and_cpu_torch() -> None:
    ins = _instructions(DOCKER / "supernode.Dockerfile")
    runs = [v for k, v in ins if k == "RUN"]
    torch_pin = re.search(r"TORCH\s*\?=\s*(\S+)", (ROOT / "Makefile").read_text())
    assert torch_pin is not None
    assert any(torch_pin.group(1) in r and "--index-url https://download.pytorch.org/whl/cpu" in r for r in runs)
    assert any("pip install ." in r for r in runs)
    for k, v in ins:
        if k == "COPY":
            for src in v.split()[:-1]:
                assert (ROOT / src).exists(), f"COPY source {src} missing"
    assert ("ENTRYPOINT", '["flower-supernode"]') in ins
    assert "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1" in " ".join(v for k, v in ins if k == "ENV")


def test_compose_has_one_superlink_and_three_supernodes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"superlink", "serverapp", "fleet-gateway", "supernode-0", "supernode-1", "supernode-2"}
    for name, svc in services.items():
        assert "--insecure" not in svc.get("command", []), name
        assert svc["environment"]["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1", name
        assert "--allow-runtime-dependency-installation" not in svc.get("command", []), name
        if name != "superlink":
            assert svc["build"]["dockerfile"] == "docker/supernode.Dockerfile"
            assert svc["depends_on"] == ["fleet-gateway" if name.startswith("supernode") else "superlink"]
    assert services["superlink"]["build"]["dockerfile"] == "docker/superlink.Dockerfile"


def test_compose_superlink_mirrors_the_process_topology(compose: dict[str, Any], topology: Topology) -> None:
    cmd = [str(c) for c in compose["services"]["superlink"]["command"]]
    expected = _flags(topology.superlink_command("state.db")) - {"--database", "--log-file"}
    assert _flags(cmd) == expected  # TLS files, node auth, no runtime installs, isolation, host, port
    assert _arg(cmd, "--port") == str(CONTROL_PORT) and _arg(cmd, "--host") == "0.0.0.0"
    mounts = {m.split(":")[1]: m.split(":")[0] for m in compose["services"]["superlink"]["volumes"]}
    for flag, name in (("--ssl-ca-certfile", "ca.crt"), ("--ssl-certfile", "server.pem"),
                       ("--ssl-keyfile", "server.key")):
        assert mounts[_arg(cmd, flag)] == f"../deploy-certs/{name}"
        assert (topology.certs.root / name).is_file()  # type: ignore[union-attr]  # what `deploy certs` writes
    serverapp = compose["services"]["serverapp"]
    assert serverapp["entrypoint"] == ["flower-superexec"] and _arg(cmd, "--isolation") == "process"
    assert _arg(serverapp["command"], "--runtime-api-address") == f"superlink:{CONTROL_PORT}"


def _published(svc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host interface, host port, container port) of each published port ("" for every interface)."""
    out = []
    for entry in svc.get("ports", []):
        parts = str(entry).rsplit(":", 2)
        out.append(("", *parts) if len(parts) == 2 else (parts[0], parts[1], parts[2]))
    return out


def test_compose_keeps_the_control_api_off_other_hosts_and_the_supernodes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    # the SuperLink's port (Control API) is published on the host's loopback only
    assert _published(services["superlink"]) == [("127.0.0.1", str(CONTROL_PORT), str(CONTROL_PORT))]
    published = {name: _published(svc) for name, svc in services.items() if _published(svc)}
    assert set(published) == {"superlink", "fleet-gateway"}  # no SuperNode, no ServerApp port is published
    assert _published(services["fleet-gateway"]) == [("", str(SUPERLINK_PORT), str(SUPERLINK_PORT))]
    # networks: the SuperNodes share one with the gateway only, never with the SuperLink
    assert services["superlink"]["networks"] == ["control"] and services["serverapp"]["networks"] == ["control"]
    assert sorted(services["fleet-gateway"]["networks"]) == ["control", "fleet"]
    for i in range(3):
        assert services[f"supernode-{i}"]["networks"] == ["fleet"]
    assert set(compose["networks"]) == {"control", "fleet"}


def test_compose_gateway_mirrors_the_process_topology(compose: dict[str, Any], topology: Topology) -> None:
    svc = compose["services"]["fleet-gateway"]
    cmd = [str(c) for c in svc["command"]]
    expected = topology.gateway_command(listen="0.0.0.0")
    assert svc["entrypoint"] == ["python", *expected[1:3]]  # python -m fedshrink.deploy.gateway
    assert _flags(cmd) == _flags(expected)
    assert _arg(cmd, "--listen") == f"0.0.0.0:{SUPERLINK_PORT}" == _arg(expected, "--listen")
    assert _arg(cmd, "--upstream") == f"superlink:{CONTROL_PORT}"  # the SuperLink's name on the control network
    mounts = {m.split(":")[1]: m.split(":")[0] for m in svc["volumes"]}
    for flag, name in (("--ssl-ca-certfile", "ca.crt"), ("--ssl-certfile", "server.pem"),
                       ("--ssl-keyfile", "server.key")):
        assert mounts[_arg(cmd, flag)] == f"../deploy-certs/{name}"


@pytest.mark.parametrize("index", range(3))
def test_compose_supernodes_mirror_the_process_topology(compose: dict[str, Any], topology: Topology,
                                                         index: int) -> None:
    svc = compose["services"][f"supernode-{index}"]
    cmd = [str(c) for c in svc["command"]]
    assert _flags(cmd) == _flags(topology.supernode_command(index))
    assert _arg(cmd, "--superlink") == topology.address
    assert _arg(cmd, "--node-config") == topology.nodes[index].node_config()
    assert f'profile="{DEFAULT_PROFILES[index]}"' in _arg(cmd, "--node-config")
    assert _arg(cmd, "--port") == str(SUPERNODE_PORT)
    mounts = {m.split(":")[1]: m.split(":")[0] for m in svc["volumes"]}
    assert mounts[_arg(cmd, "--root-certificates")] == "../deploy-certs/ca.crt"
    key = topology.node_key(index)
    assert mounts[_arg(cmd, "--auth-supernode-private-key")] == f"../deploy-certs/nodes/{key.name}"
    assert mounts["/data"] == f"data-node-{index}"
    assert f"data-node-{index}" in compose["volumes"]
