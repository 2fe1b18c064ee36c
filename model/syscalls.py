"""One pure function per system call: ordered error checks, then the state change.

Each function takes the state and the operation and returns ``(value, new_state)``, or raises
``Errno`` from a check (so a failed call changes nothing, rule by rule). The order of the checks
is the order in which the kernel makes them (VFS first, then the overlay), because when several
errors apply the first one wins. ``trace`` collects the IDs of the rules that decided the
outcome, for difference reports.
"""

from __future__ import annotations

import errno as E
import stat as S
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from model import ops
from model.copy_up import copy_up
from model.lookup import Absent, Merged, listing, lookup, lower_positive, names, top_inode
from model.ops import Op, Outcome, Value
from model.paths import Errno, Escape, Last, dots, parent_of, resolve, resolve_for_create
from model.state import Inode, Kind, Overlay, Path
from model.view import stat_of

__all__ = ["Escape", "Transition", "apply", "escapes"]

Trace = list[str]
Result = tuple[Value, Overlay]


@dataclass(frozen=True)
class Transition:
    """What one call does: its outcome, the state after it, and the IDs of the rules applied."""

    outcome: Outcome
    state: Overlay
    rules: tuple[str, ...] = ()


class FailedAfterCopyUp(Errno):
    """A call that fails only after it has copied its object up (copy-up.on-failed-setxattr)."""

    def __init__(self, errno: int, rule: str, state: Overlay) -> None:
        super().__init__(errno, rule)
        self.state = state


def apply(state: Overlay, op: Op) -> Transition:
    """The outcome of ``op`` on ``state``. Raises ``Escape`` for a path that leaves the root."""
    trace: Trace = []
    try:
        value, new_state = _CALLS[type(op)](state, op, trace)
    except FailedAfterCopyUp as err:
        return Transition(Outcome(errno=err.errno), err.state, (*_uniq(trace), err.rule))
    except Errno as err:
        return Transition(Outcome(errno=err.errno), state, (*_uniq(trace), err.rule))
    return Transition(Outcome(value=value), new_state, tuple(_uniq(trace)))


def escapes(state: Overlay, op: Op) -> bool:
    """Whether performing ``op`` would resolve a path outside the merged root."""
    try:
        apply(state, op)
    except Escape:
        return True
    return False


def _uniq(trace: Trace) -> list[str]:
    return list(dict.fromkeys(trace))


# --- shared steps ---------------------------------------------------------------------------


def _writable(state: Overlay) -> None:
    if state.upper is None:
        raise Errno(E.EROFS, "mount.read-only")


def _upper(state: Overlay) -> Any:
    assert state.upper is not None
    return state.upper


def _change(state: Overlay, obj: Merged, **changes: Any) -> Overlay:
    """Change the upper inode of an object that has been copied up."""
    assert obj.is_upper
    upper = _upper(state)
    return state.with_upper(upper.put(obj.top.ino, replace(top_inode(state, obj), **changes)))


def _touch_dir(state: Overlay, path: Path) -> Overlay:
    """A directory whose entries changed has an mtime of now (attr.mtime)."""
    obj = lookup(state, path)
    assert obj is not None and obj.is_upper
    return _change(state, obj, mtime=None)


def _parent_up(state: Overlay, last: Last, trace: Trace) -> tuple[Overlay, Merged]:
    """Copy the parent directory up (copy-up.parents) so that a name can change in it."""
    if not last.parent.is_upper:
        trace.append("copy-up.parents")
    return copy_up(state, last.parent, trace)


def _create(state: Overlay, last: Last, new: Inode, trace: Trace) -> Overlay:
    """Put a new object at ``last`` in the upper layer, over a whiteout if there is one."""
    trace.append("create.upper")
    state, parent = _parent_up(state, last, trace)
    path = (*parent.path, last.name)
    upper = _upper(state)
    if path in upper.entries:  # an upper whiteout: the new object replaces it
        upper = upper.unlink(path)
    if isinstance(last.found, Absent) and last.found.whiteout and new.is_dir:
        trace.append("create.over-whiteout")
        new = replace(new, opaque=True)
    ino, state = state.alloc()
    state = state.with_upper(upper.link(path, ino, new))
    return _touch_dir(state, parent.path)


