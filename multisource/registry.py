"""A small generic registry used for datasets, models and methods (timm-style)."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object mapping with aliases; duplicates are errors, unknown names list the choices."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    @staticmethod
    def _key(name: str) -> str:
        return name.strip().lower()

    def register(self, name: str, obj: T | None = None, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name`` (usable as a decorator when ``obj`` is omitted)."""

        def _do(o: T) -> T:
            key = self._key(name)
            if key in self._items or key in self._aliases:
                raise ValueError(f"{self.kind} '{name}' is already registered; pick another name.")
            for alias in aliases:  # check every alias first: a failed registration leaves nothing behind
                akey = self._key(alias)
                if akey == key or akey in self._items or akey in self._aliases:
                    raise ValueError(f"{self.kind} alias '{alias}' is already registered.")
            self._items[key] = o
            self._aliases.update((self._key(alias), key) for alias in aliases)
            return o

        return _do if obj is None else _do(obj)

    def canonical(self, name: str) -> str:
        """Canonical registered name for ``name`` or one of its aliases."""
        key = self._key(name)
        if key in self._items:
            return key
        if key in self._aliases:
            return self._aliases[key]
        raise KeyError(
            f"Unknown {self.kind} '{name}'. Available: {', '.join(self.list())}."
        )

    def get(self, name: str) -> T:
        return self._items[self.canonical(name)]

    def __contains__(self, name: str) -> bool:
        key = self._key(name)
        return key in self._items or key in self._aliases

    def list(self) -> list[str]:
        return sorted(self._items)

    def registered(self) -> list[str]:
        """Names in the order they were registered."""
        return list(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())
