"""The operations, as values: the system calls the model predicts and the adapters perform.

Paths are strings relative to the merged root, exactly as passed to the system call: they may
hold ``..``, ``.``, repeated or trailing slashes, and symlinks along the way. Each operation is
one self-contained call (``Open`` opens and closes; ``Write`` opens for writing, writes at an
offset and closes), so a sequence of operations is a complete, replayable program.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import ClassVar

from model.frozen import FrozenMap

# Open flags by name, so reproducers and reports read well.
OPEN_FLAGS: tuple[str, ...] = (
    "O_RDONLY",
    "O_WRONLY",
    "O_RDWR",
    "O_CREAT",
    "O_EXCL",
    "O_TRUNC",
    "O_APPEND",
    "O_DIRECTORY",
    "O_NOFOLLOW",
)

RENAME_FLAGS: tuple[str, ...] = ("", "RENAME_NOREPLACE", "RENAME_EXCHANGE", "RENAME_WHITEOUT")
XATTR_FLAGS: tuple[str, ...] = ("", "XATTR_CREATE", "XATTR_REPLACE")
MKNOD_KINDS: tuple[str, ...] = ("fifo", "chr")


@dataclass(frozen=True)
class StatResult:
    """What stat(2) shows of one object, in the fields the model predicts."""

    kind: str  # "file", "dir", "symlink", "fifo", "chr"
    mode: int  # permission bits
    uid: int
    gid: int
    size: int | None  # None: not predicted (directories)
    nlink: int | None  # None: not predicted
    ino: int  # the model's inode identity; an adapter's raw st_ino
    mtime: int | None  # nanoseconds; None: not predicted
    rdev: int = 0


Value = None | bytes | str | frozenset[str] | StatResult


@dataclass(frozen=True)
class Outcome:
    """The result of one call: ``errno == 0`` and a value, or the errno the call failed with."""

    errno: int = 0
    value: Value = None

    @property
    def ok(self) -> bool:
        return self.errno == 0


OK = Outcome()


@dataclass(frozen=True)
class Op:
    """Base of every operation. ``name`` is the system call's name."""

    name: ClassVar[str] = "op"
    #: Operations that only observe: never change the state, in any implementation.
    observing: ClassVar[bool] = False

    def args(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __str__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.args().items())
        return f"{self.name}({inner})"


@dataclass(frozen=True)
class Stat(Op):
    path: str
    name: ClassVar[str] = "stat"
    observing: ClassVar[bool] = True


@dataclass(frozen=True)
class Lstat(Op):
    path: str
    name: ClassVar[str] = "lstat"
    observing: ClassVar[bool] = True


@dataclass(frozen=True)
class Read(Op):
    """open(O_RDONLY), read everything, close."""

    path: str
    name: ClassVar[str] = "read"
    observing: ClassVar[bool] = True


@dataclass(frozen=True)
class Readlink(Op):
    path: str
    name: ClassVar[str] = "readlink"
    observing: ClassVar[bool] = True


@dataclass(frozen=True)
class Readdir(Op):
    """The set of names in a directory, without "." and ".." (order is unspecified)."""

    path: str
    name: ClassVar[str] = "readdir"
    observing: ClassVar[bool] = True


@dataclass(frozen=True)
class GetXattr(Op):
    path: str
    key: str
    name: ClassVar[str] = "getxattr"
    observing: ClassVar[bool] = True


@dataclass(frozen=True)
class ListXattr(Op):
    path: str
    name: ClassVar[str] = "listxattr"
    observing: ClassVar[bool] = True


@dataclass(frozen=True)
class Open(Op):
    """open(path, flags, mode) and close at once: no data is written."""

    path: str
    flags: tuple[str, ...]
    mode: int = 0o644
    name: ClassVar[str] = "open"


@dataclass(frozen=True)
class Write(Op):
    """open(O_WRONLY), pwrite(data, offset), close."""

    path: str
    data: bytes
    offset: int = 0
    name: ClassVar[str] = "write"


@dataclass(frozen=True)
class Truncate(Op):
    path: str
    length: int
    name: ClassVar[str] = "truncate"


@dataclass(frozen=True)
class Chmod(Op):
    """chmod(2): follows a final symlink."""

    path: str
    mode: int
    name: ClassVar[str] = "chmod"


@dataclass(frozen=True)
class Chown(Op):
    """lchown(2) (follow=False) or chown(2) (follow=True)."""

    path: str
    uid: int
    gid: int
    follow: bool = False
    name: ClassVar[str] = "chown"


@dataclass(frozen=True)
class Utimes(Op):
    """utimensat(2) setting atime and mtime to ``mtime`` (nanoseconds); follows symlinks."""

    path: str
    mtime: int
    name: ClassVar[str] = "utimes"


@dataclass(frozen=True)
class SetXattr(Op):
    """setxattr(2): follows a final symlink."""

    path: str
    key: str
    value: bytes
    flags: str = ""
    name: ClassVar[str] = "setxattr"


@dataclass(frozen=True)
class RemoveXattr(Op):
    path: str
    key: str
    name: ClassVar[str] = "removexattr"


@dataclass(frozen=True)
class Mkdir(Op):
    path: str
    mode: int = 0o755
    name: ClassVar[str] = "mkdir"


@dataclass(frozen=True)
class Rmdir(Op):
    path: str
    name: ClassVar[str] = "rmdir"


@dataclass(frozen=True)
class Unlink(Op):
    path: str
    name: ClassVar[str] = "unlink"


@dataclass(frozen=True)
class Symlink(Op):
    target: str
    path: str
    name: ClassVar[str] = "symlink"


@dataclass(frozen=True)
class Link(Op):
    """link(2): does not follow a final symlink in ``src``."""

    src: str
    dst: str
    name: ClassVar[str] = "link"


@dataclass(frozen=True)
class Mknod(Op):
    """mknod(2) of a fifo, or a character device (``rdev``; 0 is the whiteout's number)."""

    path: str
    kind: str = "fifo"
    mode: int = 0o644
    rdev: int = 0
    name: ClassVar[str] = "mknod"


@dataclass(frozen=True)
class Rename(Op):
    """renameat2(2) with one of RENAME_FLAGS ("" is plain rename(2))."""

    src: str
    dst: str
    flags: str = ""
    name: ClassVar[str] = "rename"


@dataclass(frozen=True)
class Remount(Op):
    """Unmount, then mount the same layers with the same options."""

    name: ClassVar[str] = "remount"


ALL_OPS: tuple[type[Op], ...] = (
    Stat, Lstat, Read, Readlink, Readdir, GetXattr, ListXattr,
    Open, Write, Truncate, Chmod, Chown, Utimes, SetXattr, RemoveXattr,
    Mkdir, Rmdir, Unlink, Symlink, Link, Mknod, Rename, Remount,
)  # fmt: skip

OPS_BY_NAME: dict[str, type[Op]] = {op.name: op for op in ALL_OPS}


@dataclass(frozen=True)
class Node:
    """One visible path of the merged view: its stat, and what reading it shows."""

    stat: StatResult | None  # None: readdir lists the name, but lstat fails with ``errno``
    data: bytes | None = None  # regular files
    target: str | None = None  # symlinks
    xattrs: FrozenMap[str, bytes] = field(default_factory=FrozenMap)  # listxattr, with values
    errno: int = 0  # why lstat of a listed name failed (rule readdir.pass-through)


#: The whole merged view: ``"a/b"`` → Node; the root is ``""``.
View = FrozenMap[str, Node]
