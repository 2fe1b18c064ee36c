"""The kernel's on-disk overlay format, as the pure-Python overlay reads and writes it.

What lives on the layers (overlayfs.rst "whiteouts and opaque directories", "Origin"):

- a *whiteout* is a character device 0/0, or (``xattr`` form, kernel 6.7+) an empty regular
  file carrying ``<prefix>whiteout`` inside a directory carrying ``<prefix>opaque="x"``;
- an *opaque* directory carries ``<prefix>opaque="y"``;
- ``<prefix>origin`` holds the copy-up origin as ``struct ovl_fb``: version 0, magic 0xfb,
  length, flags, the real file handle's type, the lower filesystem's UUID, then the handle;
- ``<prefix>impure="y"`` marks an upper directory holding copied-up or moved children;
- ``<prefix>redirect`` marks a renamed merged directory (only read here: we refuse to follow).

``<prefix>`` is ``trusted.overlay.``, or ``user.overlay.`` with userxattr. A user xattr named
``<prefix>X`` set through the mount is stored escaped as ``<prefix>overlay.X``.

File handles come from name_to_handle_at(2) / open_by_handle_at(2) through ctypes; ``Handles``
says whether they are available, so the same code runs on pyfakefs (where every call must stay
inside the fake ``os`` module) without them.
"""

from __future__ import annotations

import ctypes
import errno as E
import fcntl
import os
import stat as S
import struct
from dataclasses import dataclass
from typing import Literal

WhiteoutForm = Literal["chardev", "xattr"]

WHITEOUT_DEV = 0
OVL_FH_VERSION = 0
OVL_FH_MAGIC = 0xFB
_FB_HEADER = struct.Struct("<BBBBB16s")  # version, magic, len, flags, type, uuid
MAX_HANDLE_SZ = 128
FS_IOC_GETFSUUID = 0x80111500  # _IOR(0x15, 0, struct fsuuid2 { u8 len; u8 uuid[16]; })

# errnos meaning "this object or filesystem has no such xattr"
_NO_XATTR = (E.ENODATA, E.ENOTSUP, E.EOPNOTSUPP)


@dataclass(frozen=True)
class Names:
    """The private xattr names under one prefix."""

    prefix: str

    @property
    def opaque(self) -> str:
        return self.prefix + "opaque"

    @property
    def whiteout(self) -> str:
        return self.prefix + "whiteout"

    @property
    def origin(self) -> str:
        return self.prefix + "origin"

    @property
    def impure(self) -> str:
        return self.prefix + "impure"

    @property
    def redirect(self) -> str:
        return self.prefix + "redirect"

    @property
    def uuid(self) -> str:
        return self.prefix + "uuid"

    @property
    def escape_prefix(self) -> str:
        return self.prefix + "overlay."

    def is_private(self, name: str) -> bool:
        # The kernel compares without the final dot (ovl_is_private_xattr): "trusted.overlayX"
        # is private too.
        return name.startswith(self.prefix[:-1])

    def escape(self, name: str) -> str:
        """The name stored on the layer for an xattr the user calls ``name``."""
        if name.startswith(self.prefix):
            return self.escape_prefix + name[len(self.prefix) :]
        return name

    def visible(self, stored: str) -> str | None:
        """The name listxattr shows for a stored name, or None for a private one."""
        if not self.is_private(stored):
            return stored
        if stored.startswith(self.escape_prefix) and len(stored) > len(self.escape_prefix):
            return self.prefix + stored[len(self.escape_prefix) :]
        return None


def get_xattr(path: str, name: str) -> bytes | None:
    """One xattr of ``path`` (never following a final symlink), or None if absent."""
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _NO_XATTR:
            return None
        raise


def list_xattrs(path: str) -> list[str]:
    try:
        return os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _NO_XATTR:
            return []
        raise


def is_chardev_whiteout(st: os.stat_result) -> bool:
    # pyfakefs records no st_rdev: there every character device counts as a whiteout.
    return S.S_ISCHR(st.st_mode) and getattr(st, "st_rdev", WHITEOUT_DEV) == WHITEOUT_DEV


def is_whiteout(path: str, st: os.stat_result, names: Names, xattr_form: bool = True) -> bool:
    """Whether the object at ``path`` is a whiteout (with ``xattr_form``, of either form).

    Lookup always honours the xattr form (ovl_path_is_whiteout()); readdir only looks for it
    where a directory marked ``opaque="x"`` says to (overlayfs.rst "whiteouts"), so readdir
    passes ``xattr_form`` accordingly."""
    if is_chardev_whiteout(st):
        return True
    return (
        xattr_form
        and S.S_ISREG(st.st_mode)
        and st.st_size == 0
        and get_xattr(path, names.whiteout) is not None
    )


