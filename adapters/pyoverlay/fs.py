"""OverlayFS in pure Python, on real layer directories in the kernel's on-disk format.

``OverlayFS`` implements ``adapters.base.PosixFS``: every method takes a path relative to the
merged root and does what the system call does on a kernel overlay mount (6.18, all layers on
one filesystem, redirect_dir=nofollow, index=off, metacopy=off, xino=off), raising ``OSError``
with the kernel's errno. Lower directories are only read; the upper directory is written the
way the kernel writes it, so the kernel can mount what we leave behind and vice versa.

Independent of ``model/``: the rules are re-derived here from the kernel (fs/namei.c for path
walks and errno precedence, fs/overlayfs/{namei,dir,copy_up,inode,readdir,xattrs}.c for the
overlay) and checked against a real mount by tests/test_pyoverlay_kernel.py.

Costs: each call walks its path from the root, one lstat per layer per component (lower layers
never change, so their lookups are cached), and never scans a tree; copy-up copies one object.

Known differences from the kernel:
- Only redirect_dir=nofollow, index=off, metacopy=off, xino=off, nfs_export=off: other values
  raise ``Unavailable``. A redirect xattr met in a lookup gives EPERM, as with nofollow.
- No permission checks (DAC, sticky, immutable): the caller is taken to be root, as the suite is.
- Copy-up does not fsync unless ``fsync=True``; removing a non-empty-looking merged directory
  (only whiteouts left) is done in steps, not through the kernel's single exchange.
- Whether readdir hides xattr-form whiteouts also depends, in the kernel, on which directories
  of a layer were looked up earlier in the mount; here it depends on the directory alone.
- Without root the xattr whiteout form is written, which the kernel's readdir of an upper does
  not filter (it never writes that form itself), and the tree must use userxattr.
- On pyfakefs there are no file handles (a private "pathless" origin keeps st_ino) and no
  st_rdev, so every character device there counts as a whiteout.
"""

from __future__ import annotations

import contextlib
import errno as E
import itertools
import os
import stat as S
from collections.abc import Callable
from dataclasses import dataclass

from adapters.base import LayerDirs, Unavailable
from adapters.pyoverlay.format import (
    FileHandle,
    Handles,
    Names,
    WhiteoutForm,
    decode_origin,
    encode_origin,
    get_xattr,
    is_whiteout,
    list_xattrs,
    make_whiteout,
    pathless_handle,
    read_pathless,
)
from model.features import Features

MAXSYMLINKS = 40  # include/linux/namei.h
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4
_XATTR_NAME_MAX = 255
_XATTR_SIZE_MAX = 65536
_COPY_CHUNK = 1 << 20

# Kinds of a path's last component (fs/namei.c LAST_*).
_NORM, _ROOT, _DOT, _DOTDOT = range(4)


def _err(code: int, path: str = "") -> OSError:
    return OSError(code, os.strerror(code), path)


@dataclass
class Stat:
    """What stat(2) returns through the overlay (the ``StatLike`` fields and a few more)."""

    st_mode: int
    st_ino: int
    st_dev: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_atime_ns: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_rdev: int
    st_blocks: int


@dataclass(slots=True)
class _Obj:
    """One visible object: where it lives in each layer (an overlay dentry, in kernel terms)."""

    path: tuple[str, ...]  # canonical merged path; () is the root
    st: os.stat_result  # lstat of the topmost real object
    upper: str | None  # the upper object, if any
    # Directories: the lower directories merged below, top first. Non-directories: the one
    # lower object seen (only when there is no upper object).
    lowers: tuple[str, ...]
    opaque: bool = False  # upper directory has opaque="y"
    # Whether readdir filters xattr whiteouts in each layer (see _merged_names).
    upper_x: bool = False
    lowers_x: tuple[bool, ...] = ()

    @property
    def is_dir(self) -> bool:
        return S.S_ISDIR(self.st.st_mode)

    @property
    def is_symlink(self) -> bool:
        return S.S_ISLNK(self.st.st_mode)

    @property
    def real(self) -> str:
        """The real object operations go to (upper if copied up)."""
        return self.upper if self.upper is not None else self.lowers[0]

    @property
    def merged(self) -> bool:
        """A directory whose names come from more than one layer (OVL_TYPE_MERGE)."""
        return self.is_dir and len(self.lowers) + (self.upper is not None) > 1


@dataclass(frozen=True, slots=True)
class _LowerEntry:
    """A cached lookup in a lower layer (lower layers never change while in use)."""

    st: os.stat_result
    whiteout: bool
    opaque: str | None  # directories: the opaque xattr value
    redirect: bool


Stack = list[_Obj]  # the objects from the root down to one object: a resolved path
_Maker = Callable[[str], "int | None"]  # creates one new object at a real path (files: an fd)


