"""Hand-written scenarios for the pure-Python overlay (``adapters/pyoverlay``), on real
directories under tmp_path: what the merged view shows, and what lands in the upper layer.

Every expectation here was checked on the kernel (tests/test_pyoverlay_kernel.py compares the
two implementations on random programs). Needs root for char-device whiteouts and trusted.*
xattrs; without root the userxattr variants run.
"""

from __future__ import annotations

import errno as E
import os
import shutil
import stat as S
import tempfile
from pathlib import Path

import pytest

from adapters import posix
from adapters.base import LayerDirs, Unavailable, is_root
from adapters.pyoverlay import OverlayFS, PythonAdapter
from adapters.pyoverlay.format import FileHandle, Names, decode_origin, encode_origin
from model import ops
from model.features import Features
from model.ops import StatResult

root_only = pytest.mark.skipif(not is_root(), reason="needs root (char-device whiteouts)")
T = 1_500_000_000_000_000_000


def build(root: Path, spec: dict[str, object]) -> Path:
    """Write a layer: "dir/" a directory, str a file, ("link", t) a symlink, ("wh",) a
    whiteout, ("opaque",) an opaque directory, ("xwh",) an xattr whiteout, ("hard", p)."""
    root.mkdir(parents=True)
    for path, what in spec.items():
        real = root / path.rstrip("/")
        if path.endswith("/"):
            real.mkdir()
        elif isinstance(what, str):
            real.write_text(what)
        elif isinstance(what, tuple) and what[0] == "link":
            os.symlink(what[1], real)
        elif isinstance(what, tuple) and what[0] == "wh":
            os.mknod(real, S.S_IFCHR, 0)
        elif isinstance(what, tuple) and what[0] == "opaque":
            real.mkdir()
            os.setxattr(real, "trusted.overlay.opaque", b"y")
        elif isinstance(what, tuple) and what[0] == "xwh":
            real.touch()
            os.setxattr(real, "trusted.overlay.whiteout", b"")
        elif isinstance(what, tuple) and what[0] == "hard":
            os.link(root / what[1], real)
        else:
            raise ValueError(what)
        os.utime(real, ns=(T, T), follow_symlinks=False)
    return root


def stack(tmp_path: Path, *lowers: dict[str, object], upper: dict[str, object] | None = None,
          read_only: bool = False) -> LayerDirs:  # fmt: skip
    paths = tuple(build(tmp_path / f"l{i}", spec) for i, spec in enumerate(lowers))
    if read_only:
        return LayerDirs(paths, None, None)
    up = build(tmp_path / "u", upper or {})
    (tmp_path / "w").mkdir()
    return LayerDirs(paths, up, tmp_path / "w")


def errno_of(call: object, *args: object) -> int:
    assert callable(call)
    try:
        call(*args)
    except OSError as exc:
        return exc.errno or 0
    return 0


