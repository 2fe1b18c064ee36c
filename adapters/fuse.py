"""fuse-overlayfs, run in the foreground under our own Popen so that we own and reap its pid.

fuse-overlayfs 1.10 knows only ``lowerdir``, ``upperdir``, ``workdir`` and
``redirect_dir=off`` of the kernel's semantic options; it ignores the others with a warning
("unknown argument ignored"). So only what it implements is passed, and a requested feature it
does not implement makes the adapter Unavailable for that mount instead of pretending.
"""

from __future__ import annotations

import contextlib
import errno as E
import functools
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from adapters import mounting, scratch
from adapters.base import Adapter, AdapterError, LayerDirs, Mounted, Unavailable, is_root
from adapters.mounting import MountedDir, check_layer_path
from model.features import Features
from model.ops import Op, Outcome

BINARY = "fuse-overlayfs"
FUSERMOUNT = "fusermount3"
MOUNT_TIMEOUT = 10.0
EXIT_GRACE = 5.0


def fuse_options(layers: LayerDirs, features: Features) -> str:
    """The ``-o`` string for fuse-overlayfs, or Unavailable naming what it cannot honour."""
    missing = []
    # fuse-overlayfs never creates or follows redirects: that is the kernel's nofollow, and
    # its own "off" (the only value it accepts; it refuses the others at startup).
    if features.redirect_dir not in ("nofollow", "off"):
        missing.append(f"redirect_dir={features.redirect_dir} (it supports only redirect_dir=off)")
    if features.index:
        missing.append("index=on (it has no inode index)")
    if features.metacopy:
        missing.append("metacopy=on (it has no metadata-only copy-up)")
    if features.xino != "off":
        missing.append(f"xino={features.xino} (it has no xino option)")
    if features.nfs_export:
        missing.append("nfs_export=on")
    if features.userxattr:
        missing.append("userxattr (run as root it always uses trusted.overlay.* xattrs)")
    if missing:
        raise Unavailable("fuse-overlayfs does not implement " + "; ".join(missing))
    if not layers.lowers:
        raise AdapterError("an overlay needs at least one lower layer")
    opts = ["lowerdir=" + ":".join(check_layer_path(p, "lower layer") for p in layers.lowers)]
    if layers.upper is not None and layers.work is not None:
        opts.append("upperdir=" + check_layer_path(layers.upper, "upper layer"))
        opts.append("workdir=" + check_layer_path(layers.work, "work"))
    opts.append("redirect_dir=off")
    return ",".join(opts)


class FuseMounted(MountedDir):
    """One fuse-overlayfs daemon (foreground, our child) serving one mount point."""

    def __init__(self, mountpoint: Path, argv: list[str], log: Path) -> None:
        super().__init__(mountpoint, "fuse-overlayfs")
        self.argv = argv
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.notes: list[str] = []  # what teardown had to force, for diagnostics

    def describe_mount(self) -> dict[str, str]:
        # By hand the daemon may detach itself: the same command line without -f.
        point = str(self.mountpoint)
        return {
            "mount": shlex.join([a for a in self.argv if a != "-f"]),
            "umount": shlex.join(["fusermount3", "-u", point]),
            "mountpoint": point,
        }

    def _up(self) -> None:
        self.log.write_bytes(b"")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,  # a terminal's Ctrl-C reaches us, and we unmount it
            )
        scratch.register_orphan(self.proc)
        info = mounting.wait_for_mount(
            self.mountpoint,
            MOUNT_TIMEOUT,
            self.proc,
            log=self.log,
            fstype_prefix="fuse",
            what=BINARY,
        )
        self._in_effect = {"argv": " ".join(self.argv), **info.super_options_map()}

    def _down(self) -> None:
        if mounting.is_mountpoint(self.mountpoint):
            try:
                done = subprocess.run(
                    [FUSERMOUNT, "-u", str(self.mountpoint)],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    check=False,
                    timeout=MOUNT_TIMEOUT,
                )
                if done.returncode != 0:
                    self.notes.append(done.stderr.decode(errors="replace").strip())
            except (OSError, subprocess.TimeoutExpired) as exc:
                self.notes.append(f"{FUSERMOUNT} -u failed: {exc}")
            # umount2 as the fallback: whatever fusermount3 did, nothing stays mounted.
            self.notes.extend(mounting.force_unmount(self.mountpoint))
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                proc.wait(EXIT_GRACE)  # it exits by itself once unmounted
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            scratch.unregister_orphan(proc)

    def _check_alive(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is None:
            return
        status = mounting.describe_status(proc.returncode)
        output = mounting.read_output(None, self.log)
        self.close()  # nothing left behind: the dead mount is unmounted
        raise AdapterError(
            f"fuse-overlayfs exited with {status} during the run" + mounting.format_output(output)
        )

    def perform(self, op: Op) -> Outcome:
        outcome = super().perform(op)
        if outcome.errno == E.ENOTCONN and self.proc is not None:
            # The daemon may be dying: give it a moment to become a zombie we can see.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(1.0)
            self._check_alive()
        return outcome


class FuseAdapter(Adapter):
    """fuse-overlayfs (containers/fuse-overlayfs), a FUSE implementation of overlay."""

    name = "fuse"
    needs_root = True

    @classmethod
    def unavailable(cls) -> str | None:
        if shutil.which(BINARY) is None:
            return f"{BINARY} not found on PATH (install package fuse-overlayfs)"
        if not os.path.exists("/dev/fuse"):
            return "no /dev/fuse (load the fuse module, or give the container the device)"
        if shutil.which(FUSERMOUNT) is None:
            return f"{FUSERMOUNT} not found on PATH (install package fuse3)"
        if not is_root():
            return (
                "needs root: the layers use trusted.overlay.* xattrs and char 0/0 whiteouts, "
                "which fuse-overlayfs reads only when run as root"
            )
        return None

    def mount(self, layers: LayerDirs, features: Features, scratch: Path) -> Mounted:
        reason = self.unavailable()
        if reason is not None:
            raise Unavailable(reason)
        opts = fuse_options(layers, features)
        binary = shutil.which(BINARY) or BINARY
        mountpoint = Path(tempfile.mkdtemp(prefix="merged-", dir=scratch))
        log = mountpoint.with_name(mountpoint.name + ".log")
        mounted = FuseMounted(mountpoint, [binary, "-f", "-o", opts, str(mountpoint)], log)
        mounted.start()
        return mounted

    def version(self) -> str:
        return _version()


@functools.cache
def _version() -> str:
    try:
        done = subprocess.run([BINARY, "--version"], capture_output=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    lines = done.stdout.decode(errors="replace").splitlines()
    version = next((ln.split("version", 1)[1].strip() for ln in lines if "overlayfs" in ln), "")
    library = next((ln.split("version", 1)[1].strip() for ln in lines if "library" in ln), "")
    if not version:
        return "unknown"
    return f"fuse-overlayfs {version}" + (f" (FUSE library {library})" if library else "")
