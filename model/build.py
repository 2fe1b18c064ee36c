"""Building layer stacks by hand, for scenarios: a layer is a nested dict.

    stack({"a": "lower data", "d": {"x": "1"}}, upper={})

Values: ``str`` or ``bytes`` is a regular file, ``dict`` a directory, and the classes below
say more (modes, owners, times, xattrs, symlinks, hard links, whiteouts, opaque directories).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from model.features import DEFAULT, Features
from model.frozen import FrozenMap
from model.state import ROOT, Inode, Layer, Overlay, Path, WhiteoutForm

MTIME = 1_600_000_000_000_000_000  # a fixed, known time for everything built by hand


@dataclass(frozen=True)
class File:
    data: bytes | str = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME
    xattrs: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Dir:
    children: Mapping[str, Entry] = field(default_factory=dict)
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    opaque: bool = False


@dataclass(frozen=True)
class Symlink:
    target: str
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME


@dataclass(frozen=True)
class Fifo:
    mode: int = 0o644
    mtime: int = MTIME


@dataclass(frozen=True)
class HardLink:
    """Another name for the file at ``path`` (slash-separated, in the same layer)."""

    path: str


@dataclass(frozen=True)
class Whiteout:
    form: WhiteoutForm = "chardev"


Entry = str | bytes | dict[str, "Entry"] | File | Dir | Symlink | Fifo | HardLink | Whiteout


class _Builder:
    def __init__(self, first_ino: int) -> None:
        self.next_ino = first_ino
        self.entries: dict[Path, int] = {}
        self.inodes: dict[int, Inode] = {}
        self.links: list[tuple[Path, str]] = []

    def add(self, path: Path, entry: Entry) -> None:
        if isinstance(entry, HardLink):
            self.links.append((path, entry.path))
            return
        ino = self.next_ino
        self.next_ino += 1
        self.entries[path] = ino
        self.inodes[ino] = self.inode(entry)
        children = entry if isinstance(entry, dict) else getattr(entry, "children", None)
        if isinstance(entry, dict | Dir):
            assert children is not None
            for name, sub in children.items():
                self.add((*path, name), sub)

    @staticmethod
    def inode(entry: Entry) -> Inode:
        match entry:
            case str() | bytes():
                return _file(File(entry))
            case File():
                return _file(entry)
            case dict():
                return Inode("dir", mode=0o755, mtime=MTIME)
            case Dir():
                return Inode(
                    "dir", mode=entry.mode, uid=entry.uid, gid=entry.gid, mtime=entry.mtime,
                    xattrs=FrozenMap(entry.xattrs), opaque=entry.opaque,
                )  # fmt: skip
            case Symlink():
                return Inode(
                    "symlink", mode=0o777, uid=entry.uid, gid=entry.gid, mtime=entry.mtime,
                    target=entry.target,
                )  # fmt: skip
            case Fifo():
                return Inode("fifo", mode=entry.mode, mtime=entry.mtime)
            case Whiteout():
                return Inode("whiteout", mode=0, whiteout_form=entry.form)
        raise TypeError(f"not a layer entry: {entry!r}")

    def layer(self) -> Layer:
        for path, target in self.links:
            self.entries[path] = self.entries[tuple(target.split("/"))]
        return Layer(FrozenMap(self.entries), FrozenMap(self.inodes))


def _file(f: File) -> Inode:
    data = f.data.encode() if isinstance(f.data, str) else f.data
    return Inode(
        "file", mode=f.mode, uid=f.uid, gid=f.gid, mtime=f.mtime,
        xattrs=FrozenMap(f.xattrs), data=data,
    )  # fmt: skip


def layer(tree: Mapping[str, Entry] | Dir, first_ino: int) -> tuple[Layer, int]:
    """A layer from a tree; returns it and the next free inode number."""
    b = _Builder(first_ino)
    b.add(ROOT, tree if isinstance(tree, Dir) else dict(tree))
    return b.layer(), b.next_ino


def stack(
    *lowers: Mapping[str, Entry] | Dir,
    upper: Mapping[str, Entry] | Dir | None = None,
    read_only: bool = False,
    features: Features = DEFAULT,
) -> Overlay:
    """An overlay of ``lowers`` (the first on top) and an upper layer (empty unless given;
    none at all when ``read_only``)."""
    ino = 100
    built = []
    for tree in lowers:
        lay, ino = layer(tree, ino)
        built.append(lay)
    up = None
    if not read_only:
        up, ino = layer(upper if upper is not None else {}, ino)
    return Overlay(tuple(built), up, features, next_ino=max(ino, 1_000_000))
