"""Helpers shared by test modules (importable because pytest puts ``tests/`` on ``sys.path``)."""

from __future__ import annotations

import socket


class FakeGrid:
    """The one part of Flower's Grid a Strategy's node sampling reads: the connected node ids."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return self.node_ids


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0

