"""Named extension points: one small registry type for models, data sources, device models, profiles and codecs.

A :class:`Registry` is a ``dict`` from a name to what it names, so reading it
is plain dict use (``name in MODELS``, ``sorted(PROFILES)``). Registering a
name twice raises :class:`ValueError` (a programming error, at import);
looking up a name that is not there raises
:class:`~fedshrink.errors.ConfigError` naming the setting and every
registered name (a user's error, at start)::

    PROFILES: Registry[DeviceProfile] = Registry("profile", setting="profile")
    PROFILES.add("phone", DeviceProfile(...))
    PROFILES.lookup("phone")

    @MODELS.register("cnn")
    def cnn(spec): ...
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fedshrink.errors import ConfigError

T = TypeVar("T")
F = TypeVar("F")


class Registry(dict[str, T]):
    """Names of one ``kind`` (for messages) to their items; ``setting`` is the run setting that names them."""

    def __init__(self, kind: str, *, setting: str) -> None:
        super().__init__()
        self.kind = kind
        self.setting = setting

    def add(self, name: str, item: T) -> T:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self[name] = item
        return item

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator form of :meth:`add` for functions and classes."""

        def deco(item: F) -> F:
            self.add(name, item)  # type: ignore[arg-type]  # F is the registry's T at every use
            return item

        return deco

    def allowed(self) -> str:
        """``one of 'a', 'b'``: what a :class:`ConfigError` says is allowed."""
        return "one of " + ", ".join(map(repr, sorted(self)))

    def lookup(self, name: str, *, setting: str | None = None) -> T:
        """The item registered as ``name``; :class:`ConfigError` on ``setting`` (default the registry's) if none."""
        if name not in self:
            raise ConfigError(setting or self.setting, name, self.allowed())
        return self[name]
