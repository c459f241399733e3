"""A private strategy under test, built as the factory builds it, over the strategy harness's tiny model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from strategy_harness import TINY

from fedshrink.fragments import build_graph, make_policy
from fedshrink.models import ModelSpec, build_model
from fedshrink.privacy.server import PrivatePlanner, PrivateStrategy, private_parts
from fedshrink.privacy.settings import PrivacySettings
from fedshrink.strategy.plan import ReplyLimits
from fedshrink.training import TrainSettings


def make_private(spec: ModelSpec = TINY, *, rounds: int = 3, fragments: bool = False, uplink: str = "raw",
                 strategy: Mapping[str, Any] | None = None, **settings: Any) -> PrivateStrategy:
    """A :class:`PrivateStrategy`; ``settings`` are :class:`PrivacySettings` fields (``dp_mode`` etc.),
    ``strategy`` more of the strategy's keyword arguments (``clients_per_round``, ``fleet``)."""
    privacy, stages = private_parts(PrivacySettings(**settings), rounds=rounds, seed=0)
    assert privacy is not None
    planner = PrivatePlanner(spec, build_graph(build_model(spec)), TrainSettings(), uplink=uplink, downlink="raw",
                             fragments=fragments, policy=make_policy("static") if fragments else None,
                             reply_limits=ReplyLimits(), privacy=privacy)
    return PrivateStrategy(planner, privacy=privacy, min_train_clients=2, stages=stages, update_limit=0.0,
                           pruned_as_zero=False, **(strategy or {}))
