"""The one adapter interface.

An *adapter* knows how to bring one overlay implementation up over a layer stack that the suite
has built on scratch disk in the kernel's on-disk format, and gives back a *mounted overlay*:
something that performs operations and shows the merged view, can be remounted, and is always
torn down. The suite only ever talks to these two classes.

Most adapters are thin: they mount something and expose the mount point as a ``PosixFS`` over
real system calls (``adapters.posix.MountFS``), and the shared executor in ``adapters.posix``
turns each ``model.ops`` operation into system calls. The pure-Python overlay implements
``PosixFS`` itself.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

from model.features import Features
from model.ops import Op, Outcome, View


class AdapterError(Exception):
    """An implementation could not be brought up, torn down, or driven. The message says why."""


class Unavailable(AdapterError):
    """The adapter cannot run on this machine (not root, no /dev/fuse, binary missing, ...)."""


@dataclass(frozen=True)
class LayerDirs:
    """Where a layer stack lives on disk. ``upper``/``work`` are None for a read-only overlay."""

    lowers: tuple[Path, ...]  # the top lower layer first, as in lowerdir=
    upper: Path | None
    work: Path | None

    @property
    def lowerdir(self) -> str:
        return ":".join(str(p) for p in self.lowers)


@dataclass(frozen=True)
class AdapterOptions:
    """Options from the command line that adapters may use (the command adapter's templates)."""

    mount_cmd: str | None = None
    umount_cmd: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)


class StatLike(Protocol):
    """The fields of os.stat_result the executor reads."""

    @property
    def st_mode(self) -> int: ...
    @property
    def st_ino(self) -> int: ...
    @property
    def st_nlink(self) -> int: ...
    @property
    def st_uid(self) -> int: ...
    @property
    def st_gid(self) -> int: ...
    @property
    def st_size(self) -> int: ...
    @property
    def st_mtime_ns(self) -> int: ...
    @property
    def st_rdev(self) -> int: ...


class PosixFS(Protocol):
    """The system calls the executor needs, on paths relative to the merged root.

    Paths are passed through exactly as the operation gives them (``..``, trailing slashes and
    all); ``""`` is the merged root. Failures raise ``OSError`` with the errno the call returned.
    """

    def stat(self, path: str, follow: bool = True) -> StatLike: ...
    def open(self, path: str, flags: int, mode: int = 0o644) -> int: ...
    def read(self, fd: int, size: int) -> bytes: ...
    def pwrite(self, fd: int, data: bytes, offset: int) -> int: ...
    def close(self, fd: int) -> None: ...
    def truncate(self, path: str, length: int) -> None: ...
    def mkdir(self, path: str, mode: int) -> None: ...
    def rmdir(self, path: str) -> None: ...
    def unlink(self, path: str) -> None: ...
    def symlink(self, target: str, path: str) -> None: ...
    def link(self, src: str, dst: str) -> None: ...
    def mknod(self, path: str, mode: int, device: int) -> None: ...
    def rename(self, src: str, dst: str, flags: int) -> None: ...
    def chmod(self, path: str, mode: int) -> None: ...
    def chown(self, path: str, uid: int, gid: int, follow: bool) -> None: ...
    def utime(self, path: str, atime_ns: int, mtime_ns: int) -> None: ...
    def setxattr(self, path: str, key: str, value: bytes, flags: int) -> None: ...
    def getxattr(self, path: str, key: str, follow: bool = True) -> bytes: ...
    def listxattr(self, path: str, follow: bool = True) -> list[str]: ...
    def removexattr(self, path: str, key: str) -> None: ...
    def readlink(self, path: str) -> str: ...
    def listdir(self, path: str) -> list[str]: ...


class Mounted(abc.ABC):
    """A running overlay. Use as a context manager: ``close`` runs whatever happened."""

    @abc.abstractmethod
    def perform(self, op: Op) -> Outcome:
        """Carry out one operation (``Remount`` included) and return its outcome."""

    @abc.abstractmethod
    def observe(self) -> View:
        """The whole merged view, read through the implementation."""

    @abc.abstractmethod
    def remount(self) -> None:
        """Tear the overlay down and bring it up again on the same layers and options."""

    @abc.abstractmethod
    def close(self) -> None:
        """Tear down: unmount, reap any daemon. Idempotent; never raises for a clean state."""

    def describe_mount(self) -> Mapping[str, str] | None:
        """How to bring this overlay up by hand, for reproducers: the shell command lines
        ``mount`` and ``umount`` and the ``mountpoint`` they use (real paths), or None."""
        return None

    def options_in_effect(self) -> Mapping[str, str]:
        """The mount options the implementation reports as in effect (read back, not assumed)."""
        return {}

    def __enter__(self) -> Mounted:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Adapter(abc.ABC):
    """A way to bring one implementation up. Registered by name in ``adapters.registry``."""

    #: The name used with ``--adapter``.
    name: ClassVar[str] = ""
    #: Whether it needs the suite to build layers with real root-only objects (char 0/0
    #: whiteouts, trusted.* xattrs, chown). Adapters that do not need root say False.
    needs_root: ClassVar[bool] = True

    def __init__(self, options: AdapterOptions | None = None) -> None:
        self.options = options or AdapterOptions()

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this adapter cannot run here, or None if it can."""
        return None

    @abc.abstractmethod
    def mount(self, layers: LayerDirs, features: Features, scratch: Path) -> Mounted:
        """Bring the implementation up over ``layers``. ``scratch`` is a private directory
        (mount points, logs) that the adapter may use and that the caller removes."""

    def version(self) -> str:
        """A human-readable version of the implementation (for report headers)."""
        return "unknown"

    def known_differences(self) -> Path | None:
        """A reviewed TOML list of documented differences from the model, if the adapter has one."""
        return None


def is_root() -> bool:
    return os.geteuid() == 0
