"""The on-disk layer format: what write_layer puts on disk, read_layer's round trip, and
fingerprint's sensitivity to every attribute the lower-layer check relies on."""

from __future__ import annotations

import os
import socket
import stat as S
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import needs_root
from hypothesis import HealthCheck, given, settings

from adapters.base import AdapterError
from adapters.layout import canonical, fingerprint, read_layer, write_layer, write_stack
from adapters.scratch import Scratch
from model.features import Features
from model.frozen import FrozenMap
from model.state import Inode, Layer, Overlay, empty_layer

pytestmark = needs_root

T1 = 1_600_000_000_123_456_789
T2 = 1_500_000_000_987_654_321
TRUSTED = Features()
USER = Features(userxattr=True)


def layer(spec: dict[tuple[str, ...], tuple[int, Inode]]) -> Layer:
    """``{path: (ino, inode)}``; the same ino under several paths makes hard links."""
    return Layer(
        FrozenMap({p: i for p, (i, _) in spec.items()}),
        FrozenMap({i: n for i, n in spec.values()}),
    )


def rich_layer() -> Layer:
    """One of everything the model can put in a layer."""
    xs: FrozenMap[str, bytes] = FrozenMap({"user.a": b"1", "trusted.b": b"\x00\xff"})
    f = Inode("file", 0o640, 1000, 1001, T1, xs, data=b"data\n")
    return layer(
        {
            (): (1, Inode("dir", 0o751, 0, 0, T2, FrozenMap({"user.root": b"r"}))),
            ("f",): (2, f),
            ("hard",): (2, f),
            ("d",): (3, Inode("dir", 0o700, 5, 6, T1)),
            ("d", "g"): (4, Inode("file", 0o4755, 7, 8, T2, data=b"")),
            ("d", "deep"): (5, Inode("dir", 0o755, 0, 0, T2)),
            ("d", "deep", "h"): (2, f),
            ("d", "deep", "wx"): (6, Inode("whiteout", 0o644, 0, 0, T1, whiteout_form="xattr")),
            ("ln",): (7, Inode("symlink", 0o777, 9, 10, T1, target="d/../f")),
            ("fifo",): (8, Inode("fifo", 0o600, 0, 0, T2)),
            ("chr",): (9, Inode("chr", 0o660, 0, 0, T1, rdev=os.makedev(1, 3))),
            ("wc",): (10, Inode("whiteout", 0o000, 3, 4, T2)),
            ("op",): (11, Inode("dir", 0o755, 0, 0, T1, opaque=True)),
            ("op", "wx"): (12, Inode("whiteout", 0o600, 0, 0, T1, whiteout_form="xattr")),
            ("red",): (13, Inode("dir", 0o755, 0, 0, T2, redirect="/old/place")),
            ("empty",): (14, Inode("dir", 0o1777, 0, 0, 0)),
        }
    )


@pytest.mark.parametrize("features", [TRUSTED, USER], ids=["trusted", "userxattr"])
def test_round_trip(scratch: Scratch, features: Features) -> None:
    original = rich_layer()
    dest = scratch.path / "layer"
    write_layer(original, dest, features)
    back = read_layer(dest, features)
    assert canonical(back) == canonical(original)
    # The kernel's inode numbers, not the model's, identify the inodes read back.
    assert back.entries[("f",)] == os.lstat(dest / "f").st_ino


