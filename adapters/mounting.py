"""Mounting without a shell: mount(2)/umount2(2) through ctypes, /proc/self/mountinfo parsing,
and ``MountedDir``, the one ``Mounted`` implementation shared by every adapter that exposes its
overlay as a mount point (kernel, fuse, command).
"""

from __future__ import annotations

import abc
import contextlib
import ctypes
import errno as E
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from adapters import posix
from adapters.base import AdapterError, Mounted
from model import ops
from model.ops import Op, Outcome, View

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MS_PRIVATE = 1 << 18
MS_REC = 0x4000

MNT_FORCE = 0x1
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

MOUNTINFO = Path("/proc/self/mountinfo")


def errno_name(err: int) -> str:
    return E.errorcode.get(err, f"errno {err}")


class MountError(AdapterError):
    """mount(2) or umount2(2) failed; ``errno`` is the error number."""

    def __init__(self, message: str, err: int) -> None:
        super().__init__(message)
        self.errno = err


def _enc(value: str | os.PathLike[str] | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(
    source: str,
    target: str | os.PathLike[str],
    fstype: str | None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    """mount(2). Raises MountError naming the errno and the call."""
    raw = _enc(data)
    res = _libc.mount(_enc(source), _enc(target), _enc(fstype), flags, raw)
    if res != 0:
        err = ctypes.get_errno()
        raise MountError(
            f"mount -t {fstype} {source} {os.fspath(target)} failed with {errno_name(err)} "
            f"({os.strerror(err)}); options: {data or '(none)'}",
            err,
        )


def umount(target: str | os.PathLike[str], flags: int = 0) -> None:
    """umount2(2). Raises MountError naming the errno."""
    if _libc.umount2(_enc(target), flags) != 0:
        err = ctypes.get_errno()
        raise MountError(
            f"umount {os.fspath(target)} failed with {errno_name(err)} ({os.strerror(err)})",
            err,
        )


def make_private(target: str | os.PathLike[str]) -> None:
    """Stop mount events below ``target`` propagating to (or from) peer mounts."""
    mount("none", target, None, MS_PRIVATE | MS_REC)


# --- /proc/self/mountinfo --------------------------------------------------------------


def unescape(field: str) -> str:
    r"""Undo the kernel's octal escapes (``\040`` space, ``\072`` colon, ``\134`` backslash)."""
    if "\\" not in field:
        return field
    out = bytearray()
    raw = field.encode("utf-8", "surrogateescape")
    i = 0
    while i < len(raw):
        c = raw[i]
        digits = raw[i + 1 : i + 4]
        if c == 0x5C and len(digits) == 3 and all(0x30 <= d <= 0x37 for d in digits):
            out.append(int(digits, 8))
            i += 4
        else:
            out.append(c)
            i += 1
    return out.decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/self/mountinfo (proc(5)), unescaped."""

    mount_id: int
    parent_id: int
    dev: str  # major:minor
    root: str
    mountpoint: str
    mount_options: str
    optional: tuple[str, ...]
    fstype: str
    source: str
    super_options: str

    def super_options_map(self) -> dict[str, str]:
        return parse_options(self.super_options)


def parse_mountinfo_line(line: str) -> MountInfo:
    fields = line.rstrip("\n").split(" ")
    try:
        sep = fields.index("-", 6)
        return MountInfo(
            mount_id=int(fields[0]),
            parent_id=int(fields[1]),
            dev=fields[2],
            root=unescape(fields[3]),
            mountpoint=unescape(fields[4]),
            mount_options=fields[5],
            optional=tuple(fields[6:sep]),
            fstype=fields[sep + 1],
            source=unescape(fields[sep + 2]),
            super_options=fields[sep + 3] if len(fields) > sep + 3 else "",
        )
    except (ValueError, IndexError) as exc:
        raise AdapterError(f"cannot parse mountinfo line {line!r}: {exc}") from exc


def mountinfo(path: Path = MOUNTINFO) -> list[MountInfo]:
    """Every mount in this mount namespace, in the kernel's order (parents before children)."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return [parse_mountinfo_line(line) for line in f if line.strip()]


def parse_options(text: str) -> dict[str, str]:
    """``a=1,b,c=x`` → {"a": "1", "b": "", "c": "x"}; values unescaped (commas arrive as \\054)."""
    result: dict[str, str] = {}
    for item in text.split(","):
        if not item:
            continue
        key, _, value = item.partition("=")
        result[unescape(key)] = unescape(value)
    return result


def _real(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.fspath(path))


def find_mount(path: str | os.PathLike[str]) -> MountInfo | None:
    """The topmost mount whose mount point is exactly ``path``, or None."""
    target = _real(path)
    found = None
    for info in mountinfo():
        if info.mountpoint == target:
            found = info  # later lines are mounted on top of earlier ones
    return found


def is_mountpoint(path: str | os.PathLike[str]) -> bool:
    return find_mount(path) is not None


def super_options(mountpoint: str | os.PathLike[str]) -> dict[str, str]:
    """The filesystem's own options in effect, as the kernel prints them for ``mountpoint``."""
    info = find_mount(mountpoint)
    if info is None:
        raise AdapterError(f"nothing is mounted on {os.fspath(mountpoint)}")
    return info.super_options_map()


def mounts_under(path: str | os.PathLike[str], include_self: bool = True) -> list[MountInfo]:
    """Mounts at or below ``path``, deepest (and most recent) first: the order to unmount."""
    root = _real(path)
    prefix = root.rstrip("/") + "/"
    found = [
        (i, m)
        for i, m in enumerate(mountinfo())
        if m.mountpoint.startswith(prefix) or (include_self and m.mountpoint == root)
    ]
    found.sort(key=lambda im: (im[1].mountpoint.count("/"), im[0]), reverse=True)
    return [m for _, m in found]


def force_unmount(path: str | os.PathLike[str]) -> list[str]:
    """Unmount every mount at ``path`` (stacked ones too): a plain umount first, a lazy
    MNT_DETACH as the last resort. Returns notes on what needed force."""
    notes: list[str] = []
    for _ in range(16):  # mounts can be stacked on one point; bounded so a bug cannot spin
        if not is_mountpoint(path):
            break
        try:
            umount(path, UMOUNT_NOFOLLOW)
        except MountError as exc:
            if exc.errno == E.EINVAL and not is_mountpoint(path):
                break
            notes.append(f"{exc}; detached it lazily")
            try:
                umount(path, MNT_DETACH | UMOUNT_NOFOLLOW)
            except MountError as exc2:
                notes.append(str(exc2))
                break
    return notes


def unmount_tree(path: str | os.PathLike[str], include_self: bool = True) -> list[str]:
    """Unmount everything mounted at or beneath ``path``, deepest first."""
    notes: list[str] = []
    for _ in range(4):  # a lazily detached parent can uncover nothing new; a few passes suffice
        pending = mounts_under(path, include_self)
        if not pending:
            break
        for m in pending:
            notes.extend(force_unmount(m.mountpoint))
    return notes


def wait_for_mount(
    path: str | os.PathLike[str],
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    *,
    log: Path | None = None,
    fstype_prefix: str = "",
    what: str = "",
) -> MountInfo:
    """Wait until something is mounted on ``path``. If ``proc`` exits first, fail at once with
    its exit status and its stderr (``log`` names the file its stderr goes to)."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    label = what or (proc.args[0] if proc is not None and isinstance(proc.args, list) else "")
    while True:
        info = find_mount(path)
        if info is not None and info.fstype.startswith(fstype_prefix):
            return info
        if proc is not None and proc.poll() is not None:
            raise AdapterError(
                f"{label or 'the mount process'} exited with {describe_status(proc.returncode)} "
                f"before {os.fspath(path)} was mounted{format_output(read_output(proc, log))}"
            )
        if time.monotonic() > deadline:
            raise AdapterError(
                f"nothing was mounted on {os.fspath(path)} within {timeout:g} s"
                + (f" ({label} is still running)" if proc is not None else "")
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def describe_status(returncode: int | None) -> str:
    if returncode is None:
        return "no status (still running)"
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit status {returncode}"


def read_output(proc: subprocess.Popen[bytes] | None, log: Path | None) -> str:
    """What a finished process wrote to stderr (its pipe, or the log file it writes to)."""
    chunks: list[str] = []
    if proc is not None and proc.stderr is not None:
        with contextlib.suppress(OSError, ValueError):
            chunks.append(proc.stderr.read().decode(errors="replace"))
    if log is not None:
        with contextlib.suppress(OSError):
            chunks.append(log.read_text(errors="replace"))
    return "".join(chunks).strip()


def format_output(text: str, limit: int = 2000) -> str:
    if not text:
        return " (no output)"
    if len(text) > limit:
        text = "..." + text[-limit:]
    return f"; its output:\n{text}"


# --- kernel log, read only to explain a failure ----------------------------------------


def kernel_log_tail(match: Iterable[str], lines: int = 5, since: float = 0.0) -> list[str]:
    """The last kernel log messages containing any of ``match``, logged no earlier than
    ``since`` (seconds since boot, as /proc/uptime). Best effort: [] if unreadable.

    Read only after a failure: the kernel explains a refused mount there, not in errno."""
    keys = tuple(match)
    found: list[str] = []
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return []
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == E.EPIPE:  # overwritten record: skip on to the next
                    continue
                break
            if not record:
                break
            header, _, message = record.decode(errors="replace").partition(";")
            message = message.split("\n", 1)[0]
            fields = header.split(",")
            try:
                logged = int(fields[2]) / 1e6  # microseconds since boot
            except (IndexError, ValueError):
                logged = since
            if logged >= since - 0.5 and any(k in message for k in keys):
                found.append(message)
    finally:
        os.close(fd)
    return found[-lines:]


# --- the shared mounted-directory implementation ----------------------------------------


class MountedDir(Mounted):
    """An overlay that shows up as a mount point: operations are real system calls on it.

    Subclasses say how to bring the implementation up and down (``_up``/``_down``) and may
    check between operations that it is still alive (``_check_alive``)."""

    def __init__(self, mountpoint: Path, label: str) -> None:
        self.mountpoint = mountpoint
        self.label = label
        self.fs = posix.MountFS(mountpoint)
        self._mounted = False
        self._closed = False
        self._in_effect: dict[str, str] = {}

    @abc.abstractmethod
    def _up(self) -> None:
        """Mount; on success leave something mounted on ``self.mountpoint``."""

    @abc.abstractmethod
    def _down(self) -> None:
        """Unmount and reap; leave nothing behind, even when raising."""

    def _check_alive(self) -> None:
        """Raise AdapterError if the implementation died (a daemon that exited, say)."""

    def start(self) -> None:
        """Bring the overlay up the first time; on failure nothing is left behind."""
        self._bring_up(remount=False)

    def perform(self, op: Op) -> Outcome:
        self._ensure_open()
        if isinstance(op, ops.Remount):
            self.remount()
            return Outcome()
        outcome = posix.perform(self.fs, op)
        self._check_alive()
        return outcome

    def observe(self) -> View:
        self._ensure_open()
        try:
            return posix.observe(self.fs)
        except OSError:
            self._check_alive()  # a dead implementation is the better explanation
            raise

    def remount(self) -> None:
        self._ensure_open()
        self._mounted = False
        self._bring_up(remount=True)

    def _bring_up(self, *, remount: bool) -> None:
        """Mount (unmounting first for a remount); on failure close, leaving nothing behind."""
        try:
            if remount:
                self._down()
            self._up()
            self._mounted = True
        except BaseException as exc:
            self._closed = True
            self._down_after_failure(exc)
            raise

    def _down_after_failure(self, exc: BaseException) -> None:
        """Tear down after a failure without hiding it: a teardown problem becomes a note."""
        try:
            self._down()
        except Exception as down_exc:
            exc.add_note(f"while cleaning up after that: {down_exc}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._mounted = False
        self._down()

    def options_in_effect(self) -> Mapping[str, str]:
        return dict(self._in_effect)

    def _ensure_open(self) -> None:
        if self._closed:
            raise AdapterError(f"{self.label} overlay on {self.mountpoint} is already closed")
        if not self._mounted:
            raise AdapterError(f"{self.label} overlay on {self.mountpoint} is not mounted")
        self._check_alive()


def check_layer_path(path: Path, what: str) -> str:
    """Layer paths go into comma- and colon-separated option strings: refuse what would split."""
    text = os.fspath(path)
    bad = [c for c in ",:\\\n" if c in text]
    if bad:
        raise AdapterError(
            f"{what} path {text!r} contains {''.join(bad)!r}, which the overlay option syntax "
            "would split; use a scratch directory without these characters"
        )
    return text
