"""conformance.reproducer: the script rebuilds exactly what was on disk, is valid bash, runs
the steps, and (as root, with the kernel) cleans up after itself."""

from __future__ import annotations

import errno as E
import os
import stat
import subprocess
from pathlib import Path

import pytest

from adapters import registry
from conformance import reproducer as R
from model import ops
from model.features import Features
from model.ops import Outcome, StatResult


def make_layer(root: Path) -> None:
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"it's %s \x00\xff\n")
    os.link(root / "d" / "f", root / "h")
    os.symlink("d/f", root / "s")
    os.mkfifo(root / "p")
    os.setxattr(root / "d", "user.a", b"1")
    os.utime(root / "d" / "f", ns=(1_700_000_000_123_456_789, 1_700_000_000_123_456_789))


def test_snapshot_describes_the_tree(tmp_path: Path) -> None:
    make_layer(tmp_path / "l")
    snap = R.snapshot("lower0", tmp_path / "l")
    by = {e.rel: e for e in snap.entries}
    assert set(by) == {"", "d", "d/f", "h", "s", "p"}
    # Breadth first: "h" is met before "d/f", which is then recorded as its hard link.
    assert by["h"].link_to is None and by["d/f"].link_to == "h"
    assert by["h"].data == b"it's %s \x00\xff\n"
    assert by["h"].mtime_ns == 1_700_000_000_123_456_789
    assert by["s"].kind == "symlink" and by["s"].target == "d/f"
    assert by["p"].kind == "fifo"
    assert ("user.a", b"1") in by["d"].xattrs


def _script(tmp_path: Path, steps: list[R.StepRecord]) -> str:
    make_layer(tmp_path / "l")
    (tmp_path / "u").mkdir()
    inp = R.ReproducerInput(
        title="t",
        adapter="kernel",
        features=Features(),
        layers=[R.snapshot("lower0", tmp_path / "l"), R.snapshot("upper", tmp_path / "u")],
        work=str(tmp_path / "w"),
        steps=steps,
        differences=["step 1 unlink(path='h'): errno: expected 0, observed ENOENT"],
        paths_to_show=["h"],
    )
    return R.render(inp)


STEPS = [
    R.StepRecord(1, ops.Unlink("h"), Outcome(), Outcome(E.ENOENT), ("unlink.whiteout",)),
    R.StepRecord(2, ops.Remount(), Outcome(), Outcome()),
    R.StepRecord(
        3,
        ops.Stat("d/f"),
        Outcome(value=StatResult("file", 0o644, 0, 0, 11, None, 5, None)),
        Outcome(value=StatResult("file", 0o644, 0, 0, 11, 2, 99, 1)),
    ),
    R.StepRecord(4, ops.Rename("d/f", "x", "RENAME_NOREPLACE"), Outcome(), Outcome()),
    R.StepRecord(5, ops.Readdir(""), Outcome(value=frozenset({"d", "x"})), Outcome()),
    R.StepRecord(6, ops.SetXattr("x", "user.q", b"v", "XATTR_CREATE"), Outcome(), Outcome()),
    R.StepRecord(7, ops.Utimes("x", 5_000_000_001), Outcome(), Outcome()),
    R.StepRecord(8, ops.Open("n", ("O_WRONLY", "O_CREAT"), 0o600), Outcome(), Outcome()),
]


def test_script_is_valid_bash_and_complete(tmp_path: Path) -> None:
    text = _script(tmp_path, STEPS)
    path = tmp_path / "r.sh"
    path.write_text(text)
    check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "trap cleanup EXIT INT TERM" in text
    assert 'rm -rf "$T"' in text
    assert "mount -t overlay overlay -o" in text
    assert "upperdir=$T/upper,workdir=$T/work,redirect_dir=nofollow" in text
    assert "mknod" not in text or "c 0 0" in text
    assert "mkfifo" in text and "ln -s d/f" in text
    assert "touch -h -d @1700000000.123456789" in text
    assert "renameat2('d/f', 'x', 1)" in text
    assert "umount_it" in text  # the remount step
    assert "[unlink.whiteout]" in text  # rule IDs beside the step


def test_python_steps_compile(tmp_path: Path) -> None:
    text = _script(tmp_path, STEPS)
    blocks = text.split("<<'PYEOF'\n")[1:]
    assert blocks
    for block in blocks:
        compile(block.split("\nPYEOF")[0], "<reproducer>", "exec")


def test_printf_escapes_roundtrip(tmp_path: Path) -> None:
    data = bytes(range(256))
    fmt = R._octal_printf(data)
    out = subprocess.run(["bash", "-c", f"printf '{fmt}'"], capture_output=True)
    assert out.stdout == data


def test_mount_spec_paths_are_rewritten(tmp_path: Path) -> None:
    make_layer(tmp_path / "l")
    spec = R.MountSpec(
        mount=f"fuse-overlayfs -o lowerdir={tmp_path}/l {tmp_path}/sc/mnt",
        umount=f"fusermount3 -u {tmp_path}/sc/mnt",
        mountpoint=f"{tmp_path}/sc/mnt",
        scratch=f"{tmp_path}/sc",
    )
    inp = R.ReproducerInput(
        title="t", adapter="fuse", features=Features(),
        layers=[R.snapshot("lower0", tmp_path / "l")], work=None, steps=[],
        differences=[], mount=spec,
    )  # fmt: skip
    text = R.render(inp)
    assert "fuse-overlayfs -o lowerdir=$T/lower0 $T/adapter/mnt" in text
    assert 'M="$T/adapter/mnt"' in text
    assert str(tmp_path) not in text.split("set -euo pipefail", 1)[1]


needs_kernel = pytest.mark.skipif(
    os.geteuid() != 0 or registry.unavailable("kernel") is not None,
    reason="needs root and the kernel overlay",
)


@pytest.mark.root
@pytest.mark.kernel
@needs_kernel
def test_script_runs_and_cleans_up(tmp_path: Path) -> None:
    text = _script(tmp_path, STEPS)
    path = tmp_path / "r.sh"
    path.write_text(text)
    before = set(Path("/tmp").glob("overlay-repro.*"))
    run = subprocess.run(["bash", str(path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr + run.stdout
    out = run.stdout
    assert "step 1: unlink(path='h')" in out
    assert "step 2: remount()" in out
    assert "step 5:" in out and "the whole merged view now:" in out
    # Stat: predicted fields only (the model's ino is not st_ino): no '!!' for step 3.
    assert "   step 3: stat(path='d/f')" in out
    assert "!! step 5: readdir(path='')" in out  # p and s are listed too: marked
    assert set(Path("/tmp").glob("overlay-repro.*")) == before
    with open("/proc/self/mountinfo") as f:
        assert "overlay-repro." not in f.read()


def test_write_makes_an_executable_file(tmp_path: Path) -> None:
    inp = R.ReproducerInput(
        title="t", adapter="x", features=Features(), layers=[], work=None, steps=[],
        differences=[],
    )  # fmt: skip
    path = R.write(inp, tmp_path / "out", "a/b::c[d]")
    assert path.parent == tmp_path / "out"
    assert "/" not in path.name and path.name.endswith(".sh")
    assert stat.S_IMODE(path.stat().st_mode) == 0o755
