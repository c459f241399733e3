"""Loading a config of a named registry (attacks, defences) from its JSON form."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, TypeVar

from fedshrink.errors import ConfigError

C = TypeVar("C")


def config_from_json(kind: str, registry: Mapping[str, type[C]], text: str | Mapping[str, Any]) -> C:
    """The config named by ``text``'s ``"name"`` in ``registry``, built from its other keys.

    An unknown name or option is a :class:`ConfigError` naming ``kind`` and what is allowed.
    """
    data = dict(json.loads(text) if isinstance(text, str) else text)
    name = data.pop("name", None)
    cls = registry.get(str(name))
    if cls is None:
        raise ConfigError(kind, name, "one of " + ", ".join(map(repr, sorted(registry))))
    allowed = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]  # registries hold dataclasses
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{kind} {name}", unknown[0], "one of " + (", ".join(sorted(allowed)) or "no options"))
    return cls(**data)
