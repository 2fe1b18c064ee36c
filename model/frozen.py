"""An immutable mapping, so that model state is a value (no rollback is ever needed)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class FrozenMap(Mapping[K, V], Generic[K, V]):
    """A hashable, immutable dict. Updates return a new map."""

    __slots__ = ("_d", "_h")

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        self._d: dict[K, V] = dict(items)
        self._h: int | None = None

    def __getitem__(self, key: K) -> V:
        return self._d[key]

    def __iter__(self) -> Iterator[K]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        if self._h is None:
            self._h = hash(frozenset(self._d.items()))
        return self._h

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenMap):
            return self._d == other._d
        if isinstance(other, Mapping):
            return self._d == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMap({self._d!r})"

    def set(self, key: K, value: V) -> FrozenMap[K, V]:
        d = dict(self._d)
        d[key] = value
        return FrozenMap(d)

    def delete(self, key: K) -> FrozenMap[K, V]:
        d = dict(self._d)
        d.pop(key, None)
        return FrozenMap(d)

    def update(self, other: Mapping[K, V] | Iterable[tuple[K, V]]) -> FrozenMap[K, V]:
        d = dict(self._d)
        d.update(other)
        return FrozenMap(d)


EMPTY: FrozenMap[str, bytes] = FrozenMap()
