"""The scratch area: one private directory per run that is always removed again.

``Scratch`` makes ``<tmp>/overlay-spec-<pid>-<random>`` and, when root, mounts a private tmpfs
on it: fast, it carries trusted.* and user.* xattrs (overlay needs both), and one unmount
removes everything. Teardown runs whatever happened (exception, SIGTERM, SIGINT, interpreter
exit): unmount everything beneath, deepest first, terminate registered daemons, remove the
directory. ``sweep_stale`` removes what earlier runs left when they were killed outright.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path

from adapters import mounting
from adapters.base import AdapterError, is_root

PREFIX = "overlay-spec-"
OWNER_FILE = ".overlay-spec-owner"

_live: list[Scratch] = []
_orphans: list[subprocess.Popen[bytes]] = []
_lock = threading.RLock()  # re-entrant: a signal handler may run while the main thread holds it
_handlers_installed = False
_SignalHandler = Callable[[int, types.FrameType | None], object] | int | signal.Handlers | None
_previous: dict[int, _SignalHandler] = {}


def _start_time(pid: int) -> str | None:
    """The process start time (clock ticks since boot): tells a live pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after its closing parenthesis.
    rest = stat[stat.rfind(")") + 2 :].split()
    return rest[19] if len(rest) > 19 else None


class Scratch:
    """A private scratch directory, torn down on exit whatever happened."""

    def __init__(self, base: Path | None = None, tmpfs: bool | None = None) -> None:
        self.base = Path(base) if base is not None else Path(tempfile.gettempdir())
        self.use_tmpfs = is_root() if tmpfs is None else tmpfs
        self.path = Path()
        self.tmpfs = False
        self._procs: list[subprocess.Popen[bytes]] = []
        self._open = False
        self._closing = False
        self.notes: list[str] = []  # what teardown had to force: for reports and tests

    def __enter__(self) -> Scratch:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> Scratch:
        if self._open:
            return self
        _install_handlers()
        base = Path(os.path.realpath(self.base))
        base.mkdir(parents=True, exist_ok=True)
        self.path = base / f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.path.mkdir(mode=0o700)
        with _lock:
            _live.append(self)
        self._open = True
        try:
            if self.use_tmpfs:
                mounting.mount("overlay-spec", self.path, "tmpfs", 0, "mode=0755")
                self.tmpfs = True
                mounting.make_private(self.path)
            (self.path / OWNER_FILE).write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
        except BaseException:
            self.close()
            raise
        return self

    # --- helpers ---------------------------------------------------------------------

    def subdir(self, *parts: str, mode: int = 0o755) -> Path:
        """``path/parts...``, created (with parents) if missing."""
        self._require_open()
        p = self.path.joinpath(*parts)
        p.mkdir(mode=mode, parents=True, exist_ok=True)
        return p

    def mkdtemp(self, prefix: str = "d-") -> Path:
        """A new, uniquely named directory in the scratch area."""
        self._require_open()
        return Path(tempfile.mkdtemp(prefix=prefix, dir=self.path))

    def register_process(self, proc: subprocess.Popen[bytes]) -> None:
        """Terminate ``proc`` at teardown if it is still running (after unmounting)."""
        self._procs.append(proc)

    def unregister_process(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ValueError):
            self._procs.remove(proc)

    def _require_open(self) -> None:
        if not self._open:
            raise AdapterError("the scratch area is not open (use it as a context manager)")

    # --- teardown --------------------------------------------------------------------

    def close(self) -> None:
        """Unmount everything beneath, reap daemons, remove the directory. Idempotent."""
        if not self._open or self._closing:
            return
        self._closing = True
        try:
            # Beneath first (overlays, FUSE), so daemons see a clean unmount and exit.
            self.notes.extend(mounting.unmount_tree(self.path, include_self=False))
            for proc in self._procs:
                _terminate(proc)
            self._procs.clear()
            self.notes.extend(mounting.unmount_tree(self.path, include_self=True))
            _remove_dir(self.path, self.notes)
        finally:
            self._open = False
            self._closing = False
            with _lock:
                if self in _live:
                    _live.remove(self)


