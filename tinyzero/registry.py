"""Names a config key chooses from: `algorithm.adv_estimator=grpo` is a lookup in a registry, and a
name it does not hold is a user's mistake that lists the names it does (veRL's `get_adv_estimator_fn`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeVar

from tinyzero.errors import ConfigError

T = TypeVar("T")
DECORATE = object()


def not_allowed(key: str, value: Any, allowed: Iterable) -> ConfigError:
    """The one message for a value outside a key's choices (the schema's and every registry's)."""
    return ConfigError(f"{key}={value!r} is not allowed; choose one of {list(allowed)}")


class Registry(Mapping[str, T]):
    """`name -> value` for the config key `key`, in the order registered (aliases right after their name).

    `registry[name]` raises ConfigError naming `key` and the registered names; iterating gives the names.
    """

    def __init__(self, key: str):
        self.key = key
        self._entries: dict[str, T] = {}

    def register(self, name: str, value: Any = DECORATE, *, aliases: tuple[str, ...] = ()) -> Any:
        """`register(name, value)` registers `value`; `@register(name)` the function or class below it."""

        def add(value: T) -> T:
            for each in (name, *aliases):
                if each in self._entries:
                    raise ValueError(f"{self.key}: {each!r} is registered twice")
                self._entries[each] = value
            return value

        return add if value is DECORATE else add(value)

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable value, e.g. a list from the command line
            raise not_allowed(self.key, name, self._entries) from None

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.key!r}: {', '.join(self._entries)})"
