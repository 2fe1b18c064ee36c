"""The kernel's on-disk layer format: write model layers to directories and read them back.

A model ``Layer`` says what a layer holds; this module says how the kernel stores it
(overlayfs.rst "whiteouts and opaque directories", "Redirect dir"):

- a whiteout is a character device 0/0 with mode 0 (``whiteout_form="chardev"``), or an empty
  regular file carrying ``<prefix>whiteout`` (``"xattr"``), whose parent directory then needs
  ``<prefix>opaque="x"`` or the kernel never looks for it;
- an opaque directory carries ``<prefix>opaque="y"``; a redirected one ``<prefix>redirect``;
- ``<prefix>`` is ``trusted.overlay.``, or ``user.overlay.`` under ``userxattr``.

``fingerprint`` digests a whole tree, so the suite can check that lower layers never change.
"""

from __future__ import annotations

import hashlib
import os
import stat as S
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from adapters.base import AdapterError, LayerDirs
from model.features import Features
from model.frozen import FrozenMap
from model.state import ROOT, Inode, Layer, Overlay
from model.state import Path as MPath

WHITEOUT_RDEV = 0


def _check_name(path: MPath) -> None:
    for name in path:
        if not name or name in (".", "..") or "/" in name or "\0" in name:
            raise AdapterError(f"layer path {path!r} has an invalid name {name!r}")


def _fail(fspath: Path, what: str, exc: OSError) -> AdapterError:
    return AdapterError(f"cannot {what} {fspath}: {exc.strerror or exc}")


def write_layer(layer: Layer, dest: Path, features: Features) -> None:
    """Write ``layer`` into ``dest`` (created if missing; must be empty) in the kernel's format.

    Objects first, then each non-directory's owner, mode, xattrs and mtime, and the directories'
    last, deepest first: creating an entry changes its parent's mtime, so only then do times
    stick."""
    prefix = features.xattr_prefix
    root = layer.get(ROOT)
    if root is None or root.kind != "dir":
        raise AdapterError("a layer needs a root directory at path ()")
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise AdapterError(f"layer directory {dest} is not empty")

    written: dict[int, Path] = {layer.entries[ROOT]: dest}
    dirs: list[tuple[MPath, Path, Inode]] = [(ROOT, dest, root)]
    needs_x: set[MPath] = set()
    for path in sorted(layer.entries, key=lambda p: (len(p), p)):
        if path == ROOT:
            continue
        _check_name(path)
        parent = layer.get(path[:-1])
        if parent is None or parent.kind != "dir":
            raise AdapterError(f"layer path {path!r} has no parent directory in the layer")
        ino = layer.entries[path]
        inode = layer.inodes[ino]
        fspath = dest.joinpath(*path)
        if ino in written:
            if inode.is_dir:
                raise AdapterError(f"directory inode {ino} has several names, at {path!r}")
            try:
                os.link(written[ino], fspath, follow_symlinks=False)
            except OSError as exc:
                raise _fail(fspath, "hard-link", exc) from exc
            continue
        _create(fspath, inode, prefix)
        written[ino] = fspath
        if inode.is_dir:
            dirs.append((path, fspath, inode))
        else:
            _set_meta(fspath, inode, prefix)
        if inode.kind == "whiteout" and inode.whiteout_form == "xattr" and not parent.opaque:
            needs_x.add(path[:-1])

    for path, fspath, inode in sorted(dirs, key=lambda d: len(d[0]), reverse=True):
        extra = {}
        if inode.opaque:
            extra[prefix + "opaque"] = b"y"
        elif path in needs_x:
            extra[prefix + "opaque"] = b"x"
        if inode.redirect is not None:
            extra[prefix + "redirect"] = inode.redirect.encode()
        _set_meta(fspath, inode, prefix, extra)


