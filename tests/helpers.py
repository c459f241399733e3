"""Helpers shared by test modules (importable because pytest puts ``tests/`` on ``sys.path``)."""

from __future__ import annotations

import socket

import pytest


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



def shrink_distillation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Server-side distillation at test size in this process's runs: a transfer set of 512 images (not 16,384),
    search rungs of 10 and 20 steps (not 100 and 300), 3 latency repeats. Every phase still runs: the transfer set,
    the race of every candidate, the student's distillation, pruning, fine-tuning and export."""
    from dataclasses import replace

    from fedshrink.distill.pipeline import DistillConfig
    from fedshrink.distill.settings import DistillSettings

    full = DistillSettings.config

    def small(self: DistillSettings, *, seed: int) -> DistillConfig:
        return replace(full(self, seed=seed), transfer_size=512, search_rungs=(10, 20),
                       latency_repeats=3)

    monkeypatch.setattr(DistillSettings, "config", small)
