"""Operations as system calls: the executor shared by every adapter, and the merged-view walk.

``perform(fs, op)`` turns one ``model.ops`` operation into the system calls it names, on any
``PosixFS`` (a real mount point, or the pure-Python overlay), and returns the outcome the way
the model states it: a value, or the errno. ``observe(fs)`` reads the whole merged view.
"""

from __future__ import annotations

import ctypes
import errno as E
import os
import stat as S

from adapters.base import PosixFS, StatLike
from model import ops
from model.frozen import FrozenMap
from model.ops import Node, Op, Outcome, StatResult, View

OPEN_FLAG_VALUES: dict[str, int] = {name: getattr(os, name) for name in ops.OPEN_FLAGS}
RENAME_FLAG_VALUES: dict[str, int] = {
    "": 0,
    "RENAME_NOREPLACE": 1,
    "RENAME_EXCHANGE": 2,
    "RENAME_WHITEOUT": 4,
}
XATTR_FLAG_VALUES: dict[str, int] = {
    "": 0,
    "XATTR_CREATE": os.XATTR_CREATE,
    "XATTR_REPLACE": os.XATTR_REPLACE,
}
MKNOD_TYPES: dict[str, int] = {"fifo": S.S_IFIFO, "chr": S.S_IFCHR}

_KINDS: dict[int, str] = {
    S.S_IFREG: "file",
    S.S_IFDIR: "dir",
    S.S_IFLNK: "symlink",
    S.S_IFIFO: "fifo",
    S.S_IFCHR: "chr",
    S.S_IFBLK: "blk",
    S.S_IFSOCK: "sock",
}

READ_CHUNK = 1 << 16


def open_flags(names: tuple[str, ...]) -> int:
    """The flag bits for ``names``, plus O_NONBLOCK: no call may block on a fifo
    (rule open.fifo-nonblock)."""
    flags = os.O_NONBLOCK
    for name in names:
        flags |= OPEN_FLAG_VALUES[name]
    return flags


def stat_result(st: StatLike) -> StatResult:
    """Normalise a raw stat into the record the model predicts (raw st_ino kept as identity)."""
    kind = _KINDS.get(S.S_IFMT(st.st_mode), "unknown")
    return StatResult(
        kind=kind,
        mode=S.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        size=None if kind == "dir" else st.st_size,
        nlink=st.st_nlink,
        ino=st.st_ino,
        mtime=st.st_mtime_ns,
        rdev=st.st_rdev if kind == "chr" else 0,
    )


def _read_all(fs: PosixFS, path: str) -> bytes:
    fd = fs.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        chunks = []
        while chunk := fs.read(fd, READ_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        fs.close(fd)


def _open_close(fs: PosixFS, op: ops.Open) -> None:
    fs.close(fs.open(op.path, open_flags(op.flags), op.mode))


def _write(fs: PosixFS, op: ops.Write) -> None:
    fd = fs.open(op.path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        fs.pwrite(fd, op.data, op.offset)
    finally:
        fs.close(fd)


def _execute(fs: PosixFS, op: Op) -> object:
    """Perform one call; return its value (None for the calls that return nothing)."""
    match op:
        case ops.Stat(path):
            return stat_result(fs.stat(path, follow=True))
        case ops.Lstat(path):
            return stat_result(fs.stat(path, follow=False))
        case ops.Read(path):
            return _read_all(fs, path)
        case ops.Readlink(path):
            return fs.readlink(path)
        case ops.Readdir(path):
            return frozenset(fs.listdir(path))
        case ops.GetXattr(path, key):
            return fs.getxattr(path, key)
        case ops.ListXattr(path):
            return frozenset(fs.listxattr(path))
        case ops.Open():
            _open_close(fs, op)
        case ops.Write():
            _write(fs, op)
        case ops.Truncate(path, length):
            fs.truncate(path, length)
        case ops.Chmod(path, mode):
            fs.chmod(path, mode)
        case ops.Chown(path, uid, gid, follow):
            fs.chown(path, uid, gid, follow)
        case ops.Utimes(path, mtime):
            fs.utime(path, mtime, mtime)
        case ops.SetXattr(path, key, value, flags):
            fs.setxattr(path, key, value, XATTR_FLAG_VALUES[flags])
        case ops.RemoveXattr(path, key):
            fs.removexattr(path, key)
        case ops.Mkdir(path, mode):
            fs.mkdir(path, mode)
        case ops.Rmdir(path):
            fs.rmdir(path)
        case ops.Unlink(path):
            fs.unlink(path)
        case ops.Symlink(target, path):
            fs.symlink(target, path)
        case ops.Link(src, dst):
            fs.link(src, dst)
        case ops.Mknod(path, kind, mode, rdev):
            fs.mknod(path, MKNOD_TYPES[kind] | mode, rdev)
        case ops.Rename(src, dst, flags):
            fs.rename(src, dst, RENAME_FLAG_VALUES[flags])
        case _:
            raise TypeError(f"the executor cannot perform {op}")
    return None


def perform(fs: PosixFS, op: Op) -> Outcome:
    """Perform ``op`` (anything but Remount, which is the mounted overlay's) on ``fs``."""
    try:
        value = _execute(fs, op)
    except OSError as exc:
        return Outcome(errno=exc.errno or E.EIO)
    assert value is None or isinstance(value, bytes | str | frozenset | StatResult)
    return Outcome(value=value)


def observe(fs: PosixFS) -> View:
    """Walk the merged view from the root: lstat, readdir, read, readlink and xattrs of each
    visible path. Symlinks are never followed, so the walk stays inside the mount."""
    nodes: dict[str, Node] = {}
    pending = [""]
    while pending:
        path = pending.pop()
        try:
            st = fs.stat(path, follow=False)
        except OSError as exc:
            if not path:
                raise
            # readdir listed a name that lookup cannot find (rule readdir.pass-through).
            nodes[path] = Node(stat=None, errno=exc.errno or E.EIO)
            continue
        result = stat_result(st)
        data = target = None
        if result.kind == "file":
            data = _read_all(fs, path)
        elif result.kind == "symlink":
            target = fs.readlink(path)
        nodes[path] = Node(result, data, target, _xattrs(fs, path))
        if result.kind == "dir":
            for name in fs.listdir(path):
                pending.append(f"{path}/{name}" if path else name)
    return FrozenMap(nodes)


def _xattrs(fs: PosixFS, path: str) -> FrozenMap[str, bytes]:
    values = {}
    for key in fs.listxattr(path, follow=False):
        try:
            values[key] = fs.getxattr(path, key, follow=False)
        except OSError as exc:  # listed but unreadable: report it rather than hide it
            values[key] = f"<errno {E.errorcode.get(exc.errno or 0, exc.errno)}>".encode()
    return FrozenMap(values)


# --- real system calls on a mounted directory --------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100


def renameat2(src: str, dst: str, flags: int) -> None:
    """rename(2) with flags, which the os module does not offer."""
    if flags == 0:
        os.rename(src, dst)
        return
    res = _libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags)
    if res != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), src)