def _check_create(state: Overlay, last: Last, want_dir: bool = False) -> None:
    """filename_create: the checks every call that creates a name makes."""
    if last.type != "norm":
        raise Errno(E.EEXIST, "path.dots")
    if last.exists:
        raise Errno(E.EEXIST, "create.exists")
    if last.trailing and not want_dir:
        raise Errno(E.ENOENT, "path.trailing-slash")
    _writable(state)


def _remove(state: Overlay, last: Last, trace: Trace) -> Overlay:
    """Remove a visible name: leave a whiteout if a lower object of that name must stay hidden
    (unlink.whiteout), nothing otherwise (unlink.pure-upper)."""
    whiteout = lower_positive(state, last.parent, last.name)
    state, parent = _parent_up(state, last, trace)
    path = (*parent.path, last.name)
    upper = _upper(state)
    if path in upper.entries:
        upper = upper.unlink_tree(path)
    if whiteout:
        trace.append("unlink.whiteout")
        ino, state = state.alloc()
        upper = upper.link(path, ino, Inode("whiteout", mode=0, mtime=None))
    else:
        trace.append("unlink.pure-upper")
    state = state.with_upper(upper)
    return _touch_dir(state, parent.path)


def _xattr_namespace_ok(node: Inode, key: str) -> bool:
    return not key.startswith("user.") or node.kind in ("file", "dir")


# --- observing calls ----------------------------------------------------------------------


def _stat(state: Overlay, op: ops.Stat | ops.Lstat, trace: Trace) -> Result:
    trace.append("read.from-top")
    obj = resolve(state, op.path, follow=isinstance(op, ops.Stat))
    return stat_of(state, obj), state


def _read(state: Overlay, op: ops.Read, trace: Trace) -> Result:
    trace += ["read.from-top", "copy-up.not-on-read"]
    node = top_inode(state, resolve(state, op.path, follow=True))
    if node.is_dir:
        raise Errno(E.EISDIR, "read.errors")
    if node.kind == "fifo":
        trace.append("open.fifo-nonblock")
    return node.data, state


def _readlink(state: Overlay, op: ops.Readlink, trace: Trace) -> Result:
    node = top_inode(state, resolve(state, op.path, follow=False))
    if node.kind != "symlink":
        raise Errno(E.EINVAL, "read.errors")
    trace.append("read.from-top")
    return node.target, state


def _readdir(state: Overlay, op: ops.Readdir, trace: Trace) -> Result:
    obj = resolve(state, op.path, follow=True)
    if not top_inode(state, obj).is_dir:
        raise Errno(E.ENOTDIR, "read.errors")
    listed = listing(state, obj)
    trace.append("readdir.union" if obj.is_merge else "readdir.pass-through")
    if obj.is_merge:
        trace.append("lookup.dir-merge")
    return frozenset(listed), state


def _getxattr(state: Overlay, op: ops.GetXattr, trace: Trace) -> Result:
    node = top_inode(state, resolve(state, op.path, follow=True))
    if not _xattr_namespace_ok(node, op.key):
        raise Errno(E.ENODATA, "xattr.user-namespace")
    if op.key not in node.xattrs:
        raise Errno(E.ENODATA, "xattr.flags")
    trace.append("read.from-top")
    return node.xattrs[op.key], state


def _listxattr(state: Overlay, op: ops.ListXattr, trace: Trace) -> Result:
    node = top_inode(state, resolve(state, op.path, follow=True))
    trace += ["read.from-top", "xattr.private-hidden"]
    return frozenset(node.xattrs), state


# --- open, read and write -----------------------------------------------------------------

_WRITE_ACCESS = frozenset({"O_WRONLY", "O_RDWR"})


def _open(state: Overlay, op: ops.Open, trace: Trace) -> Result:
    state = _open_checked(state, op.path, frozenset(op.flags), op.mode, trace)
    return None, state


