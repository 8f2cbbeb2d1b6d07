"""A small name -> factory registry with helpful errors."""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories; unknown names raise one line listing the valid choices. Keywords given to
    ``register`` (e.g. a title) are kept in ``info[name]``."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}
        self.info: dict[str, dict] = {}

    def register(self, name: str, **info) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = factory
            self.info[name] = info
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._items:
            raise UnknownNameError(f"unknown {self.kind} '{name}'; valid choices: {', '.join(self.names())}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
