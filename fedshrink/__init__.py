"""fedshrink: federated learning that shrinks models for small devices.

A Flower ServerApp/ClientApp pair trains a global model from clients that each
hold a fragment of it; the pieces live in sub-packages with one job each
(see ``docs`` in the README and DESIGN.md).
"""

from fedshrink.errors import ConfigError, DecodeError, FedShrinkError

__all__ = ["ConfigError", "DecodeError", "FedShrinkError", "__version__"]
__version__ = "0.1.0"
