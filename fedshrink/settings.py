"""Run settings, declared by the packages that use them.

Every package that can be configured from a run declares its settings next to
its code, as a frozen dataclass whose fields are made with :func:`option`::

    @dataclass(frozen=True)
    class DataSettings(Section):
        title: ClassVar[str] = "data"
        dataset: str = option("digits", "data set to train on", rule=one_of(lambda: SOURCES))
        dirichlet_alpha: float = option(0.5, "Dirichlet concentration", rule=greater_than(0))

A field's run-config key is its name in kebab case (``dirichlet-alpha``) unless
``key=`` names another. Its type is the default's type (``bool``, ``int``,
``float`` or ``str``). A :class:`Rule` checks the value and words what is
allowed; choices come from the registry that holds them, read when checked,
so a codec, policy, defence or model registered later is allowed at once.

A section validates every field when it is built, so a bad value fails where
it is given, with one line naming the setting and what is allowed
(:class:`~fedshrink.errors.ConfigError`). Registered classes (defences,
attacks, fragment policies) declare their own options the same way;
:meth:`Section.extra_settings` lets the section that owns a registry accept
them, and their values are kept in the section's ``extras``.

:class:`~fedshrink.config.RunConfig` composes the sections. pyproject's
``[tool.flwr.app.config]`` and ``docs/settings.md`` are generated from them
(``scripts/gen_settings.py``), and a test fails when they differ.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Self, TypeVar

from fedshrink.errors import ConfigError

Value = bool | int | float | str
C = TypeVar("C")
KINDS: tuple[type, ...] = (bool, int, float, str)
_KIND_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


@dataclass(frozen=True)
class Rule:
    """A check on a setting's value and the words that say what it allows."""

    check: Callable[[Any], bool]
    words: str | Callable[[], str]
    validate: Callable[[Any], object] | None = None  # a parser whose own ConfigError says what is wrong

    def allowed(self) -> str:
        return self.words() if callable(self.words) else self.words

    def noting(self, note: str) -> Rule:
        """The same rule, its words followed by ``(note)``, e.g. ``at_least(0).noting("0 = off")``."""
        return Rule(self.check, lambda: f"{self.allowed()} ({note})".strip(), self.validate)


ANY = Rule(lambda v: True, "")


def at_least(lo: float) -> Rule:
    return Rule(lambda v: v >= lo, f">= {lo:g}")


def greater_than(lo: float) -> Rule:
    return Rule(lambda v: v > lo, f"> {lo:g}")


