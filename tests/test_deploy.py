"""Deployment pieces without starting Flower: certificates, node keys, topology commands, node-side data, CLI."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key

from fedshrink.cli import main
from fedshrink.data import SplitSpec, node_split_spec
from fedshrink.deploy import CertificateSet, NodeSpec, Topology, make_certificates, plan_nodes, shell_commands
from fedshrink.errors import ConfigError
from fedshrink.report import RunDirectory
from fedshrink.runner import run_inprocess


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificateSet:
    return make_certificates(tmp_path_factory.mktemp("certs"), ["127.0.0.1", "localhost", "superlink"], 4)


# --- certificates and node keys ------------------------------------------------------------


def test_server_certificate_is_signed_by_ca_for_every_host(certs: CertificateSet) -> None:
    ca = x509.load_pem_x509_certificate(certs.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(certs.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the signature or issuer is wrong
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "superlink"}
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    key = load_pem_private_key(certs.server_key.read_bytes(), password=None)
    assert key.public_key() == server.public_key()


def test_node_keys_are_what_flower_reads(certs: CertificateSet) -> None:
    from flwr.cli.supernode.register import try_load_public_key

    assert len(certs.node_keys) == 4
    for key_path in certs.node_keys:
        private = load_ssh_private_key(key_path.read_bytes(), password=None)  # as flower-supernode loads it
        assert isinstance(private, ec.EllipticCurvePrivateKey) and private.curve.name == "secp384r1"
        assert try_load_public_key(CertificateSet.public_key(key_path))  # as `flwr supernode register` loads it
        assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(certs.ca_key.stat().st_mode) == 0o600
    pubs = {CertificateSet.public_key(k).read_text().split()[1] for k in certs.node_keys}
    assert len(pubs) == 4  # one key pair per node


def test_certificate_set_loads_back(certs: CertificateSet) -> None:
    loaded = CertificateSet.load(certs.root)
    assert loaded.node_keys == certs.node_keys
    assert set(loaded.hosts) == {"127.0.0.1", "localhost", "superlink"}


@pytest.mark.parametrize(("hosts", "nodes", "key"), [
    (["bad host"], 1, "host"), (["-x.org"], 1, "host"), ([], 1, "hosts"), (["127.0.0.1"], -1, "nodes"),
])
def test_bad_certificate_settings_fail_with_one_line(tmp_path: Path, hosts: list[str], nodes: int, key: str) -> None:
    with pytest.raises(ConfigError, match=f"invalid setting {key}=") as err:
        make_certificates(tmp_path, hosts, nodes)
    assert "\n" not in str(err.value)


def test_incomplete_certificate_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("x")
    with pytest.raises(ConfigError, match=r"ca\.key is missing"):
        CertificateSet.load(tmp_path)


# --- topology -------------------------------------------------------------------------------


def test_node_specs_carry_partition_profile_and_data() -> None:
    nodes = plan_nodes(3, ["iot", "phone"], dataset="mnist", data_dir="/data/mnist")
    assert [n.profile for n in nodes] == ["iot", "phone", "iot"]
    assert nodes[2].node_config() == ('partition-id=2 num-partitions=3 profile="iot" dataset="mnist" '
                                      'data-dir="/data/mnist"')
    from flwr.common.config import parse_config_args

    assert parse_config_args([nodes[2].node_config()]) == nodes[2].items()  # as flower-supernode parses it
    with pytest.raises(ConfigError, match="profile='tablet'"):
        NodeSpec(0, 1, "tablet")
    with pytest.raises(ConfigError, match="partition-id=3"):
        NodeSpec(3, 3)
    with pytest.raises(ConfigError, match="dataset='imagenet'"):
        NodeSpec(0, 1, dataset="imagenet")


def test_secure_topology_commands(certs: CertificateSet) -> None:
    topo = Topology(tuple(plan_nodes(3, ["iot", "phone", "laptop"])), certs=certs, port=9092)
    link = topo.superlink_command("state.db")
    assert "--insecure" not in link and "--enable-supernode-auth" in link
    assert "--disable-runtime-dependency-installation" in link
    assert link[link.index("--ssl-certfile") + 1] == str(certs.server_cert)
    assert link[link.index("--ssl-ca-certfile") + 1] == str(certs.ca_cert)
    nodes = [topo.supernode_command(i, clientappio_port=9094 + i) for i in range(3)]
    for i, cmd in enumerate(nodes):
        assert "--insecure" not in cmd
        assert cmd[cmd.index("--superlink") + 1] == "127.0.0.1:9092"
        assert cmd[cmd.index("--root-certificates") + 1] == str(certs.ca_cert)
        assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(certs.node_keys[i])
        assert f"partition-id={i} num-partitions=3" in cmd[cmd.index("--node-config") + 1]
    conn = tomllib.loads(topo.connection_toml())
    assert conn["superlink"]["default"] == "fedshrink-deploy"
    entry = conn["superlink"]["fedshrink-deploy"]
    assert entry == {"address": "127.0.0.1:9092", "root-certificates": str(certs.ca_cert.resolve())}
    plan = shell_commands(topo)
    assert plan.count("flwr supernode register") == 3 and plan.count("flower-supernode") == 3


def test_insecure_only_when_asked(certs: CertificateSet) -> None:
    nodes = tuple(plan_nodes(2))
    with pytest.raises(ConfigError, match="invalid setting certificates=None"):
        Topology(nodes)
    with pytest.raises(ConfigError, match="insecure=True"):
        Topology(nodes, certs=certs, insecure=True)
    topo = Topology(nodes, insecure=True)
    link, node = topo.superlink_command("s.db"), topo.supernode_command(0)
    assert "--insecure" in link and "--enable-supernode-auth" not in link
    assert "--insecure" in node and "--auth-supernode-private-key" not in node
    assert "insecure = true" in topo.connection_toml()


def test_topology_checks_host_nodes_and_partitions(certs: CertificateSet) -> None:
    with pytest.raises(ConfigError, match=r"host='10\.0\.0\.5'"):
        Topology(tuple(plan_nodes(2)), certs=certs, host="10.0.0.5")
    with pytest.raises(ConfigError, match="invalid setting nodes=5"):  # 4 node keys only
        Topology(tuple(plan_nodes(5)), certs=certs)
    with pytest.raises(ConfigError, match="node-config"):
        Topology((NodeSpec(0, 2), NodeSpec(0, 2)), certs=certs)


# --- node-side data -------------------------------------------------------------------------


def test_node_config_names_the_data() -> None:
    run = SplitSpec(dataset="mnist", data_dir="/server/copy")
    assert node_split_spec(run, {"partition-id": 0}) == run  # simulation: the run's settings
    assert node_split_spec(run, {"dataset": "mnist"}).data_dir == ""  # the node's own hub copy, not the server's
    assert node_split_spec(run, {"dataset": "mnist", "data-dir": "/node/mnist"}).data_dir == "/node/mnist"
    with pytest.raises(ConfigError, match="node-config dataset='cifar10'"):
        node_split_spec(run, {"dataset": "cifar10"})
    with pytest.raises(ConfigError, match="node-config dataset='nope'"):
        node_split_spec(run, {"dataset": "nope"})


def _save_fake_mnist(path: Path, n: int = 200) -> None:
    from datasets import Dataset, DatasetDict

    rng = np.random.default_rng(0)

    def make(m: int) -> Dataset:
        return Dataset.from_dict({"image": rng.integers(0, 256, size=(m, 28, 28), dtype=np.uint8),
                                  "label": np.arange(m) % 10})

    DatasetDict({"train": make(n), "test": make(n // 4)}).save_to_disk(str(path))


def test_client_app_reads_data_dir_from_node_config(quick: dict[str, Any], tmp_path: Path) -> None:
    server_copy, node_copy = tmp_path / "server-mnist", tmp_path / "node-mnist"
    _save_fake_mnist(server_copy)
    _save_fake_mnist(node_copy)
    missing = tmp_path / "node-1-has-no-data"
    nodes: list[dict[str, Any]] = [
        {"partition-id": 0, "num-partitions": 3, "dataset": "mnist", "data-dir": str(node_copy)},
        {"partition-id": 1, "num-partitions": 3, "dataset": "mnist", "data-dir": str(missing)},
        {"partition-id": 2, "num-partitions": 3, "dataset": "mnist", "data-dir": str(node_copy)},
    ]
    run = {**quick, "num-server-rounds": 1, "dataset": "mnist", "data-dir": str(server_copy), "model": "mlp",
           "partitioner": "iid", "min-train-clients": 2}
    result = run_inprocess(run, num_clients=3, node_configs=nodes)
    (rnd,) = RunDirectory(result.run_dir).read_rounds()
    assert rnd["clients-good"] == 2 and rnd["clients-dropped"] == 1
    assert str(missing) in rnd["dropped"][0]["reason"]  # node 1 looked on its own path, not the server's


# --- command line ---------------------------------------------------------------------------


def test_cli_certs_and_plan(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c"
    assert main(["deploy", "certs", "--hosts", "127.0.0.1", "fl.example.org", "--nodes", "2", "--out", str(out)]) == 0
    assert (out / "nodes" / "node-1.pub").is_file()
    assert main(["deploy", "plan", "--nodes", "2", "--certs", str(out), "--host", "fl.example.org"]) == 0
    plan = capsys.readouterr().out
    assert "--superlink fl.example.org:9092" in plan and "--enable-supernode-auth" in plan
    assert "profile=" in plan and "--insecure" not in plan


@pytest.mark.parametrize("argv", [
    ["deploy", "certs", "--hosts", "no spaces", "--nodes", "1", "--out", "x"],
    ["deploy", "plan", "--nodes", "2"],  # neither certificates nor --insecure
    ["deploy", "plan", "--nodes", "0", "--insecure"],
    ["deploy", "plan", "--profiles", "iot,tablet", "--insecure"],
    ["deploy", "down", "--workdir", "/nonexistent/deploy"],
])
def test_cli_bad_setting_is_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedshrink: invalid setting") and "\n" not in err


def test_simulation_joins_a_ray_cluster_by_address(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fedshrink.runner.flower import LocalSimulation

    sim = LocalSimulation(tmp_path, ray_address="10.0.0.7:6379")  # not started
    assert sim.env["RAY_ADDRESS"] == "10.0.0.7:6379"  # Flower's Ray backend calls ray.init() with no address
    assert main(["run", "--ray-address", "10.0.0.7:6379"]) == 2  # the in-process engine has no Ray
    assert "--ray-address" in capsys.readouterr().err


def test_workdir_of_a_running_deployment_is_refused_and_kept(tmp_path: Path) -> None:
    import json
    import os

    import psutil

    from fedshrink.deploy import LocalDeployment
    from fedshrink.deploy.topology import STATE_FILE, Started

    topo = Topology(tuple(plan_nodes(2)), insecure=True)
    me = Started("superlink", os.getpid(), psutil.Process().create_time(), str(tmp_path / "x.log"), 1)
    gone = Started("supernode-0", os.getpid(), 1.0, str(tmp_path / "y.log"), 2)  # PID reused by another process
    state = tmp_path / STATE_FILE
    state.write_text(json.dumps({"started": [vars(me)], "node-ids": {}, "topology": topo.to_dict()}))
    with pytest.raises(ConfigError, match=f"PIDs \\[{os.getpid()}\\]"):
        LocalDeployment(topo, tmp_path).prepare()
    LocalDeployment(topo, tmp_path).stop()  # a deployment that started nothing leaves the state alone
    assert state.is_file()
    assert LocalDeployment.attach(tmp_path).topology == topo
    state.write_text(json.dumps({"started": [vars(gone)], "node-ids": {}, "topology": topo.to_dict()}))
    LocalDeployment.check_free(tmp_path)  # nothing of it runs any more: forgotten
    assert not state.exists()
