"""Certificates and node keys for a SuperLink with TLS and SuperNode authentication.

:func:`make_certificates` writes, under one directory:

* ``ca.crt`` / ``ca.key``: a self-signed certificate authority (ECDSA P-384).
  ``ca.crt`` goes to every SuperNode (``--root-certificates``) and to the
  machine that runs ``flwr`` (``root-certificates`` in its connection).
* ``server.pem`` / ``server.key``: the SuperLink's certificate, signed by the
  CA, valid for every host name or IP address in ``hosts`` (its subject
  alternative names). A SuperNode that dials an address not in that list is
  refused by TLS.
* ``nodes/node-<i>`` / ``nodes/node-<i>.pub``: one ECDSA P-384 key pair per
  SuperNode in OpenSSH format, the format ``flower-supernode
  --auth-supernode-private-key`` reads and ``flwr supernode register`` takes.

The server certificate also always names ``localhost`` and ``127.0.0.1``: the
SuperLink's Control API listens on loopback, where ``flwr``, its own SuperExec
and the Fleet gateway (:mod:`fedshrink.deploy.gateway`) reach it over TLS.

Every file is written through a new temporary file in the same directory and
``os.replace``. A private key's file is created by ``os.open(O_CREAT | O_EXCL,
0o600)`` and fixed to that mode with ``fchmod`` before its first byte is
written: no other user can open it at any moment, and no umask widens it.
With ``shared_readable=True`` (for containers that run as another user) the
server and node keys are created 0644 on purpose; ``ca.key`` stays 0600
always. Directories ``make_certificates`` creates are 0700 (0755 when shared).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedshrink.errors import ConfigError

CURVE = ec.SECP384R1()
_DNS_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
# always in the server certificate: the Control API and the Fleet gateway's upstream are on loopback
LOOPBACK_HOSTS = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class CertificateSet:
    """Paths of everything :func:`make_certificates` wrote."""

    root: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    node_keys: tuple[Path, ...]  # private keys; the public key is the same path + ".pub"
    hosts: tuple[str, ...]

    @staticmethod
    def public_key(private_key: Path) -> Path:
        return private_key.with_name(private_key.name + ".pub")

    @classmethod
    def load(cls, root: Path) -> CertificateSet:
        """The set written earlier under ``root`` (checked for completeness)."""
        root = Path(root)
        ca_cert, server_cert = root / "ca.crt", root / "server.pem"
        for path in (ca_cert, root / "ca.key", server_cert, root / "server.key"):
            if not path.is_file():
                raise ConfigError("certificate directory", str(root),
                                  f"a directory made by `fedshrink deploy certs` ({path.name} is missing)")
        keys = tuple(sorted((p for p in (root / "nodes").glob("node-*") if p.suffix != ".pub"),
                            key=lambda p: int(p.name.split("-")[1])))
        cert = x509.load_pem_x509_certificate(server_cert.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hosts = tuple([*san.get_values_for_type(x509.DNSName),
                       *(str(a) for a in san.get_values_for_type(x509.IPAddress))])
        return cls(root, ca_cert, root / "ca.key", server_cert, root / "server.key", keys, hosts)


def check_host(host: str) -> str:
    """``host`` as an IPv4/IPv6 address or an RFC 1123 DNS name, else a one-line :class:`ConfigError`.

    A DNS name is dot-separated labels of 1-63 letters, digits and hyphens, neither starting nor ending
    with a hyphen, 253 characters at most (RFC 1123 section 2.1), and its last label is not all digits:
    a dotted all-numeric name such as ``1.2.3.999`` is a mistyped IPv4 address, not a host name
    (RFC 1123 section 2.1, RFC 3696 section 2). IPv6 scope ids (``fe80::1%eth0``) cannot go in a certificate.
    """
    allowed = ("an IPv4 address (four numbers 0-255), an IPv6 address without a scope id, or a DNS name of "
               "dot-separated labels (letters, digits, '-'; 1-63 characters each, 253 in all; the last one "
               "not all digits) such as 'superlink' or 'fl.example.org'")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise ConfigError("host", host, allowed)
        return str(address)
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if (not name or len(name) > 253 or not all(_DNS_LABEL.match(label) for label in labels)
            or labels[-1].isdigit()):
        raise ConfigError("host", host, allowed)
    return name


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedshrink"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


PRIVATE_MODE = 0o600
SHARED_MODE = 0o644


def _write(path: Path, data: bytes, mode: int) -> None:
    """``data`` into ``path`` with file mode ``mode`` from the moment the file exists (not umask, not chmod).

    The bytes go into a fresh temporary file beside ``path`` (``O_CREAT | O_EXCL | O_NOFOLLOW``, so no existing
    file or symlink is reused), which then replaces ``path`` atomically.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # exactly ``mode`` whatever the umask, before any byte is in the file
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _mkdir(path: Path, *, shared_readable: bool) -> None:
    """``path`` (and its parents); one this call creates is 0700, or 0755 when ``shared_readable``."""
    if not path.is_dir():
        mode = 0o755 if shared_readable else 0o700
        path.mkdir(mode=mode, parents=True, exist_ok=True)  # created at most ``mode`` (the umask only narrows it)
        os.chmod(path, mode)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _make_ca(now: dt.datetime, until: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA that may sign end-entity certificates only (``path_length=0``)."""
    ca_key = ec.generate_private_key(CURVE)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedshrink CA")).issuer_name(_name("fedshrink CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return ca_key, ca_cert


def _make_server(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, hosts: Sequence[str],
                 now: dt.datetime, until: dt.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server certificate signed by the CA, with every one of ``hosts`` as a subject alternative name."""
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    server_key = ec.generate_private_key(CURVE)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return server_key, server_cert


def make_certificates(out: Path, hosts: Sequence[str], nodes: int, *, days: int = 365,
                      shared_readable: bool = False) -> CertificateSet:
    """Write a CA, a server certificate for ``hosts`` (plus loopback) and ``nodes`` SuperNode key pairs."""
    if isinstance(hosts, str):
        hosts = [h for h in hosts.replace(",", " ").split() if h]
    named = [check_host(h) for h in hosts]
    if not named:
        raise ConfigError("hosts", list(hosts), "at least one host name or IP address the SuperLink is reached at")
    checked = tuple(dict.fromkeys([*named, *LOOPBACK_HOSTS]))
    if nodes < 0:
        raise ConfigError("nodes", nodes, "an integer >= 0 (SuperNode key pairs to make)")
    if days < 1:
        raise ConfigError("days", days, "an integer >= 1")
    out = Path(out)
    _mkdir(out, shared_readable=shared_readable)
    _mkdir(out / "nodes", shared_readable=shared_readable)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)
    ca_key, ca_cert = _make_ca(now, until)
    server_key, server_cert = _make_server(ca_key, ca_cert, checked, now, until)

    pem = serialization.Encoding.PEM
    key_mode = SHARED_MODE if shared_readable else PRIVATE_MODE
    _write(out / "ca.crt", ca_cert.public_bytes(pem), SHARED_MODE)
    _write(out / "ca.key", _pem_key(ca_key), PRIVATE_MODE)  # never shared: it signs certificates
    _write(out / "server.pem", server_cert.public_bytes(pem), SHARED_MODE)
    _write(out / "server.key", _pem_key(server_key), key_mode)
    node_keys = []
    for i in range(nodes):
        key = ec.generate_private_key(CURVE)
        path = out / "nodes" / f"node-{i}"
        _write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()), key_mode)
        pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        _write(CertificateSet.public_key(path), pub + f" fedshrink-node-{i}\n".encode(), SHARED_MODE)
        node_keys.append(path)
    return CertificateSet(out, out / "ca.crt", out / "ca.key", out / "server.pem", out / "server.key",
                          tuple(node_keys), checked)