def _terminate(proc: subprocess.Popen[bytes], grace: float = 2.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def register_orphan(proc: subprocess.Popen[bytes]) -> None:
    """Terminate ``proc`` at interpreter exit or on a signal, if nothing reaped it before."""
    with _lock:
        _orphans.append(proc)


def unregister_orphan(proc: subprocess.Popen[bytes]) -> None:
    with _lock, contextlib.suppress(ValueError):
        _orphans.remove(proc)


def _remove_dir(path: Path, notes: list[str]) -> None:
    if mounting.mounts_under(path):
        notes.append(f"{path} is still a mount point; left in place")
        return
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        notes.append(f"cannot remove {path}: {exc}")


def cleanup_all() -> None:
    """Tear down every open scratch area of this process and reap orphan daemons."""
    with _lock:
        live = list(reversed(_live))
        orphans = list(_orphans)
        _orphans.clear()
    for scratch in live:
        with contextlib.suppress(Exception):
            scratch.close()
    for proc in orphans:
        with contextlib.suppress(Exception):
            _terminate(proc)


def _on_signal(signum: int, frame: types.FrameType | None) -> None:
    cleanup_all()
    previous = _previous.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)  # SIGINT: Python's handler raises KeyboardInterrupt
        return
    if previous == signal.SIG_IGN:
        return
    # Default action: die of the same signal, so the parent sees the real cause.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    global _handlers_installed
    if _handlers_installed:
        return
    _handlers_installed = True
    atexit.register(cleanup_all)
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread; atexit still runs
    for signum in (signal.SIGTERM, signal.SIGINT):
        current = signal.getsignal(signum)
        if current == signal.SIG_IGN:
            continue
        _previous[signum] = current
        signal.signal(signum, _on_signal)


# --- leftovers of earlier runs --------------------------------------------------------


def _owner_alive(entry: Path) -> bool:
    """Whether the run that made ``entry`` is still running (pid alive, same start time)."""
    try:
        pid = int(entry.name[len(PREFIX) :].split("-", 1)[0])
    except ValueError:
        return True  # not one of ours: never touch it
    if pid == os.getpid():
        return True
    start = _start_time(pid)
    if start is None:
        return False
    try:
        recorded = (entry / OWNER_FILE).read_text().split()
    except OSError:
        return True  # cannot tell (its tmpfs may still be mounting): leave it alone
    return len(recorded) < 2 or recorded[1] == start


def processes_using(path: str) -> list[int]:
    """Pids (not ours) whose command line mentions ``path``: daemons serving a mount there."""
    me = os.getpid()
    found: list[int] = []
    needle = os.fsencode(path)
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if any(needle in arg for arg in args):
            found.append(int(entry))
    return found


def kill_processes(pids: list[int], grace: float = 2.0) -> None:
    """SIGTERM, then SIGKILL whatever is left after ``grace`` seconds."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _start_time(p) is not None and not _is_zombie(p)]
        if alive:
            time.sleep(0.02)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 :].startswith("Z")


def sweep_stale(base: Path | None = None) -> list[Path]:
    """Remove scratch areas (mounts, daemons, directories) of runs that are no longer alive.

    Returns the directories removed."""
    base = Path(os.path.realpath(base if base is not None else tempfile.gettempdir()))
    removed: list[Path] = []
    try:
        entries = sorted(base.glob(PREFIX + "*"))
    except OSError:
        return removed
    for entry in entries:
        if not entry.is_dir() or _owner_alive(entry):
            continue
        notes: list[str] = []
        notes.extend(mounting.unmount_tree(entry, include_self=False))
        kill_processes(processes_using(str(entry)))
        notes.extend(mounting.unmount_tree(entry, include_self=True))
        _remove_dir(entry, notes)
        if not entry.exists():
            removed.append(entry)
    return removed
