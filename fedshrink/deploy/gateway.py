"""The Fleet gateway: the one port a deployment shows to its devices, serving Flower's Fleet API and nothing else.

Flower 1.42's SuperLink serves all its HTTP APIs on one port (``--host``/``--port``):
the Fleet API (``/v1/fleet/*``: SuperNodes register, pull and push messages), the
Control API (``/v1/control/*``: ``flwr run``, ``flwr ls``, ``flwr supernode
register``) and the runtime API (``/v1/runtime/*``: the ServerApp's SuperExec).
The Control API has no authentication unless OIDC is configured, which is a Flower
Enterprise feature (``FLWR_OIDC_ENABLED=1``; the open-source SuperLink exits with
"OIDC account authentication is unavailable in this Flower distribution"). Anyone
who reaches that port can therefore register their own SuperNode key, which defeats
SuperNode authentication, or start and stop runs.

So the SuperLink listens on 127.0.0.1 only, and this gateway listens on the
interface the devices reach. It forwards, unchanged and streamed, exactly

* ``POST /v1/fleet/<method>`` (a lowercase method name, no query string), and
* ``GET``/``HEAD /health``,

to the SuperLink, and answers every other request with 404 without contacting the
SuperLink. The path is matched on the raw bytes the client sent, so no
percent-encoding or dot segment (``/v1/fleet/../control/...``) can reach another
API. SuperNode authentication is untouched: each request's signed headers travel
to the SuperLink, which checks them. TLS is terminated here with the SuperLink's
own certificate and re-established to the SuperLink, verified against ``ca.crt``.

Run as ``python -m fedshrink.deploy.gateway --listen 0.0.0.0:9092 --upstream 127.0.0.1:9093
--ssl-certfile server.pem --ssl-keyfile server.key --ssl-ca-certfile ca.crt``.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import re
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger("fedshrink.gateway")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

FLEET_PATH = re.compile(rb"/v1/fleet/[a-z][a-z-]{0,63}")  # Flower's Fleet routes: /v1/fleet/pull-messages, ...
HEALTH_PATH = b"/health"
# RFC 9110 section 7.6.1 connection options, plus what this gateway sets itself
HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding",
                        b"upgrade", b"proxy-authorization", b"proxy-authenticate", b"host", b"forwarded",
                        b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip"})
UPSTREAM_TIMEOUT = httpx.Timeout(300.0, connect=10.0)


def allowed(method: str, raw_path: bytes, query: bytes) -> bool:
    """Whether a request is one the gateway forwards: a Fleet API call or a health check, nothing else."""
    if query:
        return False
    if FLEET_PATH.fullmatch(raw_path):
        return method == "POST"
    return raw_path == HEALTH_PATH and method in ("GET", "HEAD")


def forward_headers(headers: Sequence[tuple[bytes, bytes]], client: str | None) -> list[tuple[bytes, bytes]]:
    """The request headers to send upstream: end-to-end ones only, and who the client really was."""
    out = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]
    if client:
        out.append((b"x-forwarded-for", client.encode("ascii", "replace")))
    return out


def response_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The SuperLink's response headers, less hop-by-hop ones (the body is passed on raw, so lengths hold)."""
    return [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP]


@dataclass(frozen=True)
class Upstream:
    """The SuperLink behind the gateway: ``host:port``, over TLS verified by ``ca_certfile`` (plain HTTP if None)."""

    host: str
    port: int
    ca_certfile: str | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.ca_certfile else 'http'}://{host}:{self.port}"

    def verify(self) -> ssl.SSLContext | bool:
        return ssl.create_default_context(cafile=self.ca_certfile) if self.ca_certfile else False


class FleetGateway:
    """An ASGI app that passes Fleet API requests to ``upstream`` and refuses everything else (see module doc)."""

    def __init__(self, upstream: Upstream, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.upstream = upstream
        self._transport = transport
        self._client: httpx.AsyncClient | None = None

    def client(self) -> httpx.AsyncClient:
        if self._client is None:  # made on the server's event loop, at the first request
            self._client = httpx.AsyncClient(base_url=self.upstream.base_url, verify=self.upstream.verify(),
                                             timeout=UPSTREAM_TIMEOUT, transport=self._transport)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = str(scope["method"])
        raw_path = bytes(scope.get("raw_path") or str(scope["path"]).encode("utf-8"))
        client = scope.get("client")
        peer = str(client[0]) if client else None
        if not allowed(method, raw_path, bytes(scope.get("query_string", b""))):
            log.warning("refused %s %r from %s: only the Fleet API is served here", method, raw_path, peer)
            await _plain(send, 404, b"not found: this port serves Flower's Fleet API (/v1/fleet/) only\n")
            return
        request = self.client().build_request(method, raw_path.decode("ascii"), content=_body(receive),
                                              headers=forward_headers(scope["headers"], peer))
        try:
            response = await self.client().send(request, stream=True)
        except (httpx.HTTPError, ConnectionResetError) as exc:
            log.warning("SuperLink at %s unreachable: %s", self.upstream.base_url, exc)
            await _plain(send, 502, b"the SuperLink behind this gateway is unreachable\n")
            return
        try:
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": response_headers(response.headers.raw)})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    """The client's request body, streamed as it arrives."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client disconnected")
        chunk = bytes(message.get("body", b""))
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


async def _plain(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); :class:`ValueError` naming the text otherwise."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        ipaddress.IPv6Address(host)  # ValueError if not an IPv6 address
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, as [::1]:9092")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT with a port in [1, 65535]")
    return host, int(port)


def _args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fedshrink.deploy.gateway",
                                description="Serve Flower's Fleet API, and nothing else, in front of a SuperLink.")
    p.add_argument("--listen", required=True, help="HOST:PORT the SuperNodes dial (e.g. 0.0.0.0:9092)")
    p.add_argument("--upstream", required=True, help="HOST:PORT of the SuperLink (e.g. 127.0.0.1:9093)")
    p.add_argument("--ssl-certfile", help="the server certificate (server.pem) presented to SuperNodes")
    p.add_argument("--ssl-keyfile", help="its private key (server.key)")
    p.add_argument("--ssl-ca-certfile", help="ca.crt, to verify the SuperLink")
    p.add_argument("--insecure", action="store_true", help="plain HTTP on both sides (explicitly)")
    args = p.parse_args(argv)
    tls = (args.ssl_certfile, args.ssl_keyfile, args.ssl_ca_certfile)
    if args.insecure == any(tls) or not (args.insecure or all(tls)):
        p.error("give --ssl-certfile, --ssl-keyfile and --ssl-ca-certfile, or --insecure alone")
    for flag in ("listen", "upstream"):
        try:
            parse_address(getattr(args, flag))
        except ValueError as exc:
            p.error(f"--{flag}: {exc}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    args = _args(argv)
    host, port = parse_address(args.listen)
    up_host, up_port = parse_address(args.upstream)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per forwarded poll
    app = FleetGateway(Upstream(up_host, up_port, None if args.insecure else args.ssl_ca_certfile))
    log.info("Fleet gateway on %s:%d -> SuperLink %s (Fleet API and /health only)", host, port, app.upstream.base_url)
    uvicorn.run(app, host=host, port=port, ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
                proxy_headers=False, server_header=False, access_log=False, lifespan="on", log_level="info")


if __name__ == "__main__":
    main(sys.argv[1:])
