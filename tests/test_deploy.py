"""Deployment pieces without starting Flower: certificates, node keys, topology commands, node-side data, CLI."""

from __future__ import annotations

import asyncio
import io
import os
import stat
import tomllib
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key

from fedshrink.cli import main
from fedshrink.data import SplitSpec, node_split_spec
from fedshrink.deploy import (
    CertificateSet,
    ControlApiExposedWarning,
    NodeSpec,
    Topology,
    check_host,
    make_certificates,
    plan_nodes,
    shell_commands,
)
from fedshrink.deploy.gateway import FleetGateway, Upstream, parse_address
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


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """The most permissive umask: a file is created with exactly the mode its creator asks for."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


class CreationModes:
    """Records, per inode, the mode a file had right after the open() that made it, and every chmod that widens."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.created: dict[int, int] = {}
        self.widened: list[int] = []
        real_os_open, real_io_open, real_chmod, real_fchmod = os.open, io.open, os.chmod, os.fchmod

        def os_open(path: Any, flags: int, mode: int = 0o777, *args: Any, **kwargs: Any) -> int:
            fd = real_os_open(path, flags, mode, *args, **kwargs)
            if flags & os.O_CREAT:
                self._seen(os.fstat(fd))
            return fd

        def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            fh = real_io_open(file, mode, *args, **kwargs)
            if any(c in mode for c in "wxa+") and not isinstance(file, int):
                self._seen(os.fstat(fh.fileno()))
            return fh

        def chmod(path: Any, mode: int, *args: Any, **kwargs: Any) -> None:
            if mode & 0o077:
                self.widened.append(os.stat(path).st_ino)
            real_chmod(path, mode, *args, **kwargs)

        def fchmod(fd: int, mode: int) -> None:
            if mode & 0o077:
                self.widened.append(os.fstat(fd).st_ino)
            real_fchmod(fd, mode)

        for name, fn in (("open", os_open), ("chmod", chmod), ("fchmod", fchmod)):
            monkeypatch.setattr(os, name, fn)
        monkeypatch.setattr(io, "open", open_)

    def _seen(self, st: os.stat_result) -> None:
        self.created.setdefault(st.st_ino, stat.S_IMODE(st.st_mode))