def _open_checked(
    state: Overlay, path: str, flags: frozenset[str], mode: int, trace: Trace
) -> Overlay:
    write = bool(flags & _WRITE_ACCESS)
    creat = "O_CREAT" in flags
    if creat and "O_DIRECTORY" in flags:
        raise Errno(E.EINVAL, "open.flags")
    nofollow = "O_NOFOLLOW" in flags or (creat and "O_EXCL" in flags)
    if creat:
        last = parent_of(state, path) if nofollow else resolve_for_create(state, path)
        if last.type == "norm" and last.trailing:
            raise Errno(E.EISDIR, "path.trailing-slash")
        if last.type == "norm" and not last.exists:
            _writable(state)
            node = Inode("file", mode=mode & 0o7777, uid=0, gid=0, mtime=None)
            return _create(state, last, node, trace)
        obj = last.found if isinstance(last.found, Merged) else dots(state, last)
        if "O_EXCL" in flags:
            raise Errno(E.EEXIST, "open.flags")
        if top_inode(state, obj).is_dir:
            raise Errno(E.EISDIR, "open.flags")
    else:
        obj = resolve(state, path, follow=not nofollow)
    node = top_inode(state, obj)
    if "O_DIRECTORY" in flags and not node.is_dir:
        raise Errno(E.ENOTDIR, "open.flags")
    trunc = "O_TRUNC" in flags
    if node.kind == "symlink":
        raise Errno(E.ELOOP, "open.flags")
    if node.is_dir:
        if write or trunc:
            raise Errno(E.EISDIR, "open.flags")
        return state
    if node.kind == "fifo":
        trace.append("copy-up.special-files")
        if "O_WRONLY" in flags:
            raise Errno(E.ENXIO, "open.fifo-nonblock")
        return state
    if not (write or trunc):
        trace.append("copy-up.not-on-read")
        return state
    _writable(state)
    if not obj.is_upper:
        trace.append("copy-up.triggers")
    state, obj = copy_up(state, obj, trace)
    if trunc and node.kind == "file":
        trace.append("attr.mtime")
        state = _change(state, obj, data=b"", mtime=None)
    return state


def _write(state: Overlay, op: ops.Write, trace: Trace) -> Result:
    state = _open_checked(state, op.path, frozenset({"O_WRONLY"}), 0, trace)
    obj = resolve(state, op.path, follow=True)
    node = top_inode(state, obj)
    data = node.data.ljust(op.offset, b"\0")
    data = data[: op.offset] + op.data + data[op.offset + len(op.data) :]
    trace += ["write.data", "attr.mtime"]
    return None, _change(state, obj, data=data, mtime=None if op.data else node.mtime)


def _truncate(state: Overlay, op: ops.Truncate, trace: Trace) -> Result:
    obj = resolve(state, op.path, follow=True)
    node = top_inode(state, obj)
    if node.is_dir:
        raise Errno(E.EISDIR, "read.errors")
    if node.kind != "file":
        raise Errno(E.EINVAL, "read.errors")
    _writable(state)
    if not obj.is_upper:
        trace.append("copy-up.triggers")
    state, obj = copy_up(state, obj, trace)
    data = node.data[: op.length].ljust(op.length, b"\0")
    trace += ["write.data", "attr.mtime"]
    return None, _change(state, obj, data=data, mtime=None)


# --- attributes -----------------------------------------------------------------------------


def _setattr(state: Overlay, obj: Merged, trace: Trace, **changes: Any) -> Overlay:
    _writable(state)
    if not obj.is_upper:
        trace.append("copy-up.triggers")
    state, obj = copy_up(state, obj, trace)
    trace.append("attr.chmod-chown-utimes")
    return _change(state, obj, **changes)


def _chmod(state: Overlay, op: ops.Chmod, trace: Trace) -> Result:
    obj = resolve(state, op.path, follow=True)
    return None, _setattr(state, obj, trace, mode=op.mode & 0o7777)


def _chown(state: Overlay, op: ops.Chown, trace: Trace) -> Result:
    obj = resolve(state, op.path, follow=op.follow)
    node = top_inode(state, obj)
    mode = node.mode
    if not node.is_dir and node.kind != "symlink":
        # chown clears set-user-ID, and set-group-ID when group-execute is set.
        mode &= ~S.S_ISUID
        if mode & S.S_IXGRP:
            mode &= ~S.S_ISGID
    return None, _setattr(state, obj, trace, uid=op.uid, gid=op.gid, mode=mode)


