"""Any implementation that a mount command brings up and an unmount command takes down.

``--mount-cmd`` and ``--umount-cmd`` are templates. Each is split like a shell would
(``shlex``) first, and then each word is formatted, so a path holding spaces stays one
argument. Placeholders: {lowerdir} (the lower layers joined by ':', top first), {upperdir},
{workdir}, {mountpoint}. Nothing runs through a shell.

The command may leave a daemon behind (fuse-overlayfs daemonizes): after unmounting, any
process whose command line names the mount point is waited for, then terminated.
"""

from __future__ import annotations

import shlex
import string
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from adapters import mounting
from adapters.base import Adapter, AdapterError, LayerDirs, Mounted, Unavailable
from adapters.mounting import MountedDir
from adapters.scratch import kill_processes, processes_using
from model.features import Features

PLACEHOLDERS: tuple[str, ...] = ("lowerdir", "upperdir", "workdir", "mountpoint")
COMMAND_TIMEOUT = 30.0
MOUNT_TIMEOUT = 5.0
DAEMON_EXIT_GRACE = 3.0


def parse_template(template: str | None, what: str) -> list[str]:
    """Split ``template`` into words and check every placeholder; AdapterError if bad."""
    allowed = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
    if template is None or not template.strip():
        raise AdapterError(
            f"the command adapter needs a {what} template (--{what.replace('_', '-')}); "
            f"placeholders allowed: {allowed}"
        )
    try:
        words = shlex.split(template)
    except ValueError as exc:
        raise AdapterError(f"cannot split the {what} template {template!r}: {exc}") from exc
    for word in words:
        try:
            parsed = list(string.Formatter().parse(word))
        except ValueError as exc:
            raise AdapterError(
                f"bad placeholder syntax in {what} word {word!r}: {exc}; allowed: {allowed} "
                "(write {{ and }} for literal braces)"
            ) from exc
        for _, field, spec, conversion in parsed:
            if field is None:
                continue
            if field not in PLACEHOLDERS or spec or conversion:
                shown = "{" + field + (f"!{conversion}" if conversion else "")
                shown += (f":{spec}" if spec else "") + "}"
                raise AdapterError(
                    f"unknown placeholder {shown} in the {what} template {template!r}; "
                    f"allowed: {allowed}"
                )
    return words


def render(words: list[str], values: Mapping[str, str | None], what: str) -> list[str]:
    """Format each word; a placeholder with no value here (a read-only overlay has no upper)
    makes the command unusable for this overlay."""
    argv = []
    for word in words:
        for _, field, _, _ in string.Formatter().parse(word):
            if field is not None and values.get(field) is None:
                raise Unavailable(
                    f"the {what} template uses {{{field}}}, which this overlay does not have "
                    "(it is read-only: no upper or work directory)"
                )
        argv.append(word.format_map(values))
    return argv


def _run(argv: list[str], log: Path, what: str) -> tuple[int, str]:
    """Run ``argv`` with its output in ``log`` (a pipe would keep a daemonized child's
    inherited stderr open and hang us). Returns the exit status and the output."""
    with open(log, "wb") as out:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        except OSError as exc:
            raise AdapterError(f"cannot run the {what} command {shlex.join(argv)}: {exc}") from exc
        try:
            status = proc.wait(COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AdapterError(
                f"the {what} command {shlex.join(argv)} did not finish within "
                f"{COMMAND_TIMEOUT:g} s; killed it"
            ) from None
    return status, log.read_text(errors="replace").strip()


class CommandMounted(MountedDir):
    def __init__(
        self, mountpoint: Path, mount_argv: list[str], umount_argv: list[str], logdir: Path
    ) -> None:
        super().__init__(mountpoint, "command")
        self.mount_argv = mount_argv
        self.umount_argv = umount_argv
        self.logdir = logdir

    def describe_mount(self) -> dict[str, str]:
        return {
            "mount": shlex.join(self.mount_argv),
            "umount": shlex.join(self.umount_argv),
            "mountpoint": str(self.mountpoint),
        }

    def _up(self) -> None:
        status, output = _run(self.mount_argv, self.logdir / "mount.log", "mount")
        if status != 0:
            raise AdapterError(
                f"the mount command {shlex.join(self.mount_argv)} failed with "
                f"{mounting.describe_status(status)}" + mounting.format_output(output)
            )
        try:
            info = mounting.wait_for_mount(self.mountpoint, MOUNT_TIMEOUT)
        except AdapterError as exc:
            raise AdapterError(
                f"the mount command {shlex.join(self.mount_argv)} exited 0 but {exc}"
            ) from None
        self._in_effect = {
            "fstype": info.fstype,
            "source": info.source,
            **info.super_options_map(),
        }

    def _down(self) -> None:
        problem = None
        if mounting.is_mountpoint(self.mountpoint):
            try:
                status, output = _run(self.umount_argv, self.logdir / "umount.log", "umount")
            except AdapterError as exc:
                status, output = -1, str(exc)
            if status != 0:
                problem = (
                    f"the umount command {shlex.join(self.umount_argv)} failed with "
                    f"{mounting.describe_status(status)}" + mounting.format_output(output)
                )
            elif mounting.is_mountpoint(self.mountpoint):
                problem = (
                    f"the umount command {shlex.join(self.umount_argv)} exited 0 but "
                    f"{self.mountpoint} is still mounted"
                )
            # Whatever the command did, leave nothing mounted.
            mounting.force_unmount(self.mountpoint)
        self._reap_daemons()
        if problem is not None:
            raise AdapterError(problem + "; force-unmounted it (MNT_DETACH as a last resort)")

    def _reap_daemons(self) -> None:
        """A daemon serving the mount point exits by itself once unmounted; give it a moment,
        then terminate whatever still names the mount point in its command line."""
        deadline = time.monotonic() + DAEMON_EXIT_GRACE
        pids = processes_using(str(self.mountpoint))
        while pids and time.monotonic() < deadline:
            time.sleep(0.02)
            pids = processes_using(str(self.mountpoint))
        if pids:
            kill_processes(pids)


class CommandAdapter(Adapter):
    """A user-supplied mount command (``--mount-cmd``/``--umount-cmd``)."""

    name = "command"
    needs_root = True

    def mount(self, layers: LayerDirs, features: Features, scratch: Path) -> Mounted:
        mount_words = parse_template(self.options.mount_cmd, "mount_cmd")
        umount_words = parse_template(self.options.umount_cmd, "umount_cmd")
        mountpoint = Path(tempfile.mkdtemp(prefix="merged-", dir=scratch))
        values: dict[str, str | None] = {
            "lowerdir": layers.lowerdir,
            "upperdir": None if layers.upper is None else str(layers.upper),
            "workdir": None if layers.work is None else str(layers.work),
            "mountpoint": str(mountpoint),
        }
        mount_argv = render(mount_words, values, "mount_cmd")
        umount_argv = render(umount_words, values, "umount_cmd")
        logdir = Path(tempfile.mkdtemp(prefix="cmd-logs-", dir=scratch))
        mounted = CommandMounted(mountpoint, mount_argv, umount_argv, logdir)
        mounted.start()
        return mounted

    def version(self) -> str:
        return f"mount command: {self.options.mount_cmd or '(none)'}"
