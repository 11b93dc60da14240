"""The one registration idiom of sssi: backbones, heads and dataset layouts are entered
into a name -> object table by a decorator, once per name."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any, TypeVar

T = TypeVar("T")


def register_into(table: MutableMapping[str, Any], kind: str, name: str
                  ) -> Callable[[T], T]:
    """A decorator that enters its target into ``table`` under ``name``. A second,
    different target under the same name is a programming error (two entries would
    silently shadow each other in configs); registering the same one again is harmless."""

    def wrap(target: T) -> T:
        known = table.get(name)
        if known is not None and known is not target:
            raise ValueError(f"{kind} {name!r} is already registered (by {known!r})")
        table[name] = target
        return target

    return wrap