def _utimes(state: Overlay, op: ops.Utimes, trace: Trace) -> Result:
    obj = resolve(state, op.path, follow=True)
    return None, _setattr(state, obj, trace, mtime=op.mtime)


def _setxattr(state: Overlay, op: ops.SetXattr, trace: Trace) -> Result:
    obj = resolve(state, op.path, follow=True)
    _writable(state)
    node = top_inode(state, obj)
    if not _xattr_namespace_ok(node, op.key):
        raise Errno(E.EPERM, "xattr.user-namespace")
    if not obj.is_upper:
        trace.append("copy-up.triggers")
    state, obj = copy_up(state, obj, trace)
    if op.flags == "XATTR_CREATE" and op.key in node.xattrs:
        raise FailedAfterCopyUp(E.EEXIST, "copy-up.on-failed-setxattr", state)
    if op.flags == "XATTR_REPLACE" and op.key not in node.xattrs:
        raise FailedAfterCopyUp(E.ENODATA, "copy-up.on-failed-setxattr", state)
    trace.append("xattr.flags")
    return None, _change(state, obj, xattrs=node.xattrs.set(op.key, op.value))


def _removexattr(state: Overlay, op: ops.RemoveXattr, trace: Trace) -> Result:
    obj = resolve(state, op.path, follow=True)
    _writable(state)
    node = top_inode(state, obj)
    if not _xattr_namespace_ok(node, op.key):
        raise Errno(E.EPERM, "xattr.user-namespace")
    if op.key not in node.xattrs:
        # Checked on the lower object, before any copy-up (copy-up.on-failed-setxattr).
        raise Errno(E.ENODATA, "xattr.flags" if obj.is_upper else "copy-up.on-failed-setxattr")
    if not obj.is_upper:
        trace.append("copy-up.triggers")
    state, obj = copy_up(state, obj, trace)
    return None, _change(state, obj, xattrs=node.xattrs.delete(op.key))


# --- names ----------------------------------------------------------------------------------


def _mkdir(state: Overlay, op: ops.Mkdir, trace: Trace) -> Result:
    last = parent_of(state, op.path)
    _check_create(state, last, want_dir=True)
    node = Inode("dir", mode=op.mode & 0o1777, uid=0, gid=0, mtime=None)
    return None, _create(state, last, node, trace)


def _symlink(state: Overlay, op: ops.Symlink, trace: Trace) -> Result:
    if not op.target:
        raise Errno(E.ENOENT, "path.resolve")
    last = parent_of(state, op.path)
    _check_create(state, last)
    node = Inode("symlink", mode=0o777, uid=0, gid=0, mtime=None, target=op.target)
    return None, _create(state, last, node, trace)


def _mknod(state: Overlay, op: ops.Mknod, trace: Trace) -> Result:
    last = parent_of(state, op.path)
    _check_create(state, last)
    if op.kind == "chr" and op.rdev == 0:
        raise Errno(E.EPERM, "mknod.whiteout-forbidden")
    trace.append("mknod.fifo")
    kind: Kind = "fifo" if op.kind == "fifo" else "chr"
    node = Inode(kind, mode=op.mode & 0o7777, uid=0, gid=0, mtime=None, rdev=op.rdev)
    return None, _create(state, last, node, trace)


def _link(state: Overlay, op: ops.Link, trace: Trace) -> Result:
    src = resolve(state, op.src, follow=False)
    last = parent_of(state, op.dst)
    _check_create(state, last)
    if top_inode(state, src).is_dir:
        raise Errno(E.EPERM, "link.copy-up")
    trace.append("link.copy-up")
    if not src.is_upper:
        trace.append("copy-up.triggers")
    state, src = copy_up(state, src, trace)
    state, parent = _parent_up(state, last, trace)
    path = (*parent.path, last.name)
    upper = _upper(state)
    if path in upper.entries:  # an upper whiteout
        upper = upper.unlink(path)
    state = state.with_upper(upper.link(path, src.top.ino))
    return None, _touch_dir(state, parent.path)


