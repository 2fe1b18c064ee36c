"""The scratch area: created private, always torn down (exception, busy mount, SIGTERM, SIGINT),
and what a SIGKILLed run leaves is swept by ``sweep_stale``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import needs_root

from adapters import mounting
from adapters.base import AdapterError
from adapters.scratch import PREFIX, Scratch, processes_using, sweep_stale

REPO = Path(__file__).resolve().parents[1]


def test_without_tmpfs(tmp_path: Path) -> None:
    with Scratch(base=tmp_path, tmpfs=False) as s:
        assert s.path.parent == tmp_path.resolve()
        assert s.path.name.startswith(f"{PREFIX}{os.getpid()}-")
        assert not s.tmpfs and not mounting.is_mountpoint(s.path)
        sub = s.subdir("a", "b")
        assert sub.is_dir() and sub == s.path / "a" / "b"
        t1, t2 = s.mkdtemp(), s.mkdtemp()
        assert t1 != t2 and t1.parent == s.path
        path = s.path
    assert not path.exists()
    with pytest.raises(AdapterError, match="not open"):
        s.subdir("x")


@needs_root
def test_private_tmpfs_and_teardown_of_nested_mounts(tmp_path: Path) -> None:
    with Scratch(base=tmp_path) as s:
        info = mounting.find_mount(s.path)
        assert info is not None and info.fstype == "tmpfs"
        assert not any(o.startswith("shared:") for o in info.optional)  # private
        # Overlay needs trusted.* and user.* xattrs on its upper: tmpfs has both.
        os.setxattr(s.path, "trusted.t", b"1")
        os.setxattr(s.path, "user.u", b"2")
        a, b, m, n = (s.subdir(x) for x in ("a", "b", "m", "n"))
        mounting.mount("overlay", m, "overlay", 0, f"lowerdir={a}:{b}")
        mounting.mount("tmpfs", n, "tmpfs")
        s.subdir("n", "deeper")
        mounting.mount("tmpfs", n / "deeper", "tmpfs")
        path = s.path
    assert not mounting.mounts_under(path)
    assert not path.exists()


@needs_root
def test_teardown_on_exception_and_busy_mount(tmp_path: Path) -> None:
    fd = -1
    with pytest.raises(RuntimeError, match="boom"), Scratch(base=tmp_path) as s:
        path = s.path
        inner = s.subdir("inner")
        mounting.mount("tmpfs", inner, "tmpfs")
        fd = os.open(inner, os.O_RDONLY)  # keeps the mount busy: needs the lazy detach
        raise RuntimeError("boom")
    try:
        assert not mounting.mounts_under(path)
        assert not path.exists()
        assert any("detached it lazily" in n for n in s.notes)
    finally:
        os.close(fd)


def test_registered_process_is_terminated(tmp_path: Path) -> None:
    with Scratch(base=tmp_path, tmpfs=False) as s:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        s.register_process(proc)
    assert proc.poll() is not None


def test_close_is_idempotent(tmp_path: Path) -> None:
    s = Scratch(base=tmp_path, tmpfs=False).open()
    s.close()
    s.close()
    assert not s.path.exists()


CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from adapters import mounting
    from adapters.scratch import Scratch
    s = Scratch(base=Path(sys.argv[1])).open()
    a, b, m = s.subdir("a"), s.subdir("b"), s.subdir("m")
    mounting.mount("overlay", m, "overlay", 0, f"lowerdir={a}:{b}")
    print(s.path, flush=True)
    time.sleep(60)
    """
)


def _start_child(base: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(base)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, f"child failed to start (status {proc.wait()})"
    path = Path(line)
    assert mounting.is_mountpoint(path / "m")
    return proc, path


@needs_root
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_cleans_up(tmp_path: Path, signum: int) -> None:
    proc, path = _start_child(tmp_path)
    proc.send_signal(signum)
    status = proc.wait(20)
    if signum == signal.SIGTERM:
        assert status == -signal.SIGTERM  # dies of the signal after cleaning up
    else:
        assert status != 0  # KeyboardInterrupt
    assert not mounting.mounts_under(path)
    assert not path.exists()


@needs_root
def test_sigkill_leftovers_are_swept(tmp_path: Path) -> None:
    proc, path = _start_child(tmp_path)
    with Scratch(base=tmp_path) as live:  # a live run's area must survive the sweep
        proc.kill()
        proc.wait(20)
        assert mounting.is_mountpoint(path / "m")  # SIGKILL leaves everything behind
        removed = sweep_stale(tmp_path)
        assert removed == [path]
        assert not mounting.mounts_under(path) and not path.exists()
        assert live.path.exists() and mounting.is_mountpoint(live.path)


def test_sweep_ignores_foreign_and_live_entries(tmp_path: Path) -> None:
    foreign = tmp_path / f"{PREFIX}notapid-x"
    foreign.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live_other = tmp_path / f"{PREFIX}{sleeper.pid}-abc"
        live_other.mkdir()
        # Give it the owner record a real Scratch writes: pid and start time.
        stat = Path(f"/proc/{sleeper.pid}/stat").read_text()
        start = stat[stat.rfind(")") + 2 :].split()[19]
        (live_other / ".overlay-spec-owner").write_text(f"{sleeper.pid} {start}\n")
        dead = tmp_path / f"{PREFIX}{_dead_pid()}-def"
        dead.mkdir()
        assert sweep_stale(tmp_path) == [dead]
        assert foreign.exists() and live_other.exists() and not dead.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_processes_using_finds_command_lines(tmp_path: Path) -> None:
    marker = str(tmp_path / "marker")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    try:
        deadline = time.monotonic() + 5
        while proc.pid not in processes_using(marker) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.pid in processes_using(marker)
        assert os.getpid() not in processes_using(marker)
    finally:
        proc.kill()
        proc.wait()