class MountFS:
    """``PosixFS`` over a real mount point: each call is the system call it is named after."""

    def __init__(self, root: os.PathLike[str] | str) -> None:
        self.root = os.fspath(root)

    def _p(self, path: str) -> str:
        # Keep the path exactly as given (trailing slashes, "..") below the mount root.
        return f"{self.root}/{path}" if path else self.root

    def stat(self, path: str, follow: bool = True) -> StatLike:
        return os.stat(self._p(path), follow_symlinks=follow)

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return os.open(self._p(path), flags | os.O_CLOEXEC, mode)

    def read(self, fd: int, size: int) -> bytes:
        return os.read(fd, size)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        return os.pwrite(fd, data, offset)

    def close(self, fd: int) -> None:
        os.close(fd)

    def truncate(self, path: str, length: int) -> None:
        os.truncate(self._p(path), length)

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self._p(path), mode)

    def rmdir(self, path: str) -> None:
        os.rmdir(self._p(path))

    def unlink(self, path: str) -> None:
        os.unlink(self._p(path))

    def symlink(self, target: str, path: str) -> None:
        os.symlink(target, self._p(path))

    def link(self, src: str, dst: str) -> None:
        os.link(self._p(src), self._p(dst), follow_symlinks=False)

    def mknod(self, path: str, mode: int, device: int) -> None:
        os.mknod(self._p(path), mode, device)

    def rename(self, src: str, dst: str, flags: int) -> None:
        renameat2(self._p(src), self._p(dst), flags)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._p(path), mode)

    def chown(self, path: str, uid: int, gid: int, follow: bool) -> None:
        os.chown(self._p(path), uid, gid, follow_symlinks=follow)

    def utime(self, path: str, atime_ns: int, mtime_ns: int) -> None:
        os.utime(self._p(path), ns=(atime_ns, mtime_ns))

    def setxattr(self, path: str, key: str, value: bytes, flags: int) -> None:
        os.setxattr(self._p(path), key, value, flags)

    def getxattr(self, path: str, key: str, follow: bool = True) -> bytes:
        return os.getxattr(self._p(path), key, follow_symlinks=follow)

    def listxattr(self, path: str, follow: bool = True) -> list[str]:
        return os.listxattr(self._p(path), follow_symlinks=follow)

    def removexattr(self, path: str, key: str) -> None:
        os.removexattr(self._p(path), key)

    def readlink(self, path: str) -> str:
        return os.readlink(self._p(path))

    def listdir(self, path: str) -> list[str]:
        return os.listdir(self._p(path))
