"""The kernel adapter and the mounting helpers it stands on: mount(2) through ctypes,
mountinfo parsing, options read back, the lifecycle, and every error path."""

from __future__ import annotations

import errno as E
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_root

from adapters import kernel, mounting
from adapters.base import AdapterError, LayerDirs, Unavailable
from adapters.kernel import NOT_REPORTED, KernelAdapter, options_in_effect, requested_options
from adapters.layout import fingerprint, read_layer, write_stack
from adapters.scratch import Scratch
from model import ops
from model.features import Features
from model.frozen import FrozenMap
from model.state import Inode, Layer, Overlay, empty_layer

# --- mountinfo parsing (no root needed) ------------------------------------------------


def test_unescape() -> None:
    assert mounting.unescape(r"/a\040b\072c\134d\011e") == "/a b:c\\d\te"
    assert mounting.unescape("plain") == "plain"
    assert mounting.unescape(r"\04x") == r"\04x"  # not an escape


def test_parse_mountinfo_line() -> None:
    line = (
        r"46 42 0:40 / /tmp/x\040y/m rw,relatime shared:7 master:2 - overlay overlay "
        r"rw,lowerdir=/l\0720:/l1,upperdir=/u,workdir=/w,redirect_dir=nofollow,uuid=on,userxattr"
    )
    info = mounting.parse_mountinfo_line(line)
    assert info.mount_id == 46 and info.parent_id == 42 and info.dev == "0:40"
    assert info.mountpoint == "/tmp/x y/m"
    assert info.optional == ("shared:7", "master:2")
    assert info.fstype == "overlay" and info.source == "overlay"
    opts = info.super_options_map()
    assert opts["lowerdir"] == "/l:0:/l1"
    assert opts["redirect_dir"] == "nofollow" and opts["userxattr"] == ""
    with pytest.raises(AdapterError, match="cannot parse"):
        mounting.parse_mountinfo_line("garbage")


def test_options_in_effect_rules() -> None:
    want = requested_options(Features(index=True))
    effect, bad = options_in_effect(want, {"redirect_dir": "nofollow", "index": "on"})
    assert bad == []
    assert effect["xino"] == NOT_REPORTED and effect["userxattr"] == "off"
    _, bad = options_in_effect(want, {"redirect_dir": "on", "userxattr": ""})
    assert bad == [
        "redirect_dir: requested nofollow, in effect on",
        "userxattr: requested off, in effect on",
    ]
    _, bad = options_in_effect(requested_options(Features(userxattr=True)), {})
    assert bad == ["userxattr: requested on, in effect off"]


# --- the real kernel ------------------------------------------------------------------

LOWER = Layer(
    FrozenMap({(): 1, ("f",): 2, ("d",): 3, ("d", "x"): 4, ("d", "y"): 5}),
    FrozenMap(
        {
            1: Inode("dir", 0o755, mtime=10**18),
            2: Inode("file", 0o644, 7, 8, 10**18, data=b"lower"),
            3: Inode("dir", 0o750, mtime=10**18),
            4: Inode("file", data=b"x"),
            5: Inode("file", data=b"y"),
        }
    ),
)


def stack(scratch: Scratch, features: Features | None = None, ro: bool = False) -> LayerDirs:
    # The kernel needs two lower layers for a read-only overlay.
    lowers = (empty_layer(50), LOWER) if ro else (LOWER,)
    state = Overlay(lowers, None if ro else empty_layer(100), features or Features())
    return write_stack(state, scratch.mkdtemp("stack-"))


@needs_root
def test_available_and_version() -> None:
    assert KernelAdapter.unavailable() is None
    assert KernelAdapter().version() == f"Linux {os.uname().release}"


