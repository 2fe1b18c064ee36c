"""The pure-Python overlay on pyfakefs: no root, no real disk, the same semantics.

pyfakefs supports xattrs (trusted.* included, with no privilege checks) and mknod of character
devices, so both whiteout forms run here: char 0/0 with trusted.overlay.*, and the xattr form
with user.overlay.* (userxattr). Real file handles do not exist on pyfakefs, so ``OverlayFS``
turns its ctypes calls off there (it detects the fake ``os`` module) and records a "pathless"
origin instead, which keeps st_ino constant across copy-up.
"""

from __future__ import annotations

import errno as E
import os
import stat as S
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("pyfakefs")
from pyfakefs.fake_filesystem_unittest import Patcher

from adapters import posix
from adapters.base import LayerDirs
from adapters.pyoverlay import OverlayFS
from model import ops
from model.features import Features

USERX = Features(userxattr=True)


@pytest.fixture
def fake() -> Iterator[None]:
    with Patcher():
        yield


def _layers(lower_files: dict[str, str], *, second: dict[str, str] | None = None) -> LayerDirs:
    lowers = [Path("/layers/l0")]
    specs = [lower_files]
    if second is not None:
        lowers.append(Path("/layers/l1"))
        specs.append(second)
    for root, spec in zip(lowers, specs, strict=True):
        root.mkdir(parents=True)
        for path, data in spec.items():
            real = root / path
            real.parent.mkdir(parents=True, exist_ok=True)
            if path.endswith("/"):
                real.mkdir(exist_ok=True)
            else:
                real.write_text(data)
    Path("/layers/u").mkdir()
    Path("/layers/w").mkdir()
    return LayerDirs(tuple(lowers), Path("/layers/u"), Path("/layers/w"))


@pytest.mark.parametrize(
    ("features", "form", "prefix"),
    [(Features(), "chardev", "trusted.overlay."), (USERX, "xattr", "user.overlay.")],
)
def test_whiteouts_in_both_forms(fake: None, features: Features, form: str, prefix: str) -> None:
    layers = _layers({"d/f": "x", "d/g": "y", "top": "t"})
    fs = OverlayFS(layers, features, whiteout_form=form)  # type: ignore[arg-type]
    assert not fs.handles.native
    fs.unlink("d/f")
    fs.unlink("top")
    assert sorted(fs.listdir("d")) == ["g"]
    assert fs.listdir("") == ["d"]
    wh = Path("/layers/u/d/f")
    if form == "chardev":
        assert S.S_ISCHR(os.lstat(wh).st_mode)  # pyfakefs keeps no st_rdev
    else:
        assert os.getxattr(wh, prefix + "whiteout") == b""
        assert os.getxattr("/layers/u/d", prefix + "opaque") == b"x"
    # Reopening reads the same upper back.
    again = OverlayFS(layers, features, whiteout_form=form)  # type: ignore[arg-type]
    assert sorted(again.listdir("d")) == ["g"]
    with pytest.raises(OSError) as exc:
        again.stat("top")
    assert exc.value.errno == E.ENOENT


def test_copy_up_and_st_ino(fake: None) -> None:
    layers = _layers({"f": "old", "d/": ""})
    fs = OverlayFS(layers, USERX)
    ino = fs.stat("f").st_ino
    assert posix.perform(fs, ops.Write("f", b"new!")).ok
    assert fs.stat("f").st_ino == ino
    assert Path("/layers/u/f").read_text() == "new!"
    assert Path("/layers/l0/f").read_text() == "old"
    assert os.listdir("/layers/w/work") == []
    fs.rename("f", "d/g", 0)
    assert fs.stat("d/g").st_ino == ino
    assert OverlayFS(layers, USERX).stat("d/g").st_ino == ino


def test_rename_and_rmdir(fake: None) -> None:
    layers = _layers({"d/a": "1", "e/": ""}, second={"d/b": "2"})
    fs = OverlayFS(layers, USERX)
    assert posix.perform(fs, ops.Rename("d", "x")).errno == E.EXDEV
    assert posix.perform(fs, ops.Rmdir("d")).errno == E.ENOTEMPTY
    fs.unlink("d/a")
    fs.unlink("d/b")
    fs.rmdir("d")
    assert sorted(fs.listdir("")) == ["e"]
    fs.mkdir("d", 0o755)
    assert fs.listdir("d") == []
    assert posix.perform(fs, ops.Rename("e", "d", "RENAME_EXCHANGE")).errno == E.EXDEV
    fs.mkdir("p", 0o700)
    Path("/layers/u/p/inside").write_text("i")  # offline change to the upper: allowed
    fs.rename("p", "d", RENAME_EXCHANGE)
    assert fs.listdir("d") == ["inside"]
    assert fs.listdir("p") == []
    assert posix.perform(fs, ops.Rename("a", "b", "RENAME_WHITEOUT")).errno == E.ENOENT


RENAME_EXCHANGE = 2


def test_observe_and_lowers_untouched(fake: None) -> None:
    layers = _layers({"a/b/c": "deep", "l": "x"})
    fs = OverlayFS(layers, USERX)
    for op in (
        ops.Symlink("a/b", "s"),
        ops.Write("s/c", b"through link"),
        ops.Mkdir("a/new"),
        ops.Link("l", "a/l2"),
        ops.SetXattr("a", "user.k", b"v"),
        ops.Chmod("a/b", 0o700),
    ):
        assert posix.perform(fs, op).ok, op
    view = posix.observe(fs)
    assert view["a/b/c"].data == b"through link"
    assert view["a"].xattrs == {"user.k": b"v"}
    assert set(view) == {"", "a", "a/b", "a/b/c", "a/new", "a/l2", "l", "s"}
    assert Path("/layers/l0/a/b/c").read_text() == "deep"
    assert os.listxattr("/layers/l0/a") == []


def test_read_only(fake: None) -> None:
    layers = _layers({"f": "x"}, second={"g": "y"})
    ro = OverlayFS(LayerDirs(layers.lowers, None, None), USERX)
    assert posix.perform(ro, ops.Read("g")).value == b"y"
    assert posix.perform(ro, ops.Write("f", b"z")).errno == E.EROFS
