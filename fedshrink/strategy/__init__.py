"""The Flower Strategy (thin) and the aggregation maths (pure functions)."""

from fedshrink.strategy.aggregate import weighted_mean, weighted_metric_mean
from fedshrink.strategy.fedshrink import FedShrink, RoundOutcome, numpy_to_record, record_to_numpy
from fedshrink.strategy.replies import Dropped, Expected, GoodReply, parse_reply

__all__ = [
    "Dropped",
    "Expected",
    "FedShrink",
    "GoodReply",
    "RoundOutcome",
    "numpy_to_record",
    "parse_reply",
    "record_to_numpy",
    "weighted_mean",
    "weighted_metric_mean",
]