@needs_root
def test_lifecycle(scratch: Scratch) -> None:
    layers = stack(scratch)
    assert layers.upper is not None
    lower_print = fingerprint(layers.lowers[0])
    m = KernelAdapter().mount(layers, Features(), scratch.path)
    with m:
        assert m.perform(ops.Read("f")) == ops.Outcome(value=b"lower")
        assert m.perform(ops.Write("f", b"UP")).ok
        assert m.perform(ops.Unlink("d/x")).ok
        assert m.perform(ops.Mkdir("new")).ok
        assert m.perform(ops.Rename("d", "e")).errno == E.EXDEV  # redirect_dir=nofollow
        assert m.perform(ops.Stat("gone")).errno == E.ENOENT
        view = m.observe()
        assert set(view) == {"", "f", "d", "d/y", "new"}
        stat = view["f"].stat
        assert view["f"].data == b"UPwer" and stat is not None and stat.uid == 7
        assert m.perform(ops.Remount()) == ops.Outcome()
        assert m.observe() == view
        mountpoint = m.mountpoint  # type: ignore[attr-defined]
        assert mounting.find_mount(mountpoint) is not None
    assert not mounting.is_mountpoint(mountpoint)
    m.close()  # idempotent
    with pytest.raises(AdapterError, match="closed"):
        m.perform(ops.Stat(""))
    assert fingerprint(layers.lowers[0]) == lower_print
    upper = read_layer(layers.upper, Features())
    x = upper.get(("d", "x"))
    assert x is not None and x.kind == "whiteout"
    assert upper.get(("new",)) is not None


@needs_root
def test_options_read_back(scratch: Scratch) -> None:
    cases = {
        Features(): {"redirect_dir": "nofollow", "index": NOT_REPORTED},
        Features(index=True): {"index": "on"},
        Features(redirect_dir="on", metacopy=True): {"redirect_dir": "on", "metacopy": "on"},
        Features(userxattr=True): {"userxattr": "on"},
    }
    for features, expected in cases.items():
        with KernelAdapter().mount(stack(scratch, features), features, scratch.path) as m:
            effect = m.options_in_effect()
            assert {k: effect[k] for k in expected} == expected, features
            assert "upperdir" in effect


@needs_root
def test_read_only(scratch: Scratch) -> None:
    layers = stack(scratch, ro=True)
    with KernelAdapter().mount(layers, Features(), scratch.path) as m:
        assert "upperdir" not in m.options_in_effect()
        assert m.perform(ops.Write("f", b"x")).errno == E.EROFS
        assert m.perform(ops.Read("d/x")).value == b"x"


@needs_root
def test_xino_needs_layers_on_another_filesystem(scratch: Scratch) -> None:
    """All layers on one tmpfs: the kernel drops xino=on ("useless with all layers on same
    fs"); with the lower on its own tmpfs it is in effect and st_ino carries the fsid bits."""
    features = Features(xino="on")
    with KernelAdapter().mount(stack(scratch, features), features, scratch.path) as m:
        assert m.options_in_effect()["xino"] == NOT_REPORTED
    root = scratch.mkdtemp("xino-")
    lower = root / "lower"
    lower.mkdir()
    mounting.mount("tmpfs", lower, "tmpfs")
    (lower / "f").write_text("x")
    upper, work = root / "upper", root / "work"
    upper.mkdir()
    work.mkdir()
    layers = LayerDirs((lower,), upper, work)
    with KernelAdapter().mount(layers, features, scratch.path) as m:
        assert m.options_in_effect()["xino"] == "on"
        st = m.perform(ops.Stat("f")).value
        assert isinstance(st, ops.StatResult) and st.ino >> 62


@needs_root
def test_conflicting_options_fail_with_kernel_log(scratch: Scratch) -> None:
    bad = Features(metacopy=True)  # needs redirect_dir=on; nofollow is refused
    with pytest.raises(AdapterError) as info:
        KernelAdapter().mount(stack(scratch), bad, scratch.path)
    assert "EINVAL" in str(info.value)
    assert "conflicting options" in str(info.value)  # from the kernel log
    assert not mounting.mounts_under(scratch.path, include_self=False)