def between(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Rule:
    """``lo <= v <= hi``, either end open."""

    def check(v: float) -> bool:
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

    return Rule(check, f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}")


def one_of(names: Iterable[str] | Callable[[], Iterable[str]]) -> Rule:
    """One of a fixed tuple, or of a registry's names read at check time (pass a callable)."""

    def current() -> list[str]:
        return list(names() if callable(names) else names)

    return Rule(lambda v: v in current(), lambda: "one of " + ", ".join(repr(n) for n in current()))


def satisfies(check: Callable[[Any], bool], words: str | Callable[[], str]) -> Rule:
    """A free-form rule (e.g. a parser that must accept the value)."""
    return Rule(check, words)


def accepted_by(parse: Callable[[Any], object], words: str | Callable[[], str]) -> Rule:
    """The value is allowed when ``parse(value)`` raises no :class:`ConfigError`.

    A value it refuses gets the parser's own account of what is wrong (e.g.
    "shares summing to 1 (they sum to 1.1)"), under the setting's key.
    """

    def check(v: Any) -> bool:
        try:
            parse(v)
        except ConfigError:
            return False
        return True

    return Rule(check, words, parse)


@dataclass(frozen=True)
class Setting:
    """One run setting: its key, type, default, help and rule."""

    key: str
    name: str  # the dataclass field
    kind: type
    default: Value
    help: str
    rule: Rule = ANY

    def allowed(self) -> str:
        """What the setting allows, in words (for errors and the settings docs)."""
        words = self.rule.allowed()
        if self.kind is str:
            return words or "a string"
        if self.kind is bool:
            return "true or false"
        return f"{_KIND_WORDS[self.kind]} {words}".strip()

    def parse(self, value: Any) -> Value:
        """The value, type-checked (an int is taken as a float where a float is due) and checked by the rule."""
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        ok_type = isinstance(value, self.kind) and not (self.kind is not bool and isinstance(value, bool))
        if not ok_type or (self.kind is float and not math.isfinite(value)):
            raise ConfigError(self.key, value, self.allowed())
        if self.rule.validate is not None:
            try:
                self.rule.validate(value)
            except ConfigError as exc:
                raise ConfigError(self.key, value, exc.allowed) from None
        elif not self.rule.check(value):
            raise ConfigError(self.key, value, self.allowed())
        return value  # type: ignore[no-any-return]  # checked to be one of KINDS above


def option(default: Value, help: str, *, rule: Rule = ANY, key: str | None = None) -> Any:
    """A dataclass field that is a run setting (see the module doc)."""
    if type(default) not in KINDS:
        raise TypeError(f"a setting's default must be bool, int, float or str, got {default!r}")
    return field(default=default, metadata={"option": (key, help, rule)})


def settings_of(cls: type) -> tuple[Setting, ...]:
    """The settings a dataclass declares with :func:`option`, in field order."""
    out = []
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("option")
        if meta is None:
            continue
        key, help_text, rule = meta
        default = f.default
        assert isinstance(default, bool | int | float | str)  # option() refuses anything else
        out.append(Setting(key or f.name.replace("_", "-"), f.name, type(default), default, help_text, rule))
    return tuple(out)


def validate_options(obj: Any) -> None:
    """Check (and coerce ints to floats in) every :func:`option` field of a frozen dataclass instance."""
    for s in settings_of(type(obj)):
        object.__setattr__(obj, s.name, s.parse(getattr(obj, s.name)))


def merge_settings(groups: Iterable[Sequence[Setting]], owner: str) -> tuple[Setting, ...]:
    """Settings of several classes as one tuple; a key declared twice must be declared alike."""
    seen: dict[str, Setting] = {}
    for group in groups:
        for s in group:
            prev = seen.get(s.key)
            if prev is not None and (prev.kind, prev.default, prev.allowed()) != (s.kind, s.default, s.allowed()):
                raise TypeError(f"{owner}: setting {s.key!r} is declared twice, differently")
            seen.setdefault(s.key, s)
    return tuple(seen.values())


def options_from(cls: type[C], values: Mapping[str, Any]) -> C:
    """An instance of a registered config class built from run-setting values (keys as in :func:`settings_of`)."""
    kwargs = {s.name: values[s.key] for s in settings_of(cls) if s.key in values}
    return cls(**kwargs)


@dataclass(frozen=True)
class Section:
    """Base of a package's settings (see the module doc).

    Subclasses set ``title`` (the heading in the settings docs) and may
    override :meth:`extra_settings` (settings declared by registered classes)
    and :meth:`check` (rules between the section's own settings).
    """

    title: ClassVar[str] = ""
    extras: Mapping[str, Value] = field(default_factory=dict, repr=False, hash=False)

    def __post_init__(self) -> None:
        validate_options(self)
        known = {s.key: s for s in self.extra_settings()}
        values: dict[str, Value] = {s.key: s.default for s in known.values()}
        for key, value in self.extras.items():
            if key not in known:
                raise ConfigError(key, value, f"a setting of section {self.title!r}")
            values[key] = known[key].parse(value)
        object.__setattr__(self, "extras", MappingProxyType(values))
        self.check()

    @classmethod
    def extra_settings(cls) -> tuple[Setting, ...]:
        return ()

    @classmethod
    def settings(cls) -> tuple[Setting, ...]:
        return settings_of(cls) + cls.extra_settings()

    def check(self) -> None:
        """Rules between this section's settings; raise :class:`ConfigError`."""

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> Self:
        """Built from kebab-case keys (each must be one of :meth:`settings`); missing ones take their default."""
        own = {s.key: s for s in settings_of(cls)}
        extra = {s.key for s in cls.extra_settings()}
        kwargs: dict[str, Any] = {}
        extras: dict[str, Any] = {}
        for key, value in values.items():
            if key in own:
                kwargs[own[key].name] = value
            elif key in extra:
                extras[key] = value
            else:
                raise ConfigError(key, value, f"a setting of section {cls.title!r}")
        return cls(extras=extras, **kwargs)

    def to_values(self) -> dict[str, Value]:
        """Every setting's value under its key (extras included)."""
        out: dict[str, Value] = {s.key: getattr(self, s.name) for s in settings_of(type(self))}
        out.update(self.extras)
        return out
