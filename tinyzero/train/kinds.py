"""The kinds of value a config key takes, each checking a value and saying in words what it allows (what
its error names), and `check_values`: a config against a table of `Key`s (tinyzero/train/schema.py)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from tinyzero.errors import ConfigError
from tinyzero.registry import not_allowed

NO_DEFAULT = object()


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Kind:
    """A key's type and allowed values; `check` raises ConfigError `key=value must be <allowed>`."""

    allowed: str = "any value"

    def ok(self, value: Any) -> bool:
        return True

    def check(self, key: str, value: Any) -> None:
        if not self.ok(value):
            raise ConfigError(f"{key}={value!r} must be {self.allowed}")


@dataclass(frozen=True)
class OneOf(Kind):
    """One of `choices`: a registry's names, or a table's keys (the table the code looks the value up in)."""

    choices: Collection

    @property
    def allowed(self) -> str:
        return f"one of {list(self.choices)}"

    def ok(self, value: Any) -> bool:
        try:
            return value in self.choices
        except TypeError:  # an unhashable value (a list) in a dict's keys
            return False

    def check(self, key: str, value: Any) -> None:
        if not self.ok(value):
            raise not_allowed(key, value, self.choices)


@dataclass(frozen=True)
class Count(Kind):
    """An integer (a bool is not one) >= `low` (None: any), or `default`, which the message calls `default_name`."""

    low: int | None = 0
    default: Any = NO_DEFAULT
    default_name: str = ""

    @property
    def allowed(self) -> str:
        integer = "an integer" if self.low is None else f"an integer >= {self.low}"
        return integer if self.default is NO_DEFAULT else f"{self.default_name} or {integer}"

    def ok(self, value: Any) -> bool:
        if self.default is not NO_DEFAULT and value == self.default:
            return True
        return is_count(value) and (self.low is None or value >= self.low)


@dataclass(frozen=True)
class Number(Kind):
    """An int or a float (not a bool) between `low` and `high` (None: unbounded), each bound open or
    closed; or null when `nullable`."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    nullable: bool = False

    @property
    def allowed(self) -> str:
        if self.high is not None:
            number = f"a number in {'(' if self.low_open else '['}{self.low}, {self.high}]"
        elif self.low is not None:
            number = f"a number {'>' if self.low_open else '>='} {self.low}"
        else:
            number = "a number"
        return f"null or {number}" if self.nullable else number

    def ok(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if not is_number(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        return above and (self.high is None or value <= self.high)


@dataclass(frozen=True)
class Text(Kind):
    """A string, or null when `nullable`."""

    nullable: bool = False

    @property
    def allowed(self) -> str:
        return "null or a string" if self.nullable else "a string"

    def ok(self, value: Any) -> bool:
        return isinstance(value, str) or (self.nullable and value is None)


@dataclass(frozen=True)
class Section(Kind):
    """A group of keys (listed under it), or null: none of them."""

    allowed: str = "null or a group of keys"

    def ok(self, value: Any) -> bool:
        return value is None or isinstance(value, DictConfig)


@dataclass(frozen=True)
class Free(Kind):
    """What another library takes (Lightning's `devices`): said here, checked there."""

    allowed: str = "any value"


@dataclass(frozen=True)
class Names(Kind):
    """A non-empty list of names (module names, e.g. LoRA's target modules)."""

    allowed: str = "a non-empty list of names, e.g. [q_proj, v_proj]"

    def ok(self, value: Any) -> bool:
        names = OmegaConf.to_object(value) if OmegaConf.is_list(value) else value
        return isinstance(names, list) and bool(names) and all(isinstance(name, str) and name for name in names)


FLAG = OneOf((True, False))
INT = Count(None)
NUMBER = Number()
TEXT = Text()


@dataclass(frozen=True)
class Key:
    """A config key: its `kind` (type and allowed values), its meaning, and, when only some group
    options have it, which (`only`); a key every config has is checked even when a command deletes it."""

    name: str
    kind: Kind
    meaning: str
    only: str | None = None


def section(prefix: str, entries: dict[str, tuple]) -> dict[str, Key]:
    """`{name: (kind, meaning[, only])}` under `prefix`."""
    return {f"{prefix}{name}": Key(f"{prefix}{name}", *entry) for name, entry in entries.items()}


ABSENT = object()


def check_values(cfg: DictConfig, schema: dict[str, Key]) -> None:
    """Each key's value against its entry: a ConfigError names the first key whose value is not allowed.
    A value that resolves only inside a Hydra run (`${hydra:...}`) is checked there."""
    for key, entry in schema.items():
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if isinstance(node, DictConfig) and OmegaConf.is_missing(node, leaf):  # `???`: a key the command must set
            raise ConfigError(f"{key} is required: {entry.meaning}")
        try:
            value = OmegaConf.select(cfg, key, default=ABSENT)
        except InterpolationResolutionError:
            continue
        if value is ABSENT and entry.only is not None:
            continue
        entry.kind.check(key, None if value is ABSENT else value)
