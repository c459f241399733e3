"""DP-FedAvg on the server: the planner and strategy that carry the privacy state, and what the run records.

:func:`private_parts` builds, from a run's settings, the
:class:`~.controller.PrivacyController` and its two stages; the factory then
uses :class:`PrivatePlanner` (each instruction carries the round's
:class:`~fedshrink.privacy.client.ClientPrivacy`) and :class:`PrivateStrategy`
(which tells the controller how many clients are connected and sampled, and
accounts each round after aggregation). :func:`privacy_record`,
:func:`privacy_summary` and :func:`privacy_text` are what the round loop writes
to ``metrics.jsonl``, ``summary.json`` and the console (empty for a run
without privacy).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedshrink.compression import Chain
from fedshrink.privacy.client import WITHIN_METRIC
from fedshrink.privacy.controller import PrivacyController
from fedshrink.privacy.settings import PrivacySettings
from fedshrink.privacy.stages import HolderNoise, UniformClip
from fedshrink.protocol import Hello
from fedshrink.strategy.plan import Assignment, Planner
from fedshrink.strategy.rounds import ShrinkStrategy
from fedshrink.strategy.stages import Stage


def private_parts(settings: PrivacySettings, *, rounds: int, seed: int
                  ) -> tuple[PrivacyController | None, list[Stage]]:
    """The run's privacy controller and aggregation stages (None and none when ``dp-mode = off``)."""
    if not settings.enabled:
        return None, []
    controller = PrivacyController(settings, rounds=rounds, seed=seed)
    return controller, [UniformClip(controller), HolderNoise(controller)]


class PrivatePlanner(Planner):
    """A :class:`~fedshrink.strategy.plan.Planner` whose instructions carry the round's private step."""

    def __init__(self, *args: Any, privacy: PrivacyController, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.privacy = privacy

    def assign(self, node: Hello, server_round: int, node_key: int, global_state: Mapping[str, np.ndarray],
               widths: Sequence[float], base: int | None = None) -> Assignment:
        assignment = super().assign(node, server_round, node_key, global_state, widths, base)
        self.privacy.note_assignment(node_key, Chain.parse(assignment.instruction.uplink).lossy)
        instruction = dataclasses.replace(assignment.instruction, privacy=self.privacy.client_privacy())
        return dataclasses.replace(assignment, instruction=instruction)


class PrivateStrategy(ShrinkStrategy):
    """A :class:`~fedshrink.strategy.rounds.ShrinkStrategy` that keeps the run's privacy ledger."""

    def __init__(self, planner: Planner, *, privacy: PrivacyController, **kwargs: Any) -> None:
        super().__init__(planner, **kwargs)
        self.privacy = privacy
        self._round = 0

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        self._round = server_round
        return super().configure_train(server_round, arrays, config, grid)

    def connected_nodes(self, grid: Grid) -> list[int]:
        nodes = super().connected_nodes(grid)
        self.privacy.plan_round(self._round, len(nodes), self.sample_count(len(nodes)))
        return nodes

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        arrays, metrics = super().aggregate_train(server_round, replies)
        outcome = self.outcomes[-1]
        within = [r.metrics.get(WITHIN_METRIC) for r in outcome.accepted]
        outcome.notes["privacy"] = self.privacy.end_round(server_round, released=arrays is not None, within=within)
        return arrays, metrics

    def checkpoint_state(self) -> dict[str, object]:
        return {**super().checkpoint_state(), "privacy": self.privacy.state_dict()}

    def restore_state(self, state: Mapping[str, object]) -> None:
        super().restore_state(state)
        privacy = state.get("privacy")
        if not isinstance(privacy, dict):
            raise ValueError("checkpoint strategy state: 'privacy' is missing (a run with dp-mode set)")
        self.privacy.load_state_dict(privacy)


# -- what the run records -------------------------------------------------------------------------
def _controller(strategy: object) -> PrivacyController | None:
    return strategy.privacy if isinstance(strategy, PrivateStrategy) else None


def privacy_record(strategy: object) -> dict[str, Any]:
    """The round's ``epsilon`` and ``delta`` for metrics.jsonl (epsilon None: infinite, no noise); {} without DP."""
    ctl = _controller(strategy)
    return {} if ctl is None else ctl.epsilons()


def privacy_text(strategy: object) -> str:
    """The console line's part, e.g. ``"  eps 2.31"`` ('' without DP)."""
    ctl = _controller(strategy)
    if ctl is None:
        return ""
    eps = ctl.epsilons()["epsilon"]
    return "  eps inf" if eps is None else f"  eps {eps:.3g}"


def privacy_summary(strategy: object) -> dict[str, Any]:
    """summary.json's privacy figures, and ``privacy``: the report's one line; {} without DP."""
    ctl = _controller(strategy)
    if ctl is None:
        return {}
    figures = ctl.epsilons()
    eps = figures["epsilon"]
    s = ctl.settings
    clip = f"adaptive clip (quantile {s.dp_clip_quantile:g}, now {ctl.clip:.3g})" if s.adaptive \
        else f"clip {ctl.clip:g}"
    text = (f"{s.dp_mode} DP-FedAvg, epsilon {'inf' if eps is None else f'{eps:.3g}'} at delta "
            f"{figures['delta']:.3g} after {ctl.ledger.rounds} rounds (noise multiplier {ctl.multiplier or 0:.3g}, "
            f"{clip}; sampling without replacement, replace-one)")
    return {**figures, "dp-mode": s.dp_mode, "noise-multiplier": ctl.multiplier, "dp-clip": ctl.clip,
            "rounds-released": ctl.ledger.rounds, "privacy": text}
