"""The command adapter: templates (splitting, placeholders), the fuse-overlayfs example that
daemonizes, the kernel through mount(8), and each way a command can fail."""

from __future__ import annotations

import errno as E
import shutil
import sys
from pathlib import Path

import pytest
from conftest import needs_root

from adapters import command, mounting
from adapters.base import AdapterError, AdapterOptions, LayerDirs, Unavailable
from adapters.command import CommandAdapter, parse_template, render
from adapters.layout import write_stack
from adapters.scratch import Scratch, processes_using
from model import ops
from model.features import Features
from model.frozen import FrozenMap
from model.state import Inode, Layer, Overlay, empty_layer

FUSE_MOUNT = (
    "fuse-overlayfs -o lowerdir={lowerdir},upperdir={upperdir},workdir={workdir} {mountpoint}"
)
FUSE_UMOUNT = "fusermount3 -u {mountpoint}"
KERNEL_MOUNT = (
    "mount -t overlay overlay -o lowerdir={lowerdir},upperdir={upperdir},workdir={workdir},"
    "redirect_dir=nofollow,index=off,metacopy=off,xino=off {mountpoint}"
)
TMPFS_MOUNT = "mount -t tmpfs none {mountpoint}"

LOWER = Layer(
    FrozenMap({(): 1, ("f",): 2, ("d",): 3}),
    FrozenMap({1: Inode("dir", 0o755), 2: Inode("file", data=b"lower"), 3: Inode("dir")}),
)


def adapter(
    mount_cmd: str | None, umount_cmd: str | None = "umount {mountpoint}"
) -> CommandAdapter:
    return CommandAdapter(AdapterOptions(mount_cmd=mount_cmd, umount_cmd=umount_cmd))


def stack(scratch: Scratch, ro: bool = False) -> LayerDirs:
    lowers = (empty_layer(50), LOWER) if ro else (LOWER,)
    state = Overlay(lowers, None if ro else empty_layer(100))
    return write_stack(state, scratch.mkdtemp("stack-"))


def nothing_left(scratch: Scratch) -> bool:
    return not mounting.mounts_under(scratch.path, include_self=False) and not [
        p for p in processes_using(str(scratch.path)) if p != 0
    ]


# --- templates ---------------------------------------------------------------------------


def test_split_first_then_format() -> None:
    words = parse_template(
        "tool -o 'lower={lowerdir}' \"{mountpoint}/x y\" {{literal}}", "mount_cmd"
    )
    values = {"lowerdir": "/a b:/c", "mountpoint": "/m n", "upperdir": None, "workdir": None}
    assert render(words, values, "mount_cmd") == [
        "tool",
        "-o",
        "lower=/a b:/c",
        "/m n/x y",
        "{literal}",
    ]
    # A substituted path with spaces stays one argument even when the template is unquoted.
    assert render(parse_template("cmd {mountpoint}", "mount_cmd"), values, "mount_cmd") == [
        "cmd",
        "/m n",
    ]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (None, "needs a mount_cmd template"),
        ("   ", "needs a mount_cmd template"),
        ("mount {lowerdirs} {mountpoint}", r"unknown placeholder \{lowerdirs\}"),
        ("mount {lowerdir!r}", r"unknown placeholder \{lowerdir!r\}"),
        ("mount {mountpoint:>9}", r"unknown placeholder \{mountpoint:>9\}"),
        ("mount {0}", r"unknown placeholder \{0\}"),
        ("mount {mountpoint", "bad placeholder syntax"),
        ("mount 'unclosed", "cannot split"),
    ],
)
def test_template_errors(template: str | None, message: str) -> None:
    with pytest.raises(AdapterError, match=message) as info:
        parse_template(template, "mount_cmd")
    if "placeholder" in message:
        assert "{lowerdir}, {upperdir}, {workdir}, {mountpoint}" in str(info.value)


def test_bad_templates_fail_before_running_anything(tmp_path: Path) -> None:
    layers = LayerDirs((tmp_path,), None, None)
    with pytest.raises(AdapterError, match="umount_cmd"):
        adapter("true", None).mount(layers, Features(), tmp_path)
    with pytest.raises(AdapterError, match=r"\{nope\}"):
        adapter("true", "umount {nope}").mount(layers, Features(), tmp_path)
    with pytest.raises(Unavailable, match=r"\{upperdir\}.*read-only"):
        adapter("mount {upperdir} {mountpoint}").mount(layers, Features(), tmp_path)


# --- real commands ----------------------------------------------------------------------


