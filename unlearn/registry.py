"""One registry shape for methods, curvature backends, membership scores and attribution methods."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from unlearn.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    info: Mapping[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """``@REG.register("name", flag=...)`` stores the decorated object itself and returns it unchanged;
    a second registration under one name and a lookup of an unknown name both raise, listing the known."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, **info: Any) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ConfigError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = Entry(name, obj, dict(info))
            return obj

        return deco

    def entry(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} '{name}'; known: {', '.join(self.names())}")
        return self._entries[name]

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def names(self, **flags: Any) -> list[str]:
        """Registered names in registration order, those whose info matches every given flag."""
        return [n for n, e in self._entries.items() if all(e.info.get(k) == v for k, v in flags.items())]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
