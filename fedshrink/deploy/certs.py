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

Private keys are written with mode 0600 (0644 with ``shared_readable=True``,
for containers that run as another user).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
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
    """``host`` if it is an IP address or a DNS name, else :class:`ConfigError`."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if not host or len(host) > 253 or not all(_DNS_LABEL.match(label) for label in labels):
        raise ConfigError("host", host, "an IP address or a DNS name such as 'superlink' or 'fl.example.org'")
    return host.rstrip(".")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedshrink"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, data: bytes, *, private: bool, shared_readable: bool) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o644 if (not private or shared_readable) else 0o600)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_certificates(out: Path, hosts: Sequence[str], nodes: int, *, days: int = 365,
                      shared_readable: bool = False) -> CertificateSet:
    """Write a CA, a server certificate for ``hosts`` and ``nodes`` SuperNode key pairs under ``out``."""
    if isinstance(hosts, str):
        hosts = [h for h in hosts.replace(",", " ").split() if h]
    checked = tuple(dict.fromkeys(check_host(h) for h in hosts))
    if not checked:
        raise ConfigError("hosts", list(hosts), "at least one host name or IP address the SuperLink is reached at")
    if nodes < 0:
        raise ConfigError("nodes", nodes, "an integer >= 0 (SuperNode key pairs to make)")
    if days < 1:
        raise ConfigError("days", days, "an integer >= 1")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "nodes").mkdir(exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    until = now + dt.timedelta(days=days)

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
    sans: list[x509.GeneralName] = []
    for h in checked:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    server_key = ec.generate_private_key(CURVE)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(checked[0])).issuer_name(ca_cert.subject)
        .public_key(server_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(until)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    _write(out / "ca.crt", ca_cert.public_bytes(pem), private=False, shared_readable=shared_readable)
    _write(out / "ca.key", _pem_key(ca_key), private=True, shared_readable=False)
    _write(out / "server.pem", server_cert.public_bytes(pem), private=False, shared_readable=shared_readable)
    _write(out / "server.key", _pem_key(server_key), private=True, shared_readable=shared_readable)

    node_keys = []
    for i in range(nodes):
        key = ec.generate_private_key(CURVE)
        path = out / "nodes" / f"node-{i}"
        _write(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()), private=True, shared_readable=shared_readable)
        pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        _write(CertificateSet.public_key(path), pub + f" fedshrink-node-{i}\n".encode(), private=False,
               shared_readable=shared_readable)
        node_keys.append(path)
    return CertificateSet(out, out / "ca.crt", out / "ca.key", out / "server.pem", out / "server.key",
                          tuple(node_keys), checked)