def test_on_disk_format_trusted(scratch: Scratch) -> None:
    dest = scratch.path / "layer"
    write_layer(rich_layer(), dest, TRUSTED)
    wc = os.lstat(dest / "wc")
    assert S.S_ISCHR(wc.st_mode) and wc.st_rdev == 0 and S.S_IMODE(wc.st_mode) == 0
    assert (wc.st_uid, wc.st_gid) == (3, 4)
    wx = dest / "d" / "deep" / "wx"
    assert S.S_ISREG(os.lstat(wx).st_mode) and os.lstat(wx).st_size == 0
    assert os.getxattr(wx, "trusted.overlay.whiteout") == b"y"
    # The parent of an xattr whiteout needs opaque=x, or the kernel never looks for it ...
    assert os.getxattr(dest / "d" / "deep", "trusted.overlay.opaque") == b"x"
    # ... unless it is opaque already.
    assert os.getxattr(dest / "op", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(dest / "red", "trusted.overlay.redirect") == b"/old/place"
    assert "trusted.overlay.opaque" not in os.listxattr(dest / "d")
    assert os.lstat(dest / "f").st_ino == os.lstat(dest / "d" / "deep" / "h").st_ino
    assert os.lstat(dest / "f").st_nlink == 3
    assert os.readlink(dest / "ln") == "d/../f"
    assert os.lstat(dest / "chr").st_rdev == os.makedev(1, 3)
    assert S.S_IMODE(os.lstat(dest / "d" / "g").st_mode) == 0o4755  # chown did not clear it


def test_on_disk_format_userxattr(scratch: Scratch) -> None:
    dest = scratch.path / "layer"
    write_layer(rich_layer(), dest, USER)
    assert os.getxattr(dest / "op", "user.overlay.opaque") == b"y"
    assert os.getxattr(dest / "d" / "deep", "user.overlay.opaque") == b"x"
    assert os.getxattr(dest / "d" / "deep" / "wx", "user.overlay.whiteout") == b"y"
    assert not [k for k in os.listxattr(dest / "op") if k.startswith("trusted.overlay.")]


def test_times_owners_and_modes_stick(scratch: Scratch) -> None:
    dest = scratch.path / "layer"
    write_layer(rich_layer(), dest, TRUSTED)
    root = os.lstat(dest)
    assert (S.S_IMODE(root.st_mode), root.st_mtime_ns) == (0o751, T2)
    assert os.getxattr(dest, "user.root") == b"r"
    d = os.lstat(dest / "d")
    assert (S.S_IMODE(d.st_mode), d.st_uid, d.st_gid, d.st_mtime_ns) == (0o700, 5, 6, T1)
    assert os.lstat(dest / "d" / "deep").st_mtime_ns == T2
    ln = os.lstat(dest / "ln")
    assert (ln.st_uid, ln.st_gid, ln.st_mtime_ns) == (9, 10, T1)
    f = os.lstat(dest / "f")
    assert (S.S_IMODE(f.st_mode), f.st_uid, f.st_gid, f.st_mtime_ns) == (0o640, 1000, 1001, T1)
    assert S.S_IMODE(os.lstat(dest / "empty").st_mode) == 0o1777


def test_write_stack_layout(scratch: Scratch) -> None:
    top = empty_layer(1)
    bottom = rich_layer()
    rw = write_stack(Overlay((top, bottom), empty_layer(2)), scratch.path / "rw")
    assert rw.lowers == (scratch.path / "rw/lower/0", scratch.path / "rw/lower/1")
    assert rw.lowerdir == f"{scratch.path}/rw/lower/0:{scratch.path}/rw/lower/1"
    assert (rw.lowers[1] / "f").read_bytes() == b"data\n"
    assert rw.upper == scratch.path / "rw/upper" and rw.upper.is_dir()
    assert rw.work == scratch.path / "rw/work" and not any(rw.work.iterdir())
    ro = write_stack(Overlay((bottom,), None), scratch.path / "ro")
    assert ro.upper is None and ro.work is None
    assert sorted(os.listdir(scratch.path / "ro")) == ["lower"]


def test_fingerprint_stable_across_copies(scratch: Scratch) -> None:
    a, b = scratch.path / "a", scratch.path / "b"
    write_layer(rich_layer(), a, TRUSTED)
    write_layer(rich_layer(), b, TRUSTED)
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) == fingerprint(a)


def _replace_symlink(d: Path) -> None:
    os.unlink(d / "ln")
    os.symlink("f", d / "ln")


def _replace_chr(d: Path) -> None:
    os.unlink(d / "chr")
    os.mknod(d / "chr", S.S_IFCHR | 0o660, 5)


def _break_hard_link(d: Path) -> None:
    """Replace a hard link by an identical copy: only the inode sharing differs."""
    os.unlink(d / "hard")
    (d / "hard").write_bytes(b"data\n")
    os.chmod(d / "hard", 0o640)
    os.chown(d / "hard", 1000, 1001)
    os.setxattr(d / "hard", "user.a", b"1")
    os.setxattr(d / "hard", "trusted.b", b"\x00\xff")
    os.utime(d / "hard", ns=(T1, T1))