class OverlayFS:
    """The merged view of ``layers``; see the module docstring."""

    def __init__(
        self,
        layers: LayerDirs,
        features: Features | None = None,
        *,
        whiteout_form: WhiteoutForm | None = None,
        native: bool | None = None,
        fsync: bool = False,
    ) -> None:
        features = features or Features()
        _check_features(features)
        if not layers.lowers:
            raise ValueError("an overlay needs at least one lower layer")
        if (layers.upper is None) != (layers.work is None):
            raise ValueError("upper and work directories go together")
        if layers.upper is None and len(layers.lowers) < 2:
            raise ValueError("a read-only overlay needs two lower layers (as the kernel does)")
        if native is None:
            # Under pyfakefs the os module is replaced; ctypes would reach the real disk.
            native = not type(os).__module__.startswith("pyfakefs")
        self.features = features
        self.names = Names(features.xattr_prefix)
        self.handles = Handles(native)
        self.fsync = fsync
        self.root_is_admin = os.geteuid() == 0 or not native
        if whiteout_form is None:
            whiteout_form = "chardev" if self.root_is_admin else "xattr"
        self.whiteout_form: WhiteoutForm = whiteout_form
        if not self.root_is_admin and not features.userxattr:
            raise Unavailable(
                "without root the trusted.overlay.* xattrs cannot be read or written: "
                "use the userxattr feature"
            )
        self.lower_dirs = tuple(os.fspath(p) for p in layers.lowers)
        self.upper_dir = None if layers.upper is None else os.fspath(layers.upper)
        self.work_dir = None if layers.work is None else f"{os.fspath(layers.work)}/work"
        self.read_only = self.upper_dir is None
        self._lower_cache: dict[str, _LowerEntry | None] = {}
        self._lower_names: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        self._origin_cache: dict[bytes, tuple[int, int] | None] = {}
        self._layer_fds: list[int] = []
        self._session_origin: dict[tuple[int, int], tuple[int, int]] = {}
        self._root_lowers_x: tuple[bool, ...] | None = None
        self._tmp_counter = itertools.count()
        top = self.upper_dir if self.upper_dir is not None else self.lower_dirs[0]
        self.st_dev = os.stat(top).st_dev
        self._uuid: bytes | None = None
        if self.handles.available:
            self._uuid = self.handles.fs_uuid(self.lower_dirs[0])
        if self.upper_dir is not None:
            self._prepare_upper()

    # --- set-up -------------------------------------------------------------------------------

    def _prepare_upper(self) -> None:
        """What the kernel does at mount: a clean work/work, and a persistent uuid (uuid=auto
        upgrades a new overlay, one whose root is not yet impure, to uuid=on)."""
        assert self.upper_dir is not None and self.work_dir is not None
        if os.path.isdir(self.work_dir):
            for name in os.listdir(self.work_dir):
                self._remove_tree(os.path.join(self.work_dir, name))
        else:
            os.mkdir(self.work_dir, 0o700)
        root_xattrs = list_xattrs(self.upper_dir)
        if (
            self.handles.native
            and self.names.uuid not in root_xattrs
            and self.names.impure not in root_xattrs
        ):
            # An upper without xattr support: the kernel then uses uuid=null too.
            with contextlib.suppress(OSError):
                os.setxattr(self.upper_dir, self.names.uuid, os.urandom(16))

    def shutdown(self) -> None:
        """Release the layer fds kept for decoding file handles."""
        for fd in self._layer_fds:
            os.close(fd)
        self._layer_fds.clear()

    # --- lookup -------------------------------------------------------------------------------

    def _root(self) -> _Obj:
        top = self.upper_dir if self.upper_dir is not None else self.lower_dirs[0]
        upper_x = False
        if self.upper_dir is not None:
            upper_x = get_xattr(self.upper_dir, self.names.opaque) == b"x"
        if self._root_lowers_x is None:  # lower layers never change: read once
            last = len(self.lower_dirs) - 1
            self._root_lowers_x = tuple(
                get_xattr(d, self.names.opaque) == b"x" and i != last
                for i, d in enumerate(self.lower_dirs)
            )
        lowers_x = self._root_lowers_x
        return _Obj(
            path=(),
            st=os.lstat(top),
            upper=self.upper_dir,
            lowers=self.lower_dirs,
            upper_x=upper_x,
            lowers_x=lowers_x,
        )

    def _lower_entry(self, path: str) -> _LowerEntry | None:
        try:
            return self._lower_cache[path]
        except KeyError:
            pass
        entry: _LowerEntry | None = None
        try:
            st = os.lstat(path)
        except OSError as exc:
            if exc.errno not in (E.ENOENT, E.ENAMETOOLONG):
                raise
        else:
            opaque: str | None = None
            redirect = False
            wh = is_whiteout(path, st, self.names)
            if S.S_ISDIR(st.st_mode):
                names = list_xattrs(path)
                if self.names.opaque in names:
                    value = get_xattr(path, self.names.opaque)
                    opaque = None if value is None else value.decode(errors="replace")
                redirect = self.names.redirect in names
            entry = _LowerEntry(st, wh, opaque, redirect)
        self._lower_cache[path] = entry
        return entry

    def _lookup(self, parent: _Obj, name: str) -> tuple[_Obj | None, bool]:
        """Look ``name`` up in the merged directory ``parent`` (fs/overlayfs/namei.c
        ovl_lookup): the object, or None and whether the upper layer holds a whiteout."""
        path = (*parent.path, name)
        top: os.stat_result | None = None
        upper: str | None = None
        opaque = upper_x = False
        stop = False
        if parent.upper is not None:
            real = f"{parent.upper}/{name}"
            try:
                st = os.lstat(real)
            except OSError as exc:
                if exc.errno not in (E.ENOENT, E.ENAMETOOLONG):
                    raise
            else:
                if is_whiteout(real, st, self.names):
                    return None, True
                top, upper = st, real
                stop = True
                if S.S_ISDIR(st.st_mode):
                    xattrs = list_xattrs(real)
                    if self.names.opaque in xattrs:
                        value = get_xattr(real, self.names.opaque)
                        opaque = value == b"y"
                        upper_x = value == b"x"
                    stop = opaque or not parent.lowers
                    if not stop and self.names.redirect in xattrs:
                        raise _err(E.EPERM, "/".join(path))  # redirect_dir=nofollow refuses
        lowers: list[str] = []
        lowers_x: list[bool] = []
        if not stop:
            count = len(parent.lowers)
            for i, ldir in enumerate(parent.lowers):
                real = f"{ldir}/{name}"
                entry = self._lower_entry(real)
                if entry is None:
                    continue
                if entry.whiteout:
                    break
                if not S.S_ISDIR(entry.st.st_mode):
                    if top is None:  # a non-directory below a directory is ignored
                        top = entry.st
                        lowers.append(real)
                    break
                if top is None:
                    top = entry.st
                lowers.append(real)
                # ovl_lookup_single() reads opaque="x" only below the upper layer and not
                # in the parent's last layer; only then does readdir look for xattr whiteouts.
                lowers_x.append(entry.opaque == "x" and i != count - 1)
                if i == count - 1:
                    break
                if entry.opaque == "y":
                    break
                if entry.redirect:
                    raise _err(E.EPERM, "/".join(path))
        if top is None:
            return None, False
        return (
            _Obj(path, top, upper, tuple(lowers), opaque, upper_x, tuple(lowers_x)),
            False,
        )

    # --- path walk (fs/namei.c) -----------------------------------------------------------------

    def _walk_parent(
        self, start: Stack, path: str, budget: list[int]
    ) -> tuple[Stack, str, int, bool]:
        """Resolve every component but the last: (directory stack, last name, last kind,
        trailing slash)."""
        stack = [start[0]] if path.startswith("/") else list(start)
        comps = [c for c in path.split("/") if c]
        if not comps:
            return stack, "", _ROOT, False
        for comp in comps[:-1]:
            stack = self._step(stack, comp, budget, path)
        last = comps[-1]
        kind = _DOT if last == "." else _DOTDOT if last == ".." else _NORM
        return stack, last, kind, path.endswith("/")

    def _step(self, stack: Stack, comp: str, budget: list[int], path: str) -> Stack:
        """One intermediate component: it must end up a directory."""
        if comp == ".":
            return stack
        if comp == "..":
            return stack[:-1] if len(stack) > 1 else stack  # ".." at the root stays there
        obj, _ = self._lookup(stack[-1], comp)
        if obj is None:
            raise _err(E.ENOENT, path)
        if obj.is_symlink:
            stack = self._follow(stack, obj, budget, path)
            obj = stack[-1]
        else:
            stack = [*stack, obj]
        if not obj.is_dir:
            raise _err(E.ENOTDIR, path)
        return stack

    def _follow(self, stack: Stack, link: _Obj, budget: list[int], path: str) -> Stack:
        budget[0] += 1
        if budget[0] > MAXSYMLINKS:
            raise _err(E.ELOOP, path)
        target = os.readlink(link.real)
        if not target:
            raise _err(E.ENOENT, path)
        return self._walk_from(stack, target, True, budget)

    def _walk_from(self, start: Stack, path: str, follow: bool, budget: list[int]) -> Stack:
        stack, last, kind, trailing = self._walk_parent(start, path, budget)
        if kind in (_ROOT, _DOT):
            return stack
        if kind == _DOTDOT:
            return stack[:-1] if len(stack) > 1 else stack
        obj, _ = self._lookup(stack[-1], last)
        if obj is None:
            raise _err(E.ENOENT, path)
        if obj.is_symlink and (follow or trailing):
            stack = self._follow(stack, obj, budget, path)
            obj = stack[-1]
        else:
            stack = [*stack, obj]
        if trailing and not obj.is_dir:
            raise _err(E.ENOTDIR, path)
        return stack

    def _resolve(self, path: str, follow: bool = True) -> Stack:
        return self._walk_from([self._root()], path, follow, [0])

    def _parent(self, path: str) -> tuple[Stack, str, int, bool]:
        return self._walk_parent([self._root()], path, [0])

    def _create_target(self, path: str, want_dir: bool = False) -> tuple[Stack, str, bool]:
        """filename_create(): the parent, the new name, and whether an upper whiteout is
        there. EEXIST beats ENOENT (trailing slash) beats EROFS, as in the kernel."""
        stack, last, kind, trailing = self._parent(path)
        if kind != _NORM:
            raise _err(E.EEXIST, path)
        obj, upper_wh = self._lookup(stack[-1], last)
        if obj is not None:
            raise _err(E.EEXIST, path)
        if trailing and not want_dir:
            raise _err(E.ENOENT, path)
        self._check_writable(path)
        return stack, last, upper_wh

    def _check_writable(self, path: str) -> None:
        if self.read_only:
            raise _err(E.EROFS, path)

    # --- inode numbers ------------------------------------------------------------------------

    def _origin_of(self, obj: _Obj) -> tuple[int, int] | None:
        """(st_ino, st_nlink) of the lower object an upper non-directory was copied up from,
        found by decoding its origin file handle like the kernel does; None if there is none
        or it cannot be decoded (then the kernel reports the upper inode too)."""
        upper = obj.upper
        assert upper is not None
        value = get_xattr(upper, self.names.origin)
        if value is None:
            if self._session_origin:
                st = os.lstat(upper)
                return self._session_origin.get((st.st_dev, st.st_ino))
            return None
        try:
            return self._origin_cache[value]
        except KeyError:
            pass
        result = self._decode_origin(value)
        if result is None and self.handles.available and os.geteuid() != 0:
            # open_by_handle_at() needs CAP_DAC_READ_SEARCH: look for the origin by name.
            return self._origin_by_path(obj, value)
        self._origin_cache[value] = result
        return result

    def _origin_by_path(self, obj: _Obj, value: bytes) -> tuple[int, int] | None:
        decoded = decode_origin(value)
        if decoded is None:
            return None
        fh = decoded[1]
        for root in self.lower_dirs:
            real = "/".join((root, *obj.path))
            if self.handles.encode(real) == fh:
                st = os.lstat(real)
                return st.st_ino, st.st_nlink
        if fh.type in (1, 2) and len(fh.data) >= 8:  # FILEID_INO32_GEN[_PARENT]: ino first
            return int.from_bytes(fh.data[:4], "little"), 1
        return None

    def _decode_origin(self, value: bytes) -> tuple[int, int] | None:
        decoded = decode_origin(value)
        if decoded is None:
            return None
        uuid, fh = decoded
        pathless = read_pathless(fh)
        if pathless is not None:
            return pathless
        if self._uuid is not None and uuid != self._uuid:
            return None
        if not self._layer_fds and self.handles.available:
            for d in self.lower_dirs:
                self._layer_fds.append(os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        for mount_fd in self._layer_fds:
            fd = self.handles.open(mount_fd, fh)
            if fd is not None:
                try:
                    st = os.fstat(fd)
                finally:
                    os.close(fd)
                return st.st_ino, st.st_nlink
        return None

    def _stat(self, obj: _Obj) -> Stat:
        st = obj.st
        ino, nlink = st.st_ino, st.st_nlink
        if obj.is_dir:
            # The root reports the upper root; other merged directories the top lower one
            # (ovl_getattr: constant st_ino across copy-up with all layers on one fs).
            if obj.path and obj.upper is not None and obj.lowers:
                ino = self._lower_entry_st(obj.lowers[0]).st_ino
            if obj.merged:
                nlink = 1
        elif obj.upper is not None:
            origin = self._origin_of(obj)
            # A lower hard link (nlink > 1) is broken by copy-up: the copy keeps its own ino.
            if origin is not None and origin[1] == 1:
                ino = origin[0]
        return Stat(
            st_mode=st.st_mode,
            st_ino=ino,
            st_dev=self.st_dev,
            st_nlink=nlink,
            st_uid=st.st_uid,
            st_gid=st.st_gid,
            st_size=st.st_size,
            st_atime_ns=st.st_atime_ns,
            st_mtime_ns=st.st_mtime_ns,
            st_ctime_ns=st.st_ctime_ns,
            st_rdev=getattr(st, "st_rdev", 0),
            st_blocks=getattr(st, "st_blocks", 0),
        )

    def _lower_entry_st(self, real: str) -> os.stat_result:
        entry = self._lower_cache.get(real)
        return entry.st if entry is not None else os.lstat(real)

    # --- directories --------------------------------------------------------------------------

    def _has_origin(self, real: str) -> bool:
        return get_xattr(real, self.names.origin) is not None

    def _layer_names(self, real: str, in_x: bool, cache: bool) -> tuple[set[str], set[str]]:
        """(names, whiteouts) of one real directory; ``in_x``: xattr whiteouts count."""
        key = f"{int(in_x)}{real}"
        if cache:
            hit = self._lower_names.get(key)
            if hit is not None:
                return set(hit[0]), set(hit[1])
        names: set[str] = set()
        whiteouts: set[str] = set()
        with os.scandir(real) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False) or entry.is_symlink():
                    names.add(entry.name)
                    continue
                st = entry.stat(follow_symlinks=False)
                if is_whiteout(entry.path, st, self.names, in_x):
                    whiteouts.add(entry.name)
                else:
                    names.add(entry.name)
        if cache:
            self._lower_names[key] = (frozenset(names), frozenset(whiteouts))
        return names, whiteouts

    def _merged_names(self, obj: _Obj, for_remove: bool = False) -> set[str]:
        """ovl_dir_read_merged(): the visible names, upper layer first. ``for_remove``: the
        emptiness check of rmdir and rename, where the kernel counts an xattr whiteout of a
        lower layer as an entry (it only looks for them when iterating, ovl_iterate())."""
        visible: set[str] = set()
        hidden: set[str] = set()
        layers: list[tuple[str, bool, bool]] = []
        if obj.upper is not None:
            # The kernel never looks for xattr whiteouts in the upper layer's readdir (it does
            # not write them); we do where we wrote them ourselves (the xattr whiteout form).
            layers.append((obj.upper, obj.upper_x and self.whiteout_form == "xattr", False))
        layers.extend(
            (d, x and not for_remove, True) for d, x in zip(obj.lowers, obj.lowers_x, strict=True)
        )
        for real, in_x, is_lower in layers:
            names, whiteouts = self._layer_names(real, in_x, is_lower)
            visible |= names - hidden
            hidden |= whiteouts - visible
        return visible

    # --- copy-up ------------------------------------------------------------------------------

    def _tmp_name(self) -> str:
        assert self.work_dir is not None
        return f"{self.work_dir}/#pyo{os.getpid():x}.{next(self._tmp_counter):x}"

    def _copy_up(self, stack: Stack) -> None:
        """Make every object of ``stack`` have an upper object (ovl_copy_up), top down."""
        for i in range(1, len(stack)):
            obj = stack[i]
            if obj.upper is not None:
                continue
            parent_upper = stack[i - 1].upper
            assert parent_upper is not None
            target = f"{parent_upper}/{obj.path[-1]}"
            # Another stack of the same call may have copied it up already.
            if os.path.lexists(target):
                obj.upper = target
                obj.st = os.lstat(target)
                continue
            self._copy_up_one(obj, parent_upper, target)

    def _copy_up_one(self, obj: _Obj, parent_upper: str, target: str) -> None:
        """Copy one lower object into the upper layer: built in the work directory with its
        data, xattrs, origin, owner, mode and times, then renamed into place; the parent's
        times are restored, as the kernel does (ovl_copy_up_workdir)."""
        src = obj.lowers[0]
        st = obj.st
        pst = os.lstat(parent_upper)
        tmp = self._tmp_name()
        mode = st.st_mode
        try:
            if S.S_ISDIR(mode):
                os.mkdir(tmp, 0o700)
            elif S.S_ISREG(mode):
                self._copy_data(src, tmp)
            elif S.S_ISLNK(mode):
                os.symlink(os.readlink(src), tmp)
            else:
                os.mknod(tmp, mode, st.st_rdev)
            for name in list_xattrs(src):
                if self.names.visible(name) is None:
                    continue  # the lower's private xattrs are not copied (ovl_copy_xattr)
                value = get_xattr(src, name)
                if value is not None:
                    os.setxattr(tmp, name, value, follow_symlinks=False)
            has_origin = self._set_origin(src, tmp)
            os.chown(tmp, st.st_uid, st.st_gid, follow_symlinks=False)
            if not S.S_ISLNK(mode):
                os.chmod(tmp, S.S_IMODE(mode))
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
            os.rename(tmp, target)
        except BaseException:
            self._remove_tree(tmp)
            raise
        self._set_impure(parent_upper)
        os.utime(parent_upper, ns=(pst.st_atime_ns, pst.st_mtime_ns), follow_symlinks=False)
        obj.upper = target
        obj.st = os.lstat(target)
        if not has_origin and not S.S_ISDIR(mode):
            # No origin on disk (say user.* xattrs on a symlink): the kernel's in-memory inode
            # still knows its lower until the next mount, and so do we.
            self._session_origin[(obj.st.st_dev, obj.st.st_ino)] = (st.st_ino, st.st_nlink)

    def _copy_data(self, src: str, dst: str) -> None:
        fin = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fout = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                copied = False
                if self.handles.native:
                    try:
                        size = os.fstat(fin).st_size
                        done = 0
                        while done < size:
                            n = os.copy_file_range(fin, fout, size - done)
                            if n == 0:
                                break
                            done += n
                        copied = True
                    except OSError as exc:
                        if exc.errno not in (E.EXDEV, E.ENOSYS, E.EOPNOTSUPP, E.EINVAL):
                            raise
                        os.lseek(fin, 0, os.SEEK_SET)
                        os.ftruncate(fout, 0)
                if not copied:
                    while chunk := os.read(fin, _COPY_CHUNK):
                        os.write(fout, chunk)
                if self.fsync:
                    os.fsync(fout)
            finally:
                os.close(fout)
        finally:
            os.close(fin)

    def _set_origin(self, src: str, tmp: str) -> bool:
        """``origin`` in the kernel's format (without real file handles, a pathless one);
        whether it could be written."""
        fh: FileHandle | None = self.handles.encode(src)
        if fh is None:
            if self.handles.native:
                return False  # a layer without file handles: the kernel writes no origin either
            fh = pathless_handle(os.lstat(src))
        uuid = self._uuid if self._uuid is not None else bytes(16)
        try:
            os.setxattr(tmp, self.names.origin, encode_origin(fh, uuid), follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (E.ENOTSUP, E.EOPNOTSUPP, E.EPERM):
                raise
            return False
        return True

    def _set_impure(self, upper_dir: str) -> None:
        """``impure="y"``: this upper directory may hold entries with an origin."""
        if get_xattr(upper_dir, self.names.impure) is None:
            try:
                os.setxattr(upper_dir, self.names.impure, b"y", follow_symlinks=False)
            except OSError as exc:
                if exc.errno not in (E.ENOTSUP, E.EOPNOTSUPP, E.EPERM):
                    raise

    # --- writing to the upper layer -----------------------------------------------------------

    def _remove_tree(self, path: str) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if S.S_ISDIR(st.st_mode):
            for name in os.listdir(path):
                self._remove_tree(f"{path}/{name}")
            os.rmdir(path)
        else:
            os.unlink(path)

    def _clear_whiteouts(self, upper_dir: str) -> None:
        """Remove the whiteouts of an upper directory (and nothing else)."""
        with os.scandir(upper_dir) as it:
            for entry in it:
                if is_whiteout(entry.path, entry.stat(follow_symlinks=False), self.names):
                    os.unlink(entry.path)

    def _exchange(self, a: str, b: str) -> None:
        """Swap two names atomically (RENAME_EXCHANGE); without renameat2, in three steps."""
        if self.handles.available:
            self.handles.renameat2(a, b, RENAME_EXCHANGE)
            return
        tmp = self._tmp_name()
        os.rename(a, tmp)
        os.rename(b, a)
        os.rename(tmp, b)

    def _new_whiteout(self) -> str:
        tmp = self._tmp_name()
        make_whiteout(tmp, self.names, self.whiteout_form)
        return tmp

    def _mark_xwhiteouts(self, upper_dir: str) -> None:
        """An xattr whiteout is only looked for in a directory marked opaque="x"."""
        if self.whiteout_form == "xattr" and get_xattr(upper_dir, self.names.opaque) is None:
            os.setxattr(upper_dir, self.names.opaque, b"x", follow_symlinks=False)

    def _whiteout_at(self, parent_upper: str, target: str) -> None:
        """Replace ``target`` (absent, a non-directory, or an emptied directory) by a
        whiteout, atomically through the work directory (ovl_cleanup_and_whiteout)."""
        self._mark_xwhiteouts(parent_upper)
        wh = self._new_whiteout()
        try:
            st = os.lstat(target)
        except FileNotFoundError:
            os.rename(wh, target)
            return
        if S.S_ISDIR(st.st_mode):
            self._exchange(wh, target)
            self._remove_tree(wh)
        else:
            os.rename(wh, target)

    def _create(
        self, stack: Stack, name: str, upper_wh: bool, make: _Maker, is_dir: bool = False
    ) -> int | None:
        """Create a new upper object: directly, or over an upper whiteout through the work
        directory, a new directory then being opaque (ovl_create_or_link)."""
        self._copy_up(stack)
        parent_upper = stack[-1].upper
        assert parent_upper is not None
        target = f"{parent_upper}/{name}"
        if not upper_wh:
            return make(target)
        tmp = self._tmp_name()
        fd = make(tmp)
        try:
            if is_dir:
                os.setxattr(tmp, self.names.opaque, b"y", follow_symlinks=False)
            self._exchange(tmp, target)
        except BaseException:
            if fd is not None:
                os.close(fd)
            self._remove_tree(tmp)
            raise
        os.unlink(tmp)  # now the old whiteout
        return fd

    def _lower_positive(self, parent: _Obj, name: str, obj: _Obj | None, upper_wh: bool) -> bool:
        """ovl_lower_positive(): whether removing ``name`` must leave a whiteout."""
        if obj is None:
            return upper_wh
        if obj.upper is None:
            return True
        for ldir in parent.lowers:
            entry = self._lower_entry(f"{ldir}/{name}")
            if entry is not None:
                return not entry.whiteout
        return False

    def _pure_upper(self, obj: _Obj) -> bool:
        return not obj.lowers and obj.upper is not None and not self._has_origin(obj.upper)

    # --- PosixFS: reading ---------------------------------------------------------------------

    def stat(self, path: str, follow: bool = True) -> Stat:
        return self._stat(self._resolve(path, follow)[-1])

    def readlink(self, path: str) -> str:
        obj = self._resolve(path, follow=False)[-1]
        if not obj.is_symlink:
            raise _err(E.EINVAL, path)
        return os.readlink(obj.real)

    def listdir(self, path: str) -> list[str]:
        obj = self._resolve(path)[-1]
        if not obj.is_dir:
            raise _err(E.ENOTDIR, path)
        if not obj.merged and not self._has_origin(obj.real):
            # A directory from one layer only is read as it is (ovl_dir_is_real): the kernel
            # lists even whiteouts found there.
            return os.listdir(obj.real)
        return list(self._merged_names(obj))

    def getxattr(self, path: str, key: str, follow: bool = True) -> bytes:
        _check_xattr_name(key)
        obj = self._resolve(path, follow)[-1]
        if key.startswith("user.") and not (obj.is_dir or S.S_ISREG(obj.st.st_mode)):
            raise _err(E.ENODATA, path)
        return os.getxattr(obj.real, self.names.escape(key), follow_symlinks=False)

    def listxattr(self, path: str, follow: bool = True) -> list[str]:
        obj = self._resolve(path, follow)[-1]
        out = []
        for name in list_xattrs(obj.real):
            shown = self.names.visible(name)
            if shown is not None:
                out.append(shown)
        return out

    # --- PosixFS: files -----------------------------------------------------------------------

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        if flags & os.O_CREAT and flags & os.O_DIRECTORY:
            raise _err(E.EINVAL, path)
        return self._open_from([self._root()], path, flags, mode, [0])

    def _open_from(self, start: Stack, path: str, flags: int, mode: int, budget: list[int]) -> int:
        """path_openat(): lookup (or create), then do_open()'s checks in the kernel's order."""
        want_dir = bool(flags & os.O_DIRECTORY)
        if not flags & os.O_CREAT:
            stack = self._walk_from(start, path, not flags & os.O_NOFOLLOW, budget)
            want_dir = want_dir or path.endswith("/")
            return self._do_open(stack, flags, want_dir, path)
        stack, last, kind, trailing = self._walk_parent(start, path, budget)
        if kind != _NORM:
            if kind == _DOTDOT and len(stack) > 1:
                stack = stack[:-1]
            return self._do_open(stack, flags, want_dir, path)
        if trailing:
            raise _err(E.EISDIR, path)
        obj, upper_wh = self._lookup(stack[-1], last)
        if obj is None:
            self._check_writable(path)
            oflags = (flags & ~os.O_TRUNC) | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC

            def make(real: str) -> int:
                return os.open(real, oflags, mode)

            fd = self._create(stack, last, upper_wh, make)
            assert fd is not None
            return fd
        if flags & os.O_EXCL:
            raise _err(E.EEXIST, path)
        if obj.is_symlink and not flags & os.O_NOFOLLOW:
            budget[0] += 1
            if budget[0] > MAXSYMLINKS:
                raise _err(E.ELOOP, path)
            target = os.readlink(obj.real)
            if not target:
                raise _err(E.ENOENT, path)
            return self._open_from(stack, target, flags, mode, budget)
        if obj.is_dir:
            raise _err(E.EISDIR, path)
        return self._do_open([*stack, obj], flags, want_dir, path)

    def _do_open(self, stack: Stack, flags: int, want_dir: bool, path: str) -> int:
        obj = stack[-1]
        if flags & os.O_CREAT:
            if flags & os.O_EXCL:
                raise _err(E.EEXIST, path)
            if obj.is_dir:
                raise _err(E.EISDIR, path)
        if want_dir and not obj.is_dir:
            raise _err(E.ENOTDIR, path)
        kind = S.S_IFMT(obj.st.st_mode)
        acc = flags & os.O_ACCMODE
        may_write = acc != os.O_RDONLY or bool(flags & os.O_TRUNC)
        if kind == S.S_IFREG and flags & os.O_TRUNC:
            self._check_writable(path)
        if kind == S.S_IFLNK:
            raise _err(E.ELOOP, path)
        if kind == S.S_IFDIR and may_write:
            raise _err(E.EISDIR, path)
        if may_write and kind in (S.S_IFREG, S.S_IFDIR, S.S_IFLNK):
            self._check_writable(path)
        # ovl_open_need_copy_up(): FMODE_WRITE (O_WRONLY, O_RDWR but not both) or O_TRUNC.
        fmode_write = ((acc + 1) & os.O_ACCMODE) & 2
        special = kind not in (S.S_IFREG, S.S_IFDIR, S.S_IFLNK)
        if (fmode_write or flags & os.O_TRUNC) and not special and obj.upper is None:
            self._copy_up(stack)
        oflags = (flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW)) | os.O_CLOEXEC
        if obj.upper is None:
            oflags &= ~os.O_TRUNC  # never let a lower file be changed
        return os.open(obj.real, oflags)

    def read(self, fd: int, size: int) -> bytes:
        return os.read(fd, size)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        if self.handles.native:
            return os.pwrite(fd, data, offset)
        # pyfakefs has no pwrite; our fds live for one operation, so moving the offset is fine
        # (and O_APPEND still appends, as pwrite does on Linux).
        os.lseek(fd, offset, os.SEEK_SET)
        return os.write(fd, data)

    def close(self, fd: int) -> None:
        os.close(fd)

    def truncate(self, path: str, length: int) -> None:
        if length < 0:
            raise _err(E.EINVAL, path)
        stack = self._resolve(path)
        obj = stack[-1]
        if obj.is_dir:
            raise _err(E.EISDIR, path)
        if not S.S_ISREG(obj.st.st_mode):
            raise _err(E.EINVAL, path)
        self._check_writable(path)
        self._copy_up(stack)
        assert obj.upper is not None
        os.truncate(obj.upper, length)

    # --- PosixFS: attributes ------------------------------------------------------------------

    def _setattr_target(self, path: str, follow: bool) -> _Obj:
        stack = self._resolve(path, follow)
        self._check_writable(path)
        self._copy_up(stack)
        return stack[-1]

    def chmod(self, path: str, mode: int) -> None:
        obj = self._setattr_target(path, True)
        assert obj.upper is not None
        os.chmod(obj.upper, mode)

    def chown(self, path: str, uid: int, gid: int, follow: bool) -> None:
        obj = self._setattr_target(path, follow)
        assert obj.upper is not None
        os.chown(obj.upper, uid, gid, follow_symlinks=False)

    def utime(self, path: str, atime_ns: int, mtime_ns: int) -> None:
        obj = self._setattr_target(path, True)
        assert obj.upper is not None
        os.utime(obj.upper, ns=(atime_ns, mtime_ns), follow_symlinks=False)

    def setxattr(self, path: str, key: str, value: bytes, flags: int) -> None:
        if flags & ~(os.XATTR_CREATE | os.XATTR_REPLACE):
            raise _err(E.EINVAL, path)
        _check_xattr_name(key)
        if len(value) > _XATTR_SIZE_MAX:
            raise _err(E.E2BIG, path)
        stack = self._resolve(path)
        obj = stack[-1]
        self._check_writable(path)
        _check_xattr_permission(obj, key, path)
        self._copy_up(stack)
        assert obj.upper is not None
        os.setxattr(obj.upper, self.names.escape(key), value, flags, follow_symlinks=False)

    def removexattr(self, path: str, key: str) -> None:
        _check_xattr_name(key)
        stack = self._resolve(path)
        obj = stack[-1]
        self._check_writable(path)
        _check_xattr_permission(obj, key, path)
        stored = self.names.escape(key)
        if obj.upper is None:
            # ovl_xattr_set(): removing what the lower object lacks copies nothing up.
            os.getxattr(obj.real, stored, follow_symlinks=False)
            self._copy_up(stack)
        assert obj.upper is not None
        os.removexattr(obj.upper, stored, follow_symlinks=False)

    # --- PosixFS: names -----------------------------------------------------------------------

    def mkdir(self, path: str, mode: int) -> None:
        stack, name, upper_wh = self._create_target(path, want_dir=True)

        def make(real: str) -> None:
            os.mkdir(real, mode)

        self._create(stack, name, upper_wh, make, is_dir=True)

    def symlink(self, target: str, path: str) -> None:
        if not target:
            raise _err(E.ENOENT, path)
        stack, name, upper_wh = self._create_target(path)

        def make(real: str) -> None:
            os.symlink(target, real)

        self._create(stack, name, upper_wh, make)

    def mknod(self, path: str, mode: int, device: int) -> None:
        kind = S.S_IFMT(mode)
        if kind == S.S_IFDIR:
            raise _err(E.EPERM, path)
        if kind not in (0, S.S_IFREG, S.S_IFCHR, S.S_IFBLK, S.S_IFIFO, S.S_IFSOCK):
            raise _err(E.EINVAL, path)
        stack, name, upper_wh = self._create_target(path)
        if kind in (S.S_IFCHR, S.S_IFBLK):
            if not self.root_is_admin:
                raise _err(E.EPERM, path)
            if kind == S.S_IFCHR and device == 0:
                raise _err(E.EPERM, path)  # no whiteouts through the overlay (ovl_mknod)

        def make(real: str) -> None:
            os.mknod(real, mode, device)

        self._create(stack, name, upper_wh, make)

    def link(self, src: str, dst: str) -> None:
        sstack = self._resolve(src, follow=False)
        stack, name, upper_wh = self._create_target(dst)
        if sstack[-1].is_dir:
            raise _err(E.EPERM, src)
        self._copy_up(sstack)
        source = sstack[-1].upper
        assert source is not None

        def make(real: str) -> None:
            os.link(source, real, follow_symlinks=False)

        self._create(stack, name, upper_wh, make)

    def unlink(self, path: str) -> None:
        stack, last, kind, trailing = self._parent(path)
        if kind != _NORM:
            raise _err(E.EISDIR, path)
        self._check_writable(path)
        parent = stack[-1]
        obj, upper_wh = self._lookup(parent, last)
        if obj is None:
            raise _err(E.ENOENT, path)
        if trailing or obj.is_dir:
            raise _err(E.EISDIR if obj.is_dir else E.ENOTDIR, path)
        self._remove(stack, last, obj, upper_wh)

    def rmdir(self, path: str) -> None:
        stack, last, kind, _trailing = self._parent(path)
        if kind == _DOTDOT:
            raise _err(E.ENOTEMPTY, path)
        if kind == _DOT:
            raise _err(E.EINVAL, path)
        if kind == _ROOT:
            raise _err(E.EBUSY, path)
        self._check_writable(path)
        obj, upper_wh = self._lookup(stack[-1], last)
        if obj is None:
            raise _err(E.ENOENT, path)
        if not obj.is_dir:
            raise _err(E.ENOTDIR, path)
        self._remove(stack, last, obj, upper_wh)

    def _remove(self, stack: Stack, name: str, obj: _Obj, upper_wh: bool) -> None:
        """ovl_do_remove(): a whiteout where a lower object would show, else nothing."""
        parent = stack[-1]
        positive = self._lower_positive(parent, name, obj, upper_wh)
        # A purely upper directory is left to the real rmdir, which refuses even whiteouts
        # (ENOTEMPTY); any other must look empty, and its whiteouts are cleared.
        check = obj.is_dir and (positive or not self._pure_upper(obj))
        if check and self._merged_names(obj, for_remove=True):
            raise _err(E.ENOTEMPTY, "/".join(obj.path))
        self._copy_up(stack)
        parent_upper = parent.upper
        assert parent_upper is not None
        target = f"{parent_upper}/{name}"
        if check and obj.upper is not None:
            self._clear_whiteouts(obj.upper)
        if positive:
            self._whiteout_at(parent_upper, target)
        elif obj.is_dir:
            os.rmdir(target)
        else:
            os.unlink(target)

    def rename(self, src: str, dst: str, flags: int) -> None:
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT):
            raise _err(E.EINVAL, src)
        if flags & (RENAME_NOREPLACE | RENAME_WHITEOUT) and flags & RENAME_EXCHANGE:
            raise _err(E.EINVAL, src)
        if flags & RENAME_WHITEOUT and not self.root_is_admin:
            raise _err(E.EPERM, src)
        exchange = bool(flags & RENAME_EXCHANGE)
        ostack, olast, okind, otrail = self._parent(src)
        nstack, nlast, nkind, ntrail = self._parent(dst)
        if okind != _NORM:
            raise _err(E.EBUSY, src)
        if nkind != _NORM:
            raise _err(E.EEXIST if flags & RENAME_NOREPLACE else E.EBUSY, dst)
        self._check_writable(src)
        oparent, nparent = ostack[-1], nstack[-1]
        old, _ = self._lookup(oparent, olast)
        if old is None:
            raise _err(E.ENOENT, src)
        new, new_wh = self._lookup(nparent, nlast)
        if flags & RENAME_NOREPLACE and new is not None:
            raise _err(E.EEXIST, dst)
        if exchange:
            if new is None:
                raise _err(E.ENOENT, dst)
            if not new.is_dir and ntrail:
                raise _err(E.ENOTDIR, dst)
        if not old.is_dir and (otrail or (not exchange and ntrail)):
            raise _err(E.ENOTDIR, src)
        # lock_rename()'s trap: neither may be an ancestor of the other's parent.
        opath, npath = oparent.path, nparent.path
        if opath != npath:
            if npath[: len(opath)] == opath and old.path == npath[: len(opath) + 1]:
                raise _err(E.EINVAL, src)
            if (
                opath[: len(npath)] == npath
                and new is not None
                and new.path == opath[: len(npath) + 1]
            ):
                raise _err(E.EINVAL if exchange else E.ENOTEMPTY, dst)
        # vfs_rename()
        if new is not None and self._same_inode(old, new):
            return
        if new is not None and not exchange:
            if old.is_dir and not new.is_dir:
                raise _err(E.ENOTDIR, dst)
            if not old.is_dir and new.is_dir:
                raise _err(E.EISDIR, dst)
        # ovl_rename()
        if flags & RENAME_WHITEOUT:
            raise _err(E.EINVAL, src)
        if not self._can_move(old) or (exchange and new is not None and not self._can_move(new)):
            raise _err(E.EXDEV, src)
        # A merged target that looks empty is emptied of its whiteouts first (ovl_clear_empty);
        # a purely upper one is left to the real rename, which says ENOTEMPTY if need be.
        clear_target = not exchange and new is not None and new.is_dir and not self._pure_upper(new)
        if clear_target and new is not None and self._merged_names(new, for_remove=True):
            raise _err(E.ENOTEMPTY, dst)
        whiteout_src = switch = cleanup = False
        if not exchange:
            if self._lower_positive(oparent, olast, old, False):
                if new is None and new_wh:
                    switch = True  # the whiteout moves to the old name
                else:
                    whiteout_src = True
            elif old.is_dir and new is None and new_wh:
                switch = cleanup = True
        self._copy_up([*ostack, old])
        self._copy_up(nstack)
        if exchange and new is not None:
            self._copy_up([*nstack, new])
        old_upper = old.upper
        opar_upper, npar_upper = oparent.upper, nparent.upper
        assert old_upper is not None and opar_upper is not None and npar_upper is not None
        target = f"{npar_upper}/{nlast}"
        if opath != npath:
            if old.lowers or self._has_origin(old_upper):
                self._set_impure(npar_upper)
            if (
                exchange
                and new is not None
                and new.upper is not None
                and (new.lowers or self._has_origin(new.upper))
            ):
                self._set_impure(opar_upper)
        # A directory moved into a merged directory must not merge with what lies below.
        if old.is_dir and not old.opaque and nparent.merged:
            os.setxattr(old_upper, self.names.opaque, b"y", follow_symlinks=False)
        if exchange and new is not None and new.is_dir and not new.opaque and oparent.merged:
            assert new.upper is not None
            os.setxattr(new.upper, self.names.opaque, b"y", follow_symlinks=False)
        if clear_target and new is not None and new.upper is not None:
            self._clear_whiteouts(new.upper)
        if exchange or switch:
            self._exchange(old_upper, target)
            if cleanup:
                os.unlink(old_upper)
        elif whiteout_src:
            self._rename_whiteout(opar_upper, old_upper, target)
        else:
            os.rename(old_upper, target)

    def _rename_whiteout(self, opar_upper: str, old_upper: str, target: str) -> None:
        if self.whiteout_form == "chardev" and self.handles.available:
            self.handles.renameat2(old_upper, target, RENAME_WHITEOUT)
            return
        os.rename(old_upper, target)
        self._whiteout_at(opar_upper, old_upper)

    def _same_inode(self, old: _Obj, new: _Obj) -> bool:
        """Whether two names are one overlay inode (vfs_rename() then does nothing)."""
        if old.path == new.path:
            return True
        if old.is_dir or new.is_dir or old.upper is None or new.upper is None:
            return False
        return (old.st.st_dev, old.st.st_ino) == (new.st.st_dev, new.st.st_ino)

    def _can_move(self, obj: _Obj) -> bool:
        """ovl_can_move(): without redirects a lower or merged directory stays put."""
        return not obj.is_dir or (obj.upper is not None and not obj.lowers)


def _check_features(features: Features) -> None:
    missing = []
    if features.redirect_dir != "nofollow":
        missing.append(f"redirect_dir={features.redirect_dir} (only nofollow)")
    if features.index:
        missing.append("index=on")
    if features.metacopy:
        missing.append("metacopy=on")
    if features.xino != "off":
        missing.append(f"xino={features.xino}")
    if features.nfs_export:
        missing.append("nfs_export=on")
    if missing:
        raise Unavailable("the python overlay does not implement " + ", ".join(missing))


def _check_xattr_name(key: str) -> None:
    if not key or len(key.encode()) > _XATTR_NAME_MAX:
        raise _err(E.ERANGE, key)


def _check_xattr_permission(obj: _Obj, key: str, path: str) -> None:
    """xattr_permission(): user.* only on regular files and directories."""
    if key.startswith("user.") and not (obj.is_dir or S.S_ISREG(obj.st.st_mode)):
        raise _err(E.EPERM, path)