def _create(fspath: Path, inode: Inode, prefix: str) -> None:
    try:
        match inode.kind:
            case "dir":
                os.mkdir(fspath, 0o700)
            case "file":
                fd = os.open(fspath, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    view = memoryview(inode.data)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
            case "symlink":
                os.symlink(inode.target, fspath)
            case "fifo":
                os.mkfifo(fspath, 0o600)
            case "chr":
                os.mknod(fspath, S.S_IFCHR | 0o600, inode.rdev)
            case "whiteout" if inode.whiteout_form == "chardev":
                os.mknod(fspath, S.S_IFCHR, WHITEOUT_RDEV)
            case "whiteout":
                fd = os.open(fspath, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                os.close(fd)
                os.setxattr(fspath, prefix + "whiteout", b"y")
            case _:
                raise AdapterError(f"cannot write an inode of kind {inode.kind!r} at {fspath}")
    except OSError as exc:
        raise _fail(fspath, f"create {inode.kind}", exc) from exc


def _set_meta(
    fspath: Path, inode: Inode, prefix: str, extra: dict[str, bytes] | None = None
) -> None:
    """Owner, then mode (chown clears set-id bits), then xattrs, then mtime (last: nothing
    after it touches this inode's mtime)."""
    link = inode.kind == "symlink"
    try:
        os.chown(fspath, inode.uid, inode.gid, follow_symlinks=False)
        if not link:
            chardev_whiteout = inode.kind == "whiteout" and inode.whiteout_form == "chardev"
            os.chmod(fspath, 0 if chardev_whiteout else S.S_IMODE(inode.mode))
        for key, value in sorted(inode.xattrs.items()):
            if key.startswith(prefix):
                raise AdapterError(
                    f"{fspath}: xattr {key!r} is the overlay's own; the model never holds those"
                )
            os.setxattr(fspath, key, value, follow_symlinks=False)
        for key, value in sorted((extra or {}).items()):
            os.setxattr(fspath, key, value, follow_symlinks=False)
        if inode.mtime is not None:
            os.utime(fspath, ns=(inode.mtime, inode.mtime), follow_symlinks=False)
    except OSError as exc:
        raise _fail(fspath, "set owner, mode, xattrs or mtime of", exc) from exc


def write_stack(state: Overlay, root: Path) -> LayerDirs:
    """Write every layer of ``state`` under ``root``: ``lower/0`` (the top lower layer),
    ``lower/1``, ..., and ``upper`` and an empty ``work`` unless the overlay is read-only."""
    lowers = []
    for i, layer in enumerate(state.lowers):
        d = root / "lower" / str(i)
        write_layer(layer, d, state.features)
        lowers.append(d)
    upper = work = None
    if state.upper is not None:
        upper = root / "upper"
        work = root / "work"
        write_layer(state.upper, upper, state.features)
        work.mkdir(parents=True)
    return LayerDirs(tuple(lowers), upper, work)


# --- reading back ------------------------------------------------------------------------


def _xattrs(fspath: Path) -> dict[str, bytes]:
    try:
        return {
            key: os.getxattr(fspath, key, follow_symlinks=False)
            for key in sorted(os.listxattr(fspath, follow_symlinks=False))
        }
    except OSError as exc:
        raise _fail(fspath, "read xattrs of", exc) from exc


def _read_inode(fspath: Path, st: os.stat_result, prefix: str) -> Inode:
    allx = _xattrs(fspath)
    own = {k[len(prefix) :]: v for k, v in allx.items() if k.startswith(prefix)}
    visible: FrozenMap[str, bytes] = FrozenMap(
        (k, v) for k, v in allx.items() if not k.startswith(prefix)
    )
    base = Inode(
        kind="file",
        mode=S.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        mtime=st.st_mtime_ns,
        xattrs=visible,
    )
    fmt = S.S_IFMT(st.st_mode)
    if fmt == S.S_IFDIR:
        redirect = own.get("redirect")
        return replace(
            base,
            kind="dir",
            opaque=own.get("opaque") == b"y",  # "x" only marks xattr whiteouts inside
            redirect=None if redirect is None else os.fsdecode(redirect),
        )
    if fmt == S.S_IFREG:
        if "whiteout" in own and st.st_size == 0:
            return replace(base, kind="whiteout", whiteout_form="xattr")
        try:
            data = fspath.read_bytes()
        except OSError as exc:
            raise _fail(fspath, "read", exc) from exc
        return replace(base, data=data)
    if fmt == S.S_IFLNK:
        return replace(base, kind="symlink", target=os.readlink(fspath))
    if fmt == S.S_IFIFO:
        return replace(base, kind="fifo")
    if fmt == S.S_IFCHR:
        if st.st_rdev == WHITEOUT_RDEV:
            return replace(base, kind="whiteout", whiteout_form="chardev")
        return replace(base, kind="chr", rdev=st.st_rdev)
    raise AdapterError(f"{fspath}: a {S.filemode(st.st_mode)[0]!r} file has no model kind")


def read_layer(path: Path, features: Features) -> Layer:
    """Read a layer directory back into a model Layer (inode numbers are the st_ino values;
    ``origin`` is left None: it is a file handle, not something the model can name)."""
    prefix = features.xattr_prefix
    entries: dict[MPath, int] = {}
    inodes: dict[int, Inode] = {}
    pending: list[MPath] = [ROOT]
    while pending:
        mpath = pending.pop()
        fspath = path.joinpath(*mpath)
        try:
            st = os.lstat(fspath)
        except OSError as exc:
            raise _fail(fspath, "stat", exc) from exc
        entries[mpath] = st.st_ino
        if st.st_ino not in inodes:
            inodes[st.st_ino] = _read_inode(fspath, st, prefix)
        if S.S_ISDIR(st.st_mode):
            pending.extend((*mpath, name) for name in sorted(os.listdir(fspath)))
    return Layer(FrozenMap(entries), FrozenMap(inodes))


def canonical(layer: Layer) -> FrozenMap[MPath, tuple[MPath, Inode]]:
    """A form of ``layer`` that ignores inode numbering: each path maps to the first path
    naming its inode (so hard links still show) and the inode, with ``origin`` dropped."""
    first: dict[int, MPath] = {}
    for path in sorted(layer.entries, key=lambda p: (len(p), p)):
        first.setdefault(layer.entries[path], path)
    return FrozenMap(
        (p, (first[i], replace(layer.inodes[i], origin=None))) for p, i in layer.entries.items()
    )


# --- fingerprints -------------------------------------------------------------------------


def _walk(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    pending = [""]
    while pending:
        rel = pending.pop()
        full = os.path.join(root, rel) if rel else os.fspath(root)
        st = os.lstat(full)
        yield rel, st
        if S.S_ISDIR(st.st_mode):
            names = sorted(os.listdir(full), reverse=True)
            pending.extend(os.path.join(rel, n) if rel else n for n in names)


def tree_records(root: Path) -> dict[str, str]:
    """One line per entry of the tree at ``root``: everything ``fingerprint`` covers, readable,
    so that a changed layer can be shown entry by entry."""
    records: dict[str, str] = {}
    first_name: dict[tuple[int, int], str] = {}
    for rel, st in _walk(root):
        full = os.path.join(root, rel) if rel else os.fspath(root)
        fmt = S.S_IFMT(st.st_mode)
        parts = [
            S.filemode(st.st_mode),
            f"uid={st.st_uid}",
            f"gid={st.st_gid}",
            f"mtime={st.st_mtime_ns}",
        ]
        if fmt == S.S_IFREG:
            with open(full, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            parts += [f"size={st.st_size}", f"sha256={digest}"]
        elif fmt == S.S_IFLNK:
            parts.append(f"target={os.readlink(full)!r}")
        elif fmt in (S.S_IFCHR, S.S_IFBLK):
            parts.append(f"rdev={os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
        if fmt != S.S_IFDIR:
            # Names sharing an inode: each later name points at the first one.
            key = (st.st_dev, st.st_ino)
            if key in first_name:
                parts.append(f"link={first_name[key]!r}")
            else:
                first_name[key] = rel
        for k, v in sorted(_xattrs(Path(full)).items()):
            parts.append(f"xattr:{k}={v.hex()}")
        records[rel] = " ".join(parts)
    return records


def fingerprint(path: Path) -> str:
    """A digest of the whole tree at ``path``: every entry's type, mode, owner, size, content,
    symlink target, rdev, mtime, every xattr (trusted.* too) and which names share an inode."""
    h = hashlib.sha256()
    try:
        records = tree_records(path)
    except OSError as exc:
        raise _fail(path, "fingerprint", exc) from exc
    for rel, record in sorted(records.items()):
        h.update(f"{rel!r} {record}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


__all__ = [
    "canonical",
    "fingerprint",
    "read_layer",
    "tree_records",
    "write_layer",
    "write_stack",
]