@needs_root
def test_single_lower_read_only_is_refused(scratch: Scratch) -> None:
    layers = write_stack(Overlay((LOWER,), None), scratch.mkdtemp())
    with pytest.raises(AdapterError, match=r"(?s)EINVAL.*at least 2 lowerdir"):
        KernelAdapter().mount(layers, Features(), scratch.path)


@needs_root
def test_missing_layer_fails_cleanly(scratch: Scratch) -> None:
    missing = LayerDirs((scratch.path / "nope",), None, None)
    with pytest.raises(AdapterError, match="ENOENT"):
        KernelAdapter().mount(missing, Features(), scratch.path)
    assert not mounting.mounts_under(scratch.path, include_self=False)
    comma = scratch.subdir("a,b")
    with pytest.raises(AdapterError, match="would split"):
        KernelAdapter().mount(LayerDirs((comma,), None, None), Features(), scratch.path)
    with pytest.raises(AdapterError, match="at least one lower"):
        KernelAdapter().mount(LayerDirs((), None, None), Features(), scratch.path)


@needs_root
def test_option_mismatch_is_an_error(scratch: Scratch, monkeypatch: pytest.MonkeyPatch) -> None:
    real = mounting.super_options

    def lying(mountpoint: str | os.PathLike[str]) -> dict[str, str]:
        return {**real(mountpoint), "redirect_dir": "follow"}

    monkeypatch.setattr(mounting, "super_options", lying)
    with pytest.raises(AdapterError, match="requested nofollow, in effect follow"):
        KernelAdapter().mount(stack(scratch), Features(), scratch.path)
    assert not mounting.mounts_under(scratch.path, include_self=False)


@needs_root
def test_mount_helpers(scratch: Scratch) -> None:
    spaced = scratch.subdir("with space")
    mounting.mount("tmpfs", spaced, "tmpfs", mounting.MS_NODEV, "size=1m")
    assert mounting.is_mountpoint(spaced)
    assert mounting.super_options(spaced)["size"] == "1024k"
    assert mounting.wait_for_mount(spaced, 1).fstype == "tmpfs"
    mounting.umount(spaced)
    with pytest.raises(mounting.MountError, match="EINVAL") as info:
        mounting.umount(spaced)
    assert info.value.errno == E.EINVAL
    with pytest.raises(AdapterError, match="nothing is mounted"):
        mounting.super_options(spaced)
    with pytest.raises(AdapterError, match=r"within 0\.05 s"):
        mounting.wait_for_mount(spaced, 0.05)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stderr.write('it broke'); sys.exit(4)"],
        stderr=subprocess.PIPE,
    )
    with pytest.raises(AdapterError, match=r"(?s)exit status 4 .*it broke"):
        mounting.wait_for_mount(spaced, 10, proc, what="helper")
    with pytest.raises(mounting.MountError, match="ENOENT"):
        mounting.mount("tmpfs", scratch.path / "absent", "tmpfs")


@needs_root
def test_unavailable_reasons(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def reason() -> str:
        kernel._probe.cache_clear()
        return KernelAdapter.unavailable() or ""

    try:
        with monkeypatch.context() as mp:
            mp.setattr(kernel, "is_root", lambda: False)
            assert "needs root" in reason()
        with monkeypatch.context() as mp:
            fake = tmp_path / "filesystems"
            fake.write_text("nodev\ttmpfs\n\text4\n")
            mp.setattr(kernel, "FILESYSTEMS", fake)
            assert "'overlay' is not in" in reason()
        with monkeypatch.context() as mp:

            def refuse(*args: object, **kwargs: object) -> None:
                raise mounting.MountError("mount -t tmpfs failed with EPERM", E.EPERM)

            mp.setattr(mounting, "mount", refuse)
            assert reason().startswith("no mount permission: ") and "EPERM" in reason()
            with pytest.raises(Unavailable, match="no mount permission"):
                KernelAdapter().mount(LayerDirs((tmp_path,), None, None), Features(), tmp_path)
    finally:
        kernel._probe.cache_clear()
    assert KernelAdapter.unavailable() is None