def make_whiteout(path: str, names: Names, form: WhiteoutForm) -> None:
    """Create a whiteout at ``path`` (a scratch name in the work directory)."""
    if form == "chardev":
        os.mknod(path, S.S_IFCHR | 0o000, WHITEOUT_DEV)
    else:
        # Readable by its owner: without root, user.* xattrs need read/write permission.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.setxattr(path, names.whiteout, b"", follow_symlinks=False)


# --- origin file handles -------------------------------------------------------------------


@dataclass(frozen=True)
class FileHandle:
    """A real filesystem's file handle: its type and opaque bytes (name_to_handle_at(2))."""

    type: int
    data: bytes


def encode_origin(fh: FileHandle, uuid: bytes) -> bytes:
    """``struct ovl_fb`` as the kernel stores it in ``origin`` (little-endian host: flags 0)."""
    length = _FB_HEADER.size + len(fh.data)
    return _FB_HEADER.pack(OVL_FH_VERSION, OVL_FH_MAGIC, length, 0, fh.type, uuid) + fh.data


def decode_origin(value: bytes) -> tuple[bytes, FileHandle] | None:
    """(uuid, handle) from an ``origin`` value, or None if it is not a valid ``ovl_fb``."""
    if len(value) < _FB_HEADER.size:
        return None
    version, magic, length, _flags, fh_type, uuid = _FB_HEADER.unpack_from(value)
    if version != OVL_FH_VERSION or magic != OVL_FH_MAGIC or length != len(value):
        return None
    return uuid, FileHandle(fh_type, bytes(value[_FB_HEADER.size :]))


class _CFileHandle(ctypes.Structure):
    _fields_ = [
        ("handle_bytes", ctypes.c_uint),
        ("handle_type", ctypes.c_int),
        ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ),
    ]


_AT_FDCWD = -100
# Handle type of our own "pathless" origin (no real file handles, e.g. pyfakefs): the lower's
# st_ino and st_nlink, which never change. No kernel filesystem uses it, so a kernel ignores it.
PYO_FH_TYPE = 0xFF
_PYO_FH = struct.Struct("<QQ")


def pathless_handle(st: os.stat_result) -> FileHandle:
    return FileHandle(PYO_FH_TYPE, _PYO_FH.pack(st.st_ino, st.st_nlink))


def read_pathless(fh: FileHandle) -> tuple[int, int] | None:
    if fh.type != PYO_FH_TYPE or len(fh.data) != _PYO_FH.size:
        return None
    ino, nlink = _PYO_FH.unpack(fh.data)
    return ino, nlink


_AT_SYMLINK_FOLLOW = 0x400


class Handles:
    """Real file handles and the few system calls the os module lacks, through libc.

    ``native=False`` (pyfakefs) disables all of it: ctypes would reach the real filesystem
    behind the fake one's back."""

    def __init__(self, native: bool) -> None:
        self.native = native
        self._libc: ctypes.CDLL | None = None
        if native:
            try:
                self._libc = ctypes.CDLL(None, use_errno=True)
                self._libc.name_to_handle_at  # noqa: B018 - probe that the symbol exists
            except (OSError, AttributeError):
                self._libc = None

    @property
    def available(self) -> bool:
        return self._libc is not None

    def _raise(self, path: str) -> None:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)

    def encode(self, path: str) -> FileHandle | None:
        """The handle of ``path`` itself (a final symlink is not followed), or None."""
        if self._libc is None:
            return None
        handle = _CFileHandle()
        handle.handle_bytes = MAX_HANDLE_SZ
        mount_id = ctypes.c_int()
        res = self._libc.name_to_handle_at(
            _AT_FDCWD, os.fsencode(path), ctypes.byref(handle), ctypes.byref(mount_id), 0
        )
        if res != 0:
            return None
        return FileHandle(handle.handle_type, bytes(handle.f_handle[: handle.handle_bytes]))

    def open(self, mount_fd: int, fh: FileHandle) -> int | None:
        """open_by_handle_at(O_PATH): an fd of the object, or None (stale, or no privilege)."""
        if self._libc is None or len(fh.data) > MAX_HANDLE_SZ:
            return None
        handle = _CFileHandle()
        handle.handle_bytes = len(fh.data)
        handle.handle_type = fh.type
        ctypes.memmove(handle.f_handle, fh.data, len(fh.data))
        fd: int = self._libc.open_by_handle_at(
            mount_fd, ctypes.byref(handle), os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW
        )
        return None if fd < 0 else fd

    def fs_uuid(self, path: str) -> bytes | None:
        """The filesystem UUID the kernel puts in handles (FS_IOC_GETFSUUID), or None."""
        if not self.native:
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            buf = bytearray(17)
            fcntl.ioctl(fd, FS_IOC_GETFSUUID, buf)
        except OSError:
            return None
        finally:
            os.close(fd)
        return bytes(buf[1:17]) if buf[0] == 16 else None

    def renameat2(self, src: str, dst: str, flags: int) -> None:
        if self._libc is None:
            raise OSError(E.ENOSYS, "renameat2 unavailable", src)
        res = self._libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags)
        if res != 0:
            self._raise(src)