def test_private_keys_are_never_readable_by_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   umask_zero: None) -> None:
    """Each private key's file is 0600 from the open() that creates it (under umask 0), and never widened.

    A file that is readable even while still empty lets another user open it then and read the key through
    that descriptor once it is written, so the mode at creation is what counts, not the mode at the end.
    """
    modes = CreationModes(monkeypatch)
    certs = make_certificates(tmp_path / "c", ["127.0.0.1"], 2)
    monkeypatch.undo()
    for key in (certs.ca_key, certs.server_key, *certs.node_keys):
        ino = key.stat().st_ino
        assert ino in modes.created, f"{key.name}: made by no open() this test saw"
        assert modes.created[ino] == 0o600, f"{key.name} was created with mode {oct(modes.created[ino])}"
        assert ino not in modes.widened and stat.S_IMODE(key.stat().st_mode) == 0o600, key.name
        assert b"PRIVATE KEY" in key.read_bytes()
    for public in (certs.ca_cert, certs.server_cert, CertificateSet.public_key(certs.node_keys[0])):
        assert stat.S_IMODE(public.stat().st_mode) == 0o644, public.name
    for folder in (certs.root, certs.root / "nodes"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert not list(certs.root.rglob("*.tmp"))


def test_shared_readable_keys_are_readable_on_purpose_but_not_the_ca_key(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "c", ["superlink"], 1, shared_readable=True)
    for key in (certs.server_key, certs.node_keys[0]):
        assert stat.S_IMODE(key.stat().st_mode) == 0o644, key.name  # for containers that run as another user
    assert stat.S_IMODE(certs.ca_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(certs.root.stat().st_mode) == 0o755
    again = make_certificates(tmp_path / "c", ["superlink"], 1)  # made again in place: private again
    assert stat.S_IMODE(again.node_keys[0].stat().st_mode) == 0o600


@pytest.mark.parametrize("host", [
    "1.2.3.999", "256.1.1.1", "1.2.3", "01.2.3.4", "1.2.3.4.5", "123", "1.2.3.4.", "a..b", "-x.org", "x-.org",
    "under_score.org", "bad host", "", ".", "a" * 64 + ".org", ".".join(["a" * 63] * 4), "fe80::1%eth0", "::1::2",
    "*.example.org",
])
def test_host_must_be_an_ip_address_or_a_dns_name(host: str) -> None:
    with pytest.raises(ConfigError, match="invalid setting host=") as err:
        check_host(host)
    message = str(err.value)
    assert repr(host) in message and "IPv4 address" in message and "DNS name" in message and "\n" not in message


@pytest.mark.parametrize(("host", "normal"), [
    ("1.2.3.4", "1.2.3.4"), ("255.255.255.255", "255.255.255.255"), ("::1", "::1"), ("2001:DB8::1", "2001:db8::1"),
    ("superlink", "superlink"), ("fl.example.org.", "fl.example.org"), ("3com.net", "3com.net"),
    ("1.2.3.4a", "1.2.3.4a"), ("xn--bcher-kva.example", "xn--bcher-kva.example"), ("a" * 63, "a" * 63),
])
def test_ip_addresses_and_dns_names_are_accepted(host: str, normal: str) -> None:
    assert check_host(host) == normal


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
    entry = conn["superlink"]["fedshrink-deploy"]  # flwr talks to the Control API, on loopback
    assert entry == {"address": "127.0.0.1:9093", "root-certificates": str(certs.ca_cert.resolve())}
    plan = shell_commands(topo)
    assert plan.count("flwr supernode register") == 3 and plan.count("flower-supernode") == 3


def _arg(cmd: Sequence[str], flag: str) -> str:
    return str(cmd[list(cmd).index(flag) + 1])


def test_control_api_listens_on_loopback_and_only_the_fleet_gateway_faces_the_devices(certs: CertificateSet) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default topology warns about nothing
        topo = Topology(tuple(plan_nodes(3)), certs=certs, host="superlink", port=9092)
    link = topo.superlink_command("state.db")
    assert (_arg(link, "--host"), _arg(link, "--port")) == ("127.0.0.1", "9093")
    assert "--control-api-address" not in link and "--fleet-api-address" not in link  # ignored by Flower 1.42
    gateway = topo.gateway_command(listen="0.0.0.0")
    assert gateway[1:3] == ["-m", "fedshrink.deploy.gateway"]
    assert (_arg(gateway, "--listen"), _arg(gateway, "--upstream")) == ("0.0.0.0:9092", "127.0.0.1:9093")
    assert _arg(gateway, "--ssl-ca-certfile") == str(certs.ca_cert) and "--insecure" not in gateway
    assert all(_arg(topo.supernode_command(i), "--superlink") == "superlink:9092" for i in range(3))

    plan = shell_commands(topo).splitlines()  # what `fedshrink deploy plan` prints
    (superlink,) = [line for line in plan if line.startswith("flower-superlink ")]
    assert "--host 127.0.0.1 --port 9093" in superlink and "0.0.0.0" not in superlink
    (gateway_line,) = [line for line in plan if "fedshrink.deploy.gateway" in line]
    assert gateway_line.startswith("python -m ") and "--listen 0.0.0.0:9092 --upstream 127.0.0.1:9093" in gateway_line
    assert '#   address = "127.0.0.1:9093"' in plan


def test_exposing_the_control_api_takes_an_explicit_option_and_warns(certs: CertificateSet,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.warns(ControlApiExposedWarning, match=r"0\.0\.0\.0:9093: it has no authentication"):
        topo = Topology(tuple(plan_nodes(2)), certs=certs, control_host="0.0.0.0")
    assert _arg(topo.superlink_command("s.db"), "--host") == "0.0.0.0"
    assert topo.control_address == "127.0.0.1:9093"  # flwr on the server itself still dials loopback
    with pytest.raises(ConfigError, match=r"control-host='fl\.example\.org'"):  # not in the certificate
        Topology(tuple(plan_nodes(2)), certs=certs, control_host="fl.example.org")
    with pytest.raises(ConfigError, match="control-port=9092"):
        Topology(tuple(plan_nodes(2)), certs=certs, port=9092, control_port=9092)
    with pytest.warns(ControlApiExposedWarning):
        assert main(["deploy", "plan", "--nodes", "2", "--insecure", "--expose-control-api", "0.0.0.0"]) == 0
    assert "--host 0.0.0.0 --port 9093" in capsys.readouterr().out


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


# --- Fleet gateway -------------------------------------------------------------------------


class FakeSuperLink:
    """The upstream of a gateway under test: records what reaches it, answers like the SuperLink."""

    def __init__(self, *, down: bool = False) -> None:
        self.seen: list[httpx.Request] = []
        self.down = down

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        self.seen.append(request)
        return httpx.Response(201, stream=_Chunks([b"reply:", request.content]),
                              headers={"content-type": "application/protobuf", "x-flwr-reply": "1"})


class _Chunks(httpx.AsyncByteStream):
    """A response body that arrives in pieces, as from a real SuperLink."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> Any:
        for chunk in self.chunks:
            yield chunk


def _through_gateway(upstream: FakeSuperLink, method: str, raw_path: bytes, *, query: bytes = b"",
                     headers: Sequence[tuple[bytes, bytes]] = (), body: bytes = b"") -> tuple[int, dict[bytes, bytes],
                                                                                              bytes]:
    """One request, as uvicorn hands it over (raw path, headers, client), to a gateway in front of ``upstream``."""
    app = FleetGateway(Upstream("127.0.0.1", 9093, None), transport=httpx.MockTransport(upstream))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "https", "method": method,
             "path": unquote(raw_path.decode("latin-1")), "raw_path": raw_path, "query_string": query,
             "headers": list(headers), "client": ("192.0.2.7", 50123), "server": ("0.0.0.0", 9092)}
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    async def go() -> None:
        await app(scope, receive, send)
        await app.aclose()

    asyncio.run(go())
    assert sent[0]["type"] == "http.response.start" and not sent[-1].get("more_body")
    return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def test_gateway_forwards_fleet_calls_unchanged() -> None:
    link = FakeSuperLink()
    headers = [(b"host", b"fl.example.org:9092"), (b"content-type", b"application/protobuf"),
               (b"content-length", b"5"), (b"x-flwr-signature", b"c2ln"), (b"x-forwarded-for", b"10.0.0.1"),
               (b"proxy-authorization", b"Basic eDp5"), (b"upgrade", b"h2c")]
    status, got, body = _through_gateway(link, "POST", b"/v1/fleet/pull-messages", headers=headers, body=b"hello")
    assert (status, body, got[b"x-flwr-reply"]) == (201, b"reply:hello", b"1")
    (request,) = link.seen
    assert request.method == "POST" and request.url.raw_path == b"/v1/fleet/pull-messages"
    assert request.url.host == "127.0.0.1" and request.url.port == 9093 and request.content == b"hello"
    assert request.headers["x-flwr-signature"] == "c2ln"  # SuperNode authentication is the SuperLink's to check
    assert request.headers["host"] == "127.0.0.1:9093" and request.headers["x-forwarded-for"] == "192.0.2.7"
    assert "proxy-authorization" not in request.headers and "upgrade" not in request.headers  # hop-by-hop
    status, _, _ = _through_gateway(link, "GET", b"/health")
    assert status == 201 and link.seen[-1].url.raw_path == b"/health"


@pytest.mark.parametrize(("method", "raw_path", "query"), [
    ("POST", b"/v1/control/register-node", b""),  # `flwr supernode register`: the bypass of node authentication
    ("POST", b"/v1/control/start-run", b""),
    ("POST", b"/v1/runtime/acquire-task", b""),
    ("POST", b"/v1/fleet/../control/register-node", b""),
    ("POST", b"/v1/fleet/%2e%2e/control/register-node", b""),
    ("POST", b"/v1/fleet/%2E%2E%2Fcontrol%2Fregister-node", b""),
    ("POST", b"/v1/fleet//v1/control/list-nodes", b""),
    ("POST", b"//v1/fleet/pull-messages", b""),
    ("POST", b"/v1/fleet/pull-messages/", b""),
    ("POST", b"/v1/FLEET/pull-messages", b""),
    ("POST", b"/v1/fleet/pull-messages", b"x=1"),
    ("GET", b"/v1/fleet/pull-messages", b""),
    ("POST", b"/health", b""),
    ("GET", b"/docs", b""),
    ("GET", b"/openapi.json", b""),
])
def test_gateway_refuses_everything_but_the_fleet_api(method: str, raw_path: bytes, query: bytes) -> None:
    link = FakeSuperLink()
    status, _, body = _through_gateway(link, method, raw_path, query=query, body=b"x")
    assert status == 404 and b"Fleet API" in body
    assert link.seen == []  # the SuperLink never heard of it


def test_gateway_answers_502_when_the_superlink_is_down() -> None:
    status, _, body = _through_gateway(FakeSuperLink(down=True), "POST", b"/v1/fleet/get-run")
    assert status == 502 and b"unreachable" in body


@pytest.mark.parametrize(("text", "want"), [("0.0.0.0:9092", ("0.0.0.0", 9092)), ("[::1]:9093", ("::1", 9093)),
                                            ("superlink:9093", ("superlink", 9093))])
def test_gateway_addresses(text: str, want: tuple[str, int]) -> None:
    assert parse_address(text) == want


@pytest.mark.parametrize("text", ["9092", "::1:9092", "host:0", "host:70000", "host:", "[nope]:1"])
def test_gateway_bad_addresses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


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


def test_what_needs_ray_fails_at_start_in_one_line_without_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    monkeypatch.chdir(tmp_path)  # runs and sweeps would write under ./runs
    sweep, local = tmp_path / "s.toml", tmp_path / "l.toml"
    sweep.write_text('name = "s"\nengine = "flower"\n')
    local.write_text('name = "l"\n')  # the in-process engine, but its runs sent to a Ray cluster
    for argv, key in ((["run", "--engine", "flower"], "--engine"), (["sweep", str(sweep)], "engine"),
                      (["sweep", str(local), "--ray-address", "auto"], "--ray-address")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"fedshrink: invalid setting {key}=") and "\n" not in err
        assert "pip install 'fedshrink[simulation]'" in err
    assert not (tmp_path / "runs").exists()


def test_workdir_of_a_running_deployment_is_refused_and_kept(tmp_path: Path) -> None:
    import json
    import os

    import psutil

    from fedshrink.deploy import LocalDeployment
    from fedshrink.deploy.topology import STATE_FILE, Started

    topo = Topology(tuple(plan_nodes(2)), insecure=True, control_port=9999)  # as a started deployment saves it
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


# --- the app flwr run packs ------------------------------------------------------------------


def _fab_files(app: Path) -> dict[str, bytes]:
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    with zipfile.ZipFile(io.BytesIO(build_fab_from_disk(app))) as z:
        return {name: z.read(name) for name in z.namelist()}


def test_the_staged_app_packs_the_same_fab_without_entering_ignored_directories(tmp_path: Path) -> None:
    from fedshrink.runner.flower import staged_app

    app = tmp_path / "app"
    (app / "pkg" / "__pycache__").mkdir(parents=True)
    (app / "pyproject.toml").write_text((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    (app / ".gitignore").write_text(".venv/\nruns/\n*.log\n")
    (app / "pkg" / "__init__.py").write_text("x = 1\n")
    (app / "pkg" / "conf.json").write_text("{}\n")
    (app / "pkg" / "__pycache__" / "m.py").write_text("")
    (app / "pkg" / "debug.log").write_text("ignored\n")
    (app / "README.md").write_text("# app\n")
    for ignored in (".venv/lib/site.py", "runs/r1/summary.json", ".git/config"):
        (app / ignored).parent.mkdir(parents=True, exist_ok=True)
        (app / ignored).write_text("")
    (app / "outside.py").symlink_to(app / "pkg" / "__init__.py")
    (app / "linked").symlink_to(app / "pkg", target_is_directory=True)  # a directory symlink is not entered
    with staged_app(app) as staged:
        copied = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
        assert copied == [".gitignore", "README.md", "pkg/__init__.py", "pkg/conf.json", "pyproject.toml"]
        assert _fab_files(staged) == _fab_files(app)  # the same FAB, byte for byte
    assert not staged.exists()  # removed when the block ends
