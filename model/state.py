"""The state of an overlay: its layers, as immutable values.

A layer is what one directory tree on disk holds, in overlay terms: each path names an inode,
and names that share an inode are hard links. Whiteouts, opaque directories, redirects and
origins are the overlay's on-disk annotations (overlayfs.rst "whiteouts and opaque
directories", "Redirect dir", "Non-standard behavior"); the on-disk encoding of each one
(char device 0/0 or xattr whiteout, ``trusted.`` or ``user.`` prefix) is the adapters' concern.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from model.features import DEFAULT, Features
from model.frozen import EMPTY, FrozenMap

Path = tuple[str, ...]
ROOT: Path = ()

Kind = Literal["file", "dir", "symlink", "fifo", "chr", "whiteout"]
WhiteoutForm = Literal["chardev", "xattr"]


@dataclass(frozen=True)
class Inode:
    """One object in one layer. Hard links are several paths naming the same inode."""

    kind: Kind
    mode: int = 0o644  # permission bits only (S_IMODE)
    uid: int = 0
    gid: int = 0
    mtime: int | None = 0  # nanoseconds; None once set to "now", which no model can predict
    xattrs: FrozenMap[str, bytes] = EMPTY  # xattrs a user can see; never the overlay's own
    data: bytes = b""  # kind == "file"
    target: str = ""  # kind == "symlink"
    rdev: int = 0  # kind == "chr"
    opaque: bool = False  # kind == "dir": hides same-named directories below (overlay.opaque=y)
    redirect: str | None = None  # kind == "dir": overlay.redirect
    origin: int | None = None  # copied up from this lower inode (overlay.origin)
    whiteout_form: WhiteoutForm = "chardev"  # kind == "whiteout": how a layer tool stored it

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"

    @property
    def size(self) -> int:
        if self.kind == "file":
            return len(self.data)
        if self.kind == "symlink":
            return len(self.target.encode())
        return 0


@dataclass(frozen=True)
class Layer:
    """One layer: paths (tuples of names, the root is ``()``) naming inodes."""

    entries: FrozenMap[Path, int] = field(default_factory=FrozenMap)
    inodes: FrozenMap[int, Inode] = field(default_factory=FrozenMap)

    def get(self, path: Path) -> Inode | None:
        ino = self.entries.get(path)
        return None if ino is None else self.inodes[ino]

    def ino(self, path: Path) -> int | None:
        return self.entries.get(path)

    def children(self, path: Path) -> list[str]:
        n = len(path)
        return sorted(p[n] for p in self.entries if len(p) == n + 1 and p[:n] == path)

    def nlink(self, ino: int) -> int:
        """The link count the underlying filesystem reports for this inode."""
        inode = self.inodes[ino]
        if inode.is_dir:
            paths = [p for p, i in self.entries.items() if i == ino]
            if not paths:
                return 0
            path = paths[0]
            subdirs = sum(
                1 for c in self.children(path) if self.inodes[self.entries[(*path, c)]].is_dir
            )
            return 2 + subdirs
        return sum(1 for i in self.entries.values() if i == ino)

    # Updates return new layers.

    def link(self, path: Path, ino: int, inode: Inode | None = None) -> Layer:
        inodes = self.inodes if inode is None else self.inodes.set(ino, inode)
        return Layer(self.entries.set(path, ino), inodes)

    def unlink(self, path: Path) -> Layer:
        ino = self.entries[path]
        entries = self.entries.delete(path)
        inodes = self.inodes
        if ino not in entries.values():
            inodes = inodes.delete(ino)
        return Layer(entries, inodes)

    def unlink_tree(self, path: Path) -> Layer:
        """Remove ``path`` and everything below it."""
        n = len(path)
        layer = self
        for p in sorted((p for p in self.entries if p[:n] == path), key=len, reverse=True):
            layer = layer.unlink(p)
        return layer

    def put(self, ino: int, inode: Inode) -> Layer:
        """Replace the inode ``ino`` (all its names see the change)."""
        return Layer(self.entries, self.inodes.set(ino, inode))

    def move_tree(self, src: Path, dst: Path) -> Layer:
        """Rename ``src`` (and everything below it) to ``dst``, which must not exist."""
        n = len(src)
        moved = {(*dst, *p[n:]): i for p, i in self.entries.items() if p[:n] == src}
        kept = {p: i for p, i in self.entries.items() if p[:n] != src}
        kept.update(moved)
        return Layer(FrozenMap(kept), self.inodes)


def empty_layer(root_ino: int, root: Inode | None = None) -> Layer:
    """A layer holding only its root directory."""
    inode = root if root is not None else Inode("dir", mode=0o755)
    return Layer(FrozenMap({ROOT: root_ino}), FrozenMap({root_ino: inode}))


@dataclass(frozen=True)
class Overlay:
    """An overlay: lower layers (the first is the top one), an optional upper, the features.

    ``upper is None`` is a read-only overlay. ``next_ino`` numbers the inodes the overlay
    creates, so that every inode in every layer has one identity.
    """

    lowers: tuple[Layer, ...]
    upper: Layer | None
    features: Features = DEFAULT
    next_ino: int = 1_000_000

    @property
    def read_only(self) -> bool:
        return self.upper is None

    def with_upper(self, upper: Layer, next_ino: int | None = None) -> Overlay:
        return replace(self, upper=upper, next_ino=self.next_ino if next_ino is None else next_ino)

    def alloc(self) -> tuple[int, Overlay]:
        return self.next_ino, replace(self, next_ino=self.next_ino + 1)