def _unlink(state: Overlay, op: ops.Unlink, trace: Trace) -> Result:
    last = parent_of(state, op.path)
    if last.type != "norm":
        raise Errno(E.EISDIR, "path.dots")
    _writable(state)
    if not last.exists:
        raise Errno(E.ENOENT, "path.resolve")
    assert isinstance(last.found, Merged)
    node = top_inode(state, last.found)
    if last.trailing:
        raise Errno(E.EISDIR if node.is_dir else E.ENOTDIR, "path.trailing-slash")
    if node.is_dir:
        raise Errno(E.EISDIR, "unlink.dir")
    return None, _remove(state, last, trace)


def _rmdir(state: Overlay, op: ops.Rmdir, trace: Trace) -> Result:
    last = parent_of(state, op.path)
    if last.type == "dotdot":
        raise Errno(E.ENOTEMPTY, "path.dots")
    if last.type == "dot":
        raise Errno(E.EINVAL, "path.dots")
    if last.type == "root":
        raise Errno(E.EBUSY, "unlink.dir")
    _writable(state)
    if not isinstance(last.found, Merged):
        raise Errno(E.ENOENT, "path.resolve")
    if not top_inode(state, last.found).is_dir:
        raise Errno(E.ENOTDIR, "unlink.dir")
    if names(state, last.found):
        raise Errno(E.ENOTEMPTY, "rmdir.empty")
    trace.append("rmdir.empty")
    return None, _remove(state, last, trace)


_RENAME_FLAGS_VALID = {"", "RENAME_NOREPLACE", "RENAME_EXCHANGE", "RENAME_WHITEOUT"}


def _rename(state: Overlay, op: ops.Rename, trace: Trace) -> Result:
    if op.flags not in _RENAME_FLAGS_VALID:
        raise Errno(E.EINVAL, "rename.flags")
    exchange = op.flags == "RENAME_EXCHANGE"
    old = parent_of(state, op.src)
    new = parent_of(state, op.dst)
    if old.type != "norm":
        raise Errno(E.EBUSY, "path.dots")
    if new.type != "norm":
        raise Errno(E.EEXIST if op.flags == "RENAME_NOREPLACE" else E.EBUSY, "path.dots")
    _writable(state)
    if not isinstance(old.found, Merged):
        raise Errno(E.ENOENT, "rename.vfs-checks")
    src = old.found
    dst = new.found if isinstance(new.found, Merged) else None
    if op.flags == "RENAME_NOREPLACE" and dst is not None:
        raise Errno(E.EEXIST, "rename.vfs-checks")
    src_dir = top_inode(state, src).is_dir
    dst_dir = dst is not None and top_inode(state, dst).is_dir
    if exchange:
        if dst is None:
            raise Errno(E.ENOENT, "rename.vfs-checks")
        if not dst_dir and new.trailing:
            raise Errno(E.ENOTDIR, "path.trailing-slash")
    if not src_dir and (old.trailing or (not exchange and new.trailing)):
        raise Errno(E.ENOTDIR, "path.trailing-slash")
    if old.parent.path != new.parent.path:
        if new.parent.path[: len(src.path)] == src.path:
            raise Errno(E.EINVAL, "rename.vfs-checks")
        dst_path = (*new.parent.path, new.name)
        if old.parent.path[: len(dst_path)] == dst_path:
            raise Errno(E.EINVAL if exchange else E.ENOTEMPTY, "rename.vfs-checks")
    if dst is not None and _same_inode(state, src, dst):
        trace.append("rename.same-inode")
        return None, state
    if dst is not None and not exchange:
        if src_dir and not dst_dir:
            raise Errno(E.ENOTDIR, "rename.vfs-checks")
        if not src_dir and dst_dir:
            raise Errno(E.EISDIR, "rename.vfs-checks")
    # The overlay's own checks (fs/overlayfs/dir.c ovl_rename).
    if op.flags == "RENAME_WHITEOUT":
        raise Errno(E.EINVAL, "rename.flags")
    if not _can_move(state, src) or (exchange and dst is not None and not _can_move(state, dst)):
        raise Errno(E.EXDEV, "rename.dir-exdev")
    if not exchange and dst is not None and dst_dir and names(state, dst):
        raise Errno(E.ENOTEMPTY, "rename.dir-target-not-empty")
    return None, (_exchange if exchange else _move)(state, old, new, trace)