def fingerprint(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in ["", *dirnames, *filenames]:
            real = os.path.join(dirpath, name) if name else dirpath
            s = os.lstat(real)
            data = Path(real).read_bytes() if S.S_ISREG(s.st_mode) else b""
            xattrs = {k: os.getxattr(real, k, follow_symlinks=False)
                      for k in os.listxattr(real, follow_symlinks=False)}  # fmt: skip
            out[real] = (s.st_mode, s.st_ino, s.st_nlink, s.st_mtime_ns, data, xattrs)
    return out


pytestmark = root_only


# --- lookup and readdir -----------------------------------------------------------------------


def test_upper_hides_lower_and_dirs_merge(tmp_path: Path) -> None:
    layers = stack(
        tmp_path,
        {"f": "top", "d/": None, "d/x": "1"},
        {"f": "bottom", "d/": None, "d/y": "2", "g/": None},
        upper={"d/": None, "d/z": "3", "g": "file over dir"},
    )
    fs = OverlayFS(layers)
    assert posix.perform(fs, ops.Read("f")).value == b"top"
    assert sorted(fs.listdir("d")) == ["x", "y", "z"]
    assert posix.perform(fs, ops.Read("g")).value == b"file over dir"
    assert sorted(fs.listdir("")) == ["d", "f", "g"]
    assert fs.stat("d").st_nlink == 1  # merged directory
    assert fs.stat("d").st_ino == os.stat(layers.lowers[0] / "d").st_ino


def test_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    layers = stack(
        tmp_path,
        {"a": ("wh",), "o": ("opaque",), "o/mine": "m", "x/": None, "x/gone": ("xwh",)},
        {"a": "hidden", "o/": None, "o/theirs": "t", "x/": None, "x/gone": "g", "keep": "k"},
    )
    os.setxattr(layers.lowers[0] / "x", "trusted.overlay.opaque", b"x")
    fs = OverlayFS(layers)
    assert errno_of(fs.stat, "a") == E.ENOENT
    assert sorted(fs.listdir("")) == ["keep", "o", "x"]
    assert fs.listdir("o") == ["mine"]
    assert fs.listdir("x") == []
    assert errno_of(fs.stat, "x/gone") == E.ENOENT
    assert fs.listxattr("o") == []  # private xattrs never show


def test_xattr_whiteout_without_opaque_x(tmp_path: Path) -> None:
    """Lookup always honours an xattr whiteout; readdir only looks for them in a directory
    marked opaque="x", so without the mark the name is listed but cannot be found."""
    layers = stack(tmp_path, {"x/": None, "x/f": ("xwh",)}, {"x/": None, "x/f": "lower"})
    fs = OverlayFS(layers)
    assert fs.listdir("x") == ["f"]
    assert errno_of(fs.stat, "x/f") == E.ENOENT


def test_unmerged_dir_lists_its_whiteouts_like_the_kernel(tmp_path: Path) -> None:
    layers = stack(tmp_path, {"p/": None, "p/w": ("wh",), "p/r": "r"}, {})
    fs = OverlayFS(layers)
    assert sorted(fs.listdir("p")) == ["r", "w"]
    assert errno_of(fs.stat, "p/w") == E.ENOENT


# --- copy-up ----------------------------------------------------------------------------------


def test_copy_up_triggers(tmp_path: Path) -> None:
    names = ("ro", "wo", "rw", "tr", "tc", "ch", "ut", "sx", "li", "rd")
    spec: dict[str, object] = {n: n for n in names}
    layers = stack(tmp_path, spec)
    lower_before = fingerprint(layers.lowers[0])
    fs = OverlayFS(layers)
    fs.close(fs.open("ro", os.O_RDONLY))
    posix.perform(fs, ops.Read("rd"))
    fs.stat("rd")
    fs.close(fs.open("wo", os.O_WRONLY))
    fs.close(fs.open("rw", os.O_RDWR))
    fs.close(fs.open("tc", os.O_RDONLY | os.O_TRUNC))
    fs.truncate("tr", 1)
    fs.chmod("ch", 0o600)
    fs.utime("ut", T + 5, T + 5)
    fs.setxattr("sx", "user.k", b"v", 0)
    fs.link("li", "li2")
    assert layers.upper is not None
    assert sorted(os.listdir(layers.upper)) == sorted(
        ["wo", "rw", "tc", "tr", "ch", "ut", "sx", "li", "li2"]
    )
    assert (layers.upper / "wo").read_text() == "wo"
    assert (layers.upper / "tc").read_text() == ""
    assert os.listdir(layers.work / "work") == []  # type: ignore[operator]
    assert fingerprint(layers.lowers[0]) == lower_before


def test_copy_up_preserves_metadata_and_parents(tmp_path: Path) -> None:
    layers = stack(tmp_path, {"d/": None, "d/e/": None, "d/e/f": "data", "d/e/l": ("link", "f")})
    low = layers.lowers[0]
    os.chown(low / "d/e/f", 7, 8)
    os.chmod(low / "d/e", 0o711)
    os.setxattr(low / "d/e", "user.dir", b"1")
    os.setxattr(low / "d/e/f", "user.file", b"2")
    for p in ("d/e/f", "d/e", "d"):
        os.utime(low / p, ns=(T + 1, T + 1))
    fs = OverlayFS(layers)
    fs.chown("d/e/l", 5, 5, follow=False)  # lchown copies up the link itself
    fd = fs.open("d/e/f", os.O_WRONLY)
    fs.close(fd)
    up = layers.upper
    assert up is not None
    s = os.lstat(up / "d/e/f")
    assert (s.st_uid, s.st_gid, s.st_mtime_ns) == (7, 8, T + 1)
    assert os.getxattr(up / "d/e/f", "user.file") == b"2"
    assert S.S_IMODE(os.lstat(up / "d/e").st_mode) == 0o711
    assert os.getxattr(up / "d/e", "user.dir") == b"1"
    assert os.lstat(up / "d/e").st_mtime_ns == T + 1  # parents keep their times
    assert os.readlink(up / "d/e/l") == "f"
    assert os.lstat(up / "d/e/l").st_uid == 5
    origin = decode_origin(os.getxattr(up / "d/e/f", "trusted.overlay.origin"))
    assert origin is not None
    assert os.getxattr(up / "d", "trusted.overlay.impure") == b"y"


def test_st_ino_is_kept_across_copy_up_rename_and_remount(tmp_path: Path) -> None:
    layers = stack(tmp_path, {"f": "x"})
    fs = OverlayFS(layers)
    ino = fs.stat("f").st_ino
    fs.chmod("f", 0o600)
    fs.rename("f", "g", 0)
    assert fs.stat("g").st_ino == ino
    assert OverlayFS(layers).stat("g").st_ino == ino


def test_hard_link_broken_by_copy_up(tmp_path: Path) -> None:
    layers = stack(tmp_path, {"a": "old", "b": ("hard", "a")})
    fs = OverlayFS(layers)
    lower_ino = fs.stat("b").st_ino
    assert posix.perform(fs, ops.Write("a", b"NEW")).ok
    a, b = fs.stat("a"), fs.stat("b")
    assert (a.st_nlink, b.st_nlink) == (1, 2)  # b keeps its stale link count
    assert b.st_ino == lower_ino != a.st_ino
    assert posix.perform(fs, ops.Read("b")).value == b"old"


# --- names ------------------------------------------------------------------------------------


def test_unlink_and_rmdir_leave_whiteouts_only_over_lower_names(tmp_path: Path) -> None:
    layers = stack(tmp_path, {"f": "x", "d/": None, "d/g": "y"}, upper={"pure": "p"})
    fs = OverlayFS(layers)
    fs.unlink("f")
    fs.unlink("pure")
    assert errno_of(fs.rmdir, "d") == E.ENOTEMPTY
    fs.unlink("d/g")
    fs.rmdir("d")
    up = layers.upper
    assert up is not None
    assert sorted(os.listdir(up)) == ["d", "f"]
    for name in ("d", "f"):
        s = os.lstat(up / name)
        assert S.S_ISCHR(s.st_mode) and s.st_rdev == 0
    assert fs.listdir("") == []


def test_mkdir_over_whiteout_is_opaque(tmp_path: Path) -> None:
    layers = stack(tmp_path, {"d/": None, "d/old": "x"})
    fs = OverlayFS(layers)
    fs.unlink("d/old")
    fs.rmdir("d")
    fs.mkdir("d", 0o755)
    assert fs.listdir("d") == []
    assert layers.upper is not None
    assert os.getxattr(layers.upper / "d", "trusted.overlay.opaque") == b"y"


def test_mknod_whiteout_is_refused(tmp_path: Path) -> None:
    fs = OverlayFS(stack(tmp_path, {}))
    assert errno_of(fs.mknod, "w", S.S_IFCHR | 0o644, 0) == E.EPERM
    fs.mknod("fifo", S.S_IFIFO | 0o644, 0)
    assert S.S_ISFIFO(fs.stat("fifo").st_mode)


def test_rename_rules(tmp_path: Path) -> None:
    layers = stack(tmp_path, {"ld/": None, "ld/x": "x", "f": "f", "e/": None})
    fs = OverlayFS(layers)
    assert errno_of(fs.rename, "ld", "ld2", 0) == E.EXDEV
    fs.mkdir("pu", 0o755)
    fs.rename("pu", "pu2", 0)
    assert errno_of(fs.rename, "pu2", "ld", 0) == E.ENOTEMPTY
    fs.rename("pu2", "e", 0)  # over an empty lower directory: becomes opaque
    assert layers.upper is not None
    assert os.getxattr(layers.upper / "e", "trusted.overlay.opaque") == b"y"
    assert errno_of(fs.rename, "f", "g", 4) == E.EINVAL  # RENAME_WHITEOUT
    assert errno_of(fs.rename, "f", "e", 0) == E.EISDIR
    assert errno_of(fs.rename, "e", "f", 0) == E.ENOTDIR
    assert errno_of(fs.rename, "e", "e/sub", 0) == E.EINVAL
    assert errno_of(fs.rename, "f", "ld/x", 1) == E.EEXIST
    fs.rename("f", "ld/x", 2)  # RENAME_EXCHANGE of two files
    assert posix.perform(fs, ops.Read("ld/x")).value == b"f"
    fs.rename("f", "moved", 0)
    assert os.lstat(layers.upper / "f").st_rdev == 0  # whiteout left behind


# --- path walk --------------------------------------------------------------------------------


def test_symlinks_resolve_inside_the_overlay(tmp_path: Path) -> None:
    layers = stack(
        tmp_path,
        {"d/": None, "d/f": "in d", "abs": ("link", "/d/f"), "up": ("link", "../../d"),
         "loop": ("link", "loop"), "file": "x"},
    )  # fmt: skip
    fs = OverlayFS(layers)
    assert posix.perform(fs, ops.Read("abs")).value == b"in d"
    assert posix.perform(fs, ops.Read("up/f")).value == b"in d"  # ".." stops at the root
    assert posix.perform(fs, ops.Read("../d/f")).value == b"in d"
    assert errno_of(fs.stat, "loop") == E.ELOOP
    assert errno_of(fs.stat, "file/") == E.ENOTDIR
    assert errno_of(fs.stat, "file/x") == E.ENOTDIR
    assert errno_of(fs.stat, "nope/x") == E.ENOENT
    assert errno_of(fs.open, "new/", os.O_CREAT | os.O_WRONLY) == E.EISDIR


def test_forty_symlinks_then_eloop(tmp_path: Path) -> None:
    spec: dict[str, object] = {f"l{i}": ("link", f"l{i + 1}") for i in range(41)}
    spec["l41"] = "end"
    fs = OverlayFS(stack(tmp_path, spec))
    assert errno_of(fs.stat, "l0") == E.ELOOP  # 41 links to follow
    assert posix.perform(fs, ops.Read("l1")).value == b"end"  # 40 are fine


def test_read_only_overlay_is_erofs(tmp_path: Path) -> None:
    layers = stack(tmp_path, {"f": "x", "d/": None}, {"g": "y"}, read_only=True)
    fs = OverlayFS(layers)
    assert posix.perform(fs, ops.Read("g")).value == b"y"
    for op in (ops.Write("f", b"z"), ops.Mkdir("n"), ops.Unlink("f"), ops.Chmod("f", 0o600),
               ops.Rename("f", "h"), ops.SetXattr("f", "user.a", b""), ops.Rmdir("d"),
               ops.Open("n", ("O_CREAT", "O_WRONLY"))):  # fmt: skip
        assert posix.perform(fs, op).errno == E.EROFS, op
    assert posix.perform(fs, ops.Mkdir("d")).errno == E.EEXIST  # EEXIST beats EROFS


def test_escaped_private_xattrs(tmp_path: Path) -> None:
    layers = stack(tmp_path, {"f": "x"})
    fs = OverlayFS(layers)
    fs.setxattr("f", "trusted.overlay.foo", b"v", 0)
    assert fs.listxattr("f") == ["trusted.overlay.foo"]
    assert fs.getxattr("f", "trusted.overlay.foo") == b"v"
    assert layers.upper is not None
    assert os.getxattr(layers.upper / "f", "trusted.overlay.overlay.foo") == b"v"


# --- the adapter and the format ---------------------------------------------------------------


def test_adapter_remount_and_observe(tmp_path: Path) -> None:
    layers = stack(tmp_path, {"f": "x"})
    adapter = PythonAdapter()
    assert adapter.name == "python" and not adapter.needs_root
    with adapter.mount(layers, Features(), tmp_path / "scratch") as mounted:
        assert mounted.perform(ops.Write("f", b"y")).ok
        assert mounted.perform(ops.Remount()).ok
        view = mounted.observe()
    assert view["f"].data == b"y"
    st = view["f"].stat
    assert isinstance(st, StatResult) and st.kind == "file"


@pytest.mark.parametrize(
    "features",
    [
        Features(redirect_dir="on"),
        Features(index=True),
        Features(xino="auto"),
        Features(metacopy=True, redirect_dir="on"),
    ],
)
def test_unimplemented_features_are_unavailable(tmp_path: Path, features: Features) -> None:
    with pytest.raises(Unavailable):
        OverlayFS(stack(tmp_path, {}), features)


def test_origin_codec_round_trip() -> None:
    fh = FileHandle(1, b"\x01\x02\x03\x04\x05\x06\x07\x08")
    value = encode_origin(fh, bytes(16))
    assert value[:5] == b"\x00\xfb\x1d\x00\x01" and len(value) == 29
    assert decode_origin(value) == (bytes(16), fh)
    assert decode_origin(b"\x00\xfb") is None


def test_names_escape() -> None:
    names = Names("trusted.overlay.")
    assert names.escape("trusted.overlay.x") == "trusted.overlay.overlay.x"
    assert names.visible("trusted.overlay.overlay.x") == "trusted.overlay.x"
    assert names.visible("trusted.overlay.opaque") is None
    assert names.visible("user.a") == "user.a"


def _as_nobody(base: Path) -> None:
    """In a forked child: become nobody and run a program with the userxattr features."""
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    layers = LayerDirs((base / "l0",), base / "u", base / "w")
    fs = OverlayFS(layers, Features(userxattr=True))
    assert fs.whiteout_form == "xattr"
    ino = fs.stat("d/f").st_ino
    assert posix.perform(fs, ops.Write("d/f", b"new")).ok
    fs.unlink("g")
    fs.rename("d/f", "h", 0)
    again = OverlayFS(layers, Features(userxattr=True))
    assert sorted(again.listdir("")) == ["d", "h"]
    assert again.listdir("d") == []
    assert again.stat("h").st_ino == ino
    assert os.getxattr(base / "u/g", "user.overlay.whiteout") == b""


def test_without_root_the_xattr_form_is_used() -> None:
    base = Path(tempfile.mkdtemp(prefix="pyo-nobody-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        for d in ("l0/d", "u", "w"):
            (base / d).mkdir(parents=True)
        (base / "l0/d/f").write_text("x")
        (base / "l0/g").write_text("y")
        for dirpath, dirnames, filenames in os.walk(base):
            for name in ["", *dirnames, *filenames]:
                os.chown(os.path.join(dirpath, name), 65534, 65534)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            try:
                _as_nobody(base)
            except BaseException:
                import traceback

                traceback.print_exc()
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        with pytest.raises(Unavailable):  # trusted.* needs root
            if os.fork() == 0:  # pragma: no cover
                os.setuid(65534)
                try:
                    OverlayFS(LayerDirs((base / "l0",), base / "u", base / "w"))
                except Unavailable:
                    os._exit(3)
                os._exit(0)
            _, status = os.wait()
            if os.waitstatus_to_exitcode(status) == 3:
                raise Unavailable("as expected")
    finally:
        shutil.rmtree(base)
