"""Robust aggregation as Strategy wrappers, in the manner of Flower's ``DPFixedClipping(strategy, ...)``.

A wrapper is itself a Flower ``Strategy`` that forwards every call to the
strategy it wraps, and installs its stage (:mod:`.defences`) on the innermost
:class:`~fedshrink.strategy.FedShrink`, whose aggregation step runs the stages
over the per-client contributions in global coordinates
(:meth:`FedShrink.contributions`, overridden by ``FragmentStrategy`` for
fragments). Wrappers compose; the outermost runs first, as it would see the
replies first::

    strategy = NormClipping(RobustAggregation(FragmentStrategy(...), MedianConfig()))   # clip, then median
    strategy = build_defence(FragmentStrategy(...), "clip+median", params)              # the same, by name
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedshrink.errors import ConfigError
from fedshrink.robust.defences import DEFENCES, ClipConfig, DefenceConfig, DefenceEnv, FLTrustConfig
from fedshrink.robust.fold import Combiner, Stage
from fedshrink.strategy.fedshrink import FedShrink

log = logging.getLogger("fedshrink.robust")


def unwrap(strategy: Strategy) -> FedShrink:
    """The innermost FedShrink of a stack of wrappers."""
    while isinstance(strategy, AggregationWrapper):
        strategy = strategy.strategy
    if not isinstance(strategy, FedShrink):
        raise TypeError(f"robust wrappers need a fedshrink FedShrink strategy, got {type(strategy).__name__}")
    return strategy


class AggregationWrapper(Strategy):
    """Forwards everything to ``strategy``; installs ``stage`` in the inner FedShrink's aggregation."""

    def __init__(self, strategy: Strategy, stage: Stage) -> None:
        self.strategy = strategy
        self.base = unwrap(strategy)
        self.stage = stage
        if isinstance(stage, Combiner) and any(isinstance(s, Combiner) for s in self.base.aggregation_stages):
            names = ", ".join(n for n, cls in DEFENCES.items() if cls.combines)
            raise ConfigError("defence", stage.name, f"at most one combining rule ({names})")
        self.base.aggregation_stages.insert(0, stage)  # outer wrappers run first

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        log.info("%s(%s) around:", type(self).__name__, self.stage.name)
        self.strategy.summary()


class RobustAggregation(AggregationWrapper):
    """Any registered defence around ``strategy`` (e.g. ``RobustAggregation(s, MedianConfig())``)."""

    def __init__(self, strategy: Strategy, rule: DefenceConfig, env: DefenceEnv | None = None) -> None:
        self.rule = rule
        super().__init__(strategy, rule.build(env or DefenceEnv()))


class NormClipping(RobustAggregation):
    """Clip each decoded update's norm (``max_norm == 0``: adaptive, the round's median RMS)."""

    def __init__(self, strategy: Strategy, max_norm: float = 0.0) -> None:
        super().__init__(strategy, ClipConfig(max_norm))


class FLTrust(RobustAggregation):
    """FLTrust trust scores against a root update the server computes on its labelled root set."""

    def __init__(self, strategy: Strategy, env: DefenceEnv, root_size: int = 100) -> None:
        super().__init__(strategy, FLTrustConfig(root_size), env)


def build_defence(strategy: Strategy, defences: Sequence[DefenceConfig], env: DefenceEnv | None = None) -> Strategy:
    """Wrap ``strategy`` in ``defences`` (the first is the outermost wrapper, so it runs first)."""
    for rule in reversed(list(defences)):
        strategy = RobustAggregation(strategy, rule, env)
    return strategy