MUTATIONS: dict[str, Callable[[Path], object]] = {
    "content": lambda d: (d / "d" / "g").write_bytes(b"x"),
    "same-size content": lambda d: (d / "f").write_bytes(b"DATA\n"),
    "mode": lambda d: os.chmod(d / "d", 0o701),
    "owner": lambda d: os.lchown(d / "ln", 1, 1),
    "file mtime": lambda d: os.utime(d / "f", ns=(T1, T1 + 1)),
    "dir mtime": lambda d: os.utime(d / "empty", ns=(0, 1)),
    "trusted xattr": lambda d: os.setxattr(d / "red", "trusted.overlay.redirect", b"/x"),
    "new xattr": lambda d: os.setxattr(d / "empty", "trusted.overlay.origin", b""),
    "symlink target": _replace_symlink,
    "rdev": _replace_chr,
    "new entry": lambda d: (d / "empty" / "new").touch(),
    "hard link broken": _break_hard_link,
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_fingerprint_sees_every_change(scratch: Scratch, mutation: str) -> None:
    d = scratch.path / "layer"
    write_layer(rich_layer(), d, TRUSTED)
    mtimes = {p: os.lstat(p).st_mtime_ns for p in (d, d / "empty", d / "d")}
    before = fingerprint(d)
    MUTATIONS[mutation](d)
    # Restore the directory mtimes the mutation changed as a side effect: the fingerprint must
    # see the mutation itself, not only that.
    if mutation not in ("dir mtime", "mode", "new entry"):
        for p, t in mtimes.items():
            os.utime(p, ns=(t, t))
    assert fingerprint(d) != before


def test_errors(scratch: Scratch) -> None:
    full = scratch.path / "full"
    full.mkdir()
    (full / "x").touch()
    with pytest.raises(AdapterError, match="not empty"):
        write_layer(rich_layer(), full, TRUSTED)
    no_root = layer({("a",): (1, Inode("file"))})
    with pytest.raises(AdapterError, match="root directory"):
        write_layer(no_root, scratch.path / "n", TRUSTED)
    own_xattr: FrozenMap[str, bytes] = FrozenMap({"trusted.overlay.x": b""})
    own = layer({(): (1, Inode("dir")), ("a",): (2, Inode("file", xattrs=own_xattr))})
    with pytest.raises(AdapterError, match="overlay's own"):
        write_layer(own, scratch.path / "o", TRUSTED)
    orphan = layer({(): (1, Inode("dir")), ("a", "b"): (2, Inode("file"))})
    with pytest.raises(AdapterError, match="no parent"):
        write_layer(orphan, scratch.path / "p", TRUSTED)
    sock_dir = scratch.path / "s"
    sock_dir.mkdir()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_dir / "sock"))
        with pytest.raises(AdapterError, match="no model kind"):
            read_layer(sock_dir, TRUSTED)


def test_nonempty_whiteout_file_is_a_file(scratch: Scratch) -> None:
    """The kernel counts only an empty file carrying the xattr as a whiteout."""
    d = scratch.path / "l"
    d.mkdir()
    (d / "w").write_bytes(b"x")
    os.setxattr(d / "w", "trusted.overlay.whiteout", b"y")
    inode = read_layer(d, TRUSTED).get(("w",))
    assert inode is not None and inode.kind == "file" and inode.data == b"x"


@pytest.mark.parametrize("features", [TRUSTED, USER], ids=["trusted", "userxattr"])
def test_round_trip_of_generated_stacks(scratch: Scratch, features: Features) -> None:
    """Every layer the conformance suite can generate survives write_layer/read_layer."""
    strategies = pytest.importorskip("conformance.strategies")

    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(state=strategies.stacks(features))
    def check(state: Overlay) -> None:
        root = scratch.mkdtemp("gen-")
        dirs = write_stack(state, root)
        for original, path in zip(state.lowers, dirs.lowers, strict=True):
            assert canonical(read_layer(path, features)) == canonical(original)

    check()
