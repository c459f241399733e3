"""fedshrink's own exceptions.

Every error a user can cause (a bad setting, a hostile payload, a bad reply)
is raised as a subclass of :class:`FedShrinkError`, with a message that names
the offending value. ``assert`` is kept for internal invariants only.
"""

from __future__ import annotations


class FedShrinkError(Exception):
    """Base class of every error fedshrink raises on purpose."""


class ConfigError(FedShrinkError, ValueError):
    """A run setting is unknown or out of range.

    The message is one line: the setting, the bad value and what is allowed.
    """

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        super().__init__(f"invalid setting {key}={value!r}: allowed {allowed}")


class DataError(FedShrinkError):
    """A data set cannot be loaded or split as asked."""


class DecodeError(FedShrinkError, ValueError):
    """Bytes from the network are malformed; names the tensor and the fault."""

    def __init__(self, tensor: str, fault: str) -> None:
        self.tensor = tensor
        self.fault = fault
        super().__init__(f"cannot decode tensor {tensor!r}: {fault}")


class EncodeError(FedShrinkError, ValueError):
    """A tensor cannot be encoded as asked (non-finite values, a mask that is not 0/1, ...)."""

    def __init__(self, tensor: str, fault: str) -> None:
        self.tensor = tensor
        self.fault = fault
        super().__init__(f"cannot encode tensor {tensor!r}: {fault}")


class ReplyError(FedShrinkError):
    """A client's reply is unusable (wrong keys, shapes, counts, values)."""


class DistillError(FedShrinkError):
    """Server-side distillation cannot run as asked (empty proxy, no student fits the budget ...)."""