def _same_inode(state: Overlay, a: Merged, b: Merged) -> bool:
    # The overlay shares one inode between names only for upper hard links (and the same name).
    return a.path == b.path or (a.is_upper and b.is_upper and a.top.ino == b.top.ino)


def _can_move(state: Overlay, obj: Merged) -> bool:
    if not top_inode(state, obj).is_dir or state.features.creates_redirects:
        return True
    return obj.pure_upper


def _move(state: Overlay, old: Last, new: Last, trace: Trace) -> Overlay:
    src = old.found
    assert isinstance(src, Merged)
    src_pure_upper = src.pure_upper
    is_dir = top_inode(state, src).is_dir
    trace.append("rename.dir-exdev" if is_dir else "rename.non-dir")
    whiteout = lower_positive(state, old.parent, old.name)
    state, src = copy_up(state, src, trace)
    state, new_parent = _parent_up(state, new, trace)
    old_parent = lookup(state, old.parent.path)
    assert old_parent is not None and old_parent.is_upper
    src_path, dst_path = src.path, (*new_parent.path, new.name)
    upper = _upper(state)
    if dst_path in upper.entries:
        upper = upper.unlink_tree(dst_path)
    upper = upper.move_tree(src_path, dst_path)
    if whiteout:
        trace.append("unlink.whiteout")
        ino, state = state.alloc()
        upper = upper.link(src_path, ino, Inode("whiteout", mode=0, mtime=None))
    state = state.with_upper(upper)
    if is_dir and src_pure_upper and new_parent.is_merge:
        state = _make_opaque(state, dst_path, trace)
    state = _touch_dir(state, old_parent.path)
    return _touch_dir(state, new_parent.path)


def _exchange(state: Overlay, old: Last, new: Last, trace: Trace) -> Overlay:
    src, dst = old.found, new.found
    assert isinstance(src, Merged) and isinstance(dst, Merged)
    trace.append("rename.exchange")
    moves = [(src, new), (dst, old)]
    flags = [(top_inode(state, obj).is_dir and obj.pure_upper, dest) for obj, dest in moves]
    state, src = copy_up(state, src, trace)
    state, dst = copy_up(state, dst, trace)
    upper = _upper(state)
    tmp = ("\0exchange",)
    upper = upper.move_tree(src.path, tmp).move_tree(dst.path, src.path).move_tree(tmp, dst.path)
    state = state.with_upper(upper)
    for pure_upper_dir, dest in flags:
        parent = lookup(state, dest.parent.path)
        assert parent is not None
        if pure_upper_dir and parent.is_merge:
            state = _make_opaque(state, (*parent.path, dest.name), trace)
    state = _touch_dir(state, old.parent.path)
    return _touch_dir(state, new.parent.path)


def _make_opaque(state: Overlay, path: Path, trace: Trace) -> Overlay:
    obj = lookup(state, path)
    assert obj is not None and obj.is_upper
    if top_inode(state, obj).opaque:
        return state
    trace.append("rename.opaque")
    return _change(state, obj, opaque=True)


def _remount(state: Overlay, op: ops.Remount, trace: Trace) -> Result:
    trace.append("mount.remount")
    return None, state


_CALLS: dict[type[Op], Callable[[Overlay, Any, Trace], Result]] = {
    ops.Stat: _stat,
    ops.Lstat: _stat,
    ops.Read: _read,
    ops.Readlink: _readlink,
    ops.Readdir: _readdir,
    ops.GetXattr: _getxattr,
    ops.ListXattr: _listxattr,
    ops.Open: _open,
    ops.Write: _write,
    ops.Truncate: _truncate,
    ops.Chmod: _chmod,
    ops.Chown: _chown,
    ops.Utimes: _utimes,
    ops.SetXattr: _setxattr,
    ops.RemoveXattr: _removexattr,
    ops.Mkdir: _mkdir,
    ops.Rmdir: _rmdir,
    ops.Unlink: _unlink,
    ops.Symlink: _symlink,
    ops.Link: _link,
    ops.Mknod: _mknod,
    ops.Rename: _rename,
    ops.Remount: _remount,
}
assert set(_CALLS) == set(ops.ALL_OPS)