@needs_root
@pytest.mark.skipif(
    shutil.which("fuse-overlayfs") is None or shutil.which("fusermount3") is None,
    reason="fuse-overlayfs or fusermount3 not installed",
)
def test_fuse_overlayfs_example(scratch: Scratch) -> None:
    """fuse-overlayfs daemonizes: after fusermount3 -u no process may serve the mount point."""
    m = adapter(FUSE_MOUNT, FUSE_UMOUNT).mount(stack(scratch), Features(), scratch.path)
    with m:
        mountpoint = m.mountpoint  # type: ignore[attr-defined]
        assert processes_using(str(mountpoint)), "the daemon should be running"
        assert m.options_in_effect()["fstype"] == "fuse.fuse-overlayfs"
        assert m.perform(ops.Write("f", b"UP")).ok
        view = m.observe()
        assert view["f"].data == b"UPwer"
        m.perform(ops.Remount())
        assert m.observe()["f"].data == b"UPwer"
    assert not mounting.is_mountpoint(mountpoint)
    assert not processes_using(str(mountpoint))


@needs_root
def test_kernel_through_mount8(scratch: Scratch) -> None:
    m = adapter(KERNEL_MOUNT).mount(stack(scratch), Features(), scratch.path)
    with m:
        assert m.options_in_effect()["fstype"] == "overlay"
        assert m.options_in_effect()["redirect_dir"] == "nofollow"
        assert m.perform(ops.Unlink("f")).ok
        view = m.observe()
        m.perform(ops.Remount())
        assert m.observe() == view
        assert m.perform(ops.Read("f")).errno == E.ENOENT
    m.close()
    assert nothing_left(scratch)


@needs_root
def test_mount_command_failing(scratch: Scratch) -> None:
    failing = (
        f"{sys.executable} -c \"import sys; sys.stderr.write('boom'); sys.exit(3)\" {{mountpoint}}"
    )
    with pytest.raises(AdapterError, match=r"(?s)failed with exit status 3.*boom"):
        adapter(failing).mount(stack(scratch), Features(), scratch.path)
    with pytest.raises(AdapterError, match="cannot run the mount command"):
        adapter("/nonexistent/mounter {mountpoint}").mount(stack(scratch), Features(), scratch.path)
    assert nothing_left(scratch)


@needs_root
def test_mount_that_never_appears(scratch: Scratch, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(command, "MOUNT_TIMEOUT", 0.2)
    with pytest.raises(AdapterError, match=r"exited 0 but nothing was mounted on .* within 0\.2 s"):
        adapter("true").mount(stack(scratch), Features(), scratch.path)
    assert nothing_left(scratch)


@needs_root
def test_mount_command_hanging(scratch: Scratch, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(command, "COMMAND_TIMEOUT", 0.2)
    with pytest.raises(AdapterError, match=r"did not finish within 0\.2 s"):
        adapter("sleep 30").mount(stack(scratch), Features(), scratch.path)
    assert nothing_left(scratch)


@needs_root
@pytest.mark.parametrize(
    ("umount_cmd", "message"),
    [
        ("false", "umount command false failed with exit status 1"),
        ("true", "umount command true exited 0 but .* is still mounted"),
    ],
)
def test_umount_failing_is_reported_and_forced(
    scratch: Scratch, umount_cmd: str, message: str
) -> None:
    m = adapter(TMPFS_MOUNT, umount_cmd).mount(stack(scratch), Features(), scratch.path)
    mountpoint = m.mountpoint  # type: ignore[attr-defined]
    assert mounting.is_mountpoint(mountpoint)
    with pytest.raises(AdapterError, match=message):
        m.close()
    assert not mounting.is_mountpoint(mountpoint)
    m.close()  # idempotent, and quiet now
    assert nothing_left(scratch)


@needs_root
def test_leftover_daemon_is_terminated(scratch: Scratch, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(command, "DAEMON_EXIT_GRACE", 0.2)
    daemonizing = (
        'sh -c \'mount -t tmpfs none "$0" && '
        f'{sys.executable} -c "import time; time.sleep(60)" "$0" >/dev/null 2>&1 &\' '
        "{mountpoint}"
    )
    m = adapter(daemonizing).mount(stack(scratch), Features(), scratch.path)
    mountpoint = m.mountpoint  # type: ignore[attr-defined]
    assert processes_using(str(mountpoint))
    m.close()
    assert not mounting.is_mountpoint(mountpoint)
    assert not processes_using(str(mountpoint))
