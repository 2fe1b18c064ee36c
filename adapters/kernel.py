"""The kernel's own overlay, mounted with mount(2).

Every semantic option is passed explicitly (``Features.mount_options``) and read back from
/proc/self/mountinfo after the mount: the kernel prints an option only when it differs from
the module default, and may imply or ignore one (metacopy=on implies redirect_dir=on;
nfs_export=on implies index=on; xino=on "is useless with all layers on same fs" and is
dropped). A printed value that differs from the requested one fails the mount; an option
the kernel does not print is recorded as "not reported".

What Linux 6.18 prints in mountinfo (module parameters redirect_dir=N,
redirect_always_follow=Y, index=N, metacopy=N, xino_auto=N, nfs_export=N):

- redirect_dir: ``on`` and ``nofollow`` are printed; ``follow`` is the module default and is
  not; ``off`` resolves to ``follow`` here (redirect_always_follow=Y) and is not printed.
- index, metacopy, nfs_export: ``=on`` printed, ``off`` not. nfs_export=on also prints index=on;
  metacopy=on also prints redirect_dir=on. index=on without an upper is ignored (not printed).
- xino: ``on``/``auto`` printed only when the layers span several filesystems; with all layers
  on one filesystem it is dropped. ``off`` is not printed.
- userxattr: printed as the flag ``userxattr`` when set.
- always: ``rw``/``ro`` first; ``uuid=on`` on read-write mounts.
"""

from __future__ import annotations

import functools
import os
import shlex
import tempfile
from pathlib import Path

from adapters import mounting
from adapters.base import Adapter, AdapterError, LayerDirs, Mounted, Unavailable, is_root
from adapters.mounting import MountedDir, MountError, check_layer_path
from model.features import Features

NOT_REPORTED = "not reported"
MODULE_PARAMETERS = Path("/sys/module/overlay/parameters")
FILESYSTEMS = Path("/proc/filesystems")


def requested_options(features: Features) -> dict[str, str]:
    """The semantic options asked for, as the kernel would print each one."""
    onoff = {True: "on", False: "off"}
    return {
        "redirect_dir": features.redirect_dir,
        "index": onoff[features.index],
        "metacopy": onoff[features.metacopy],
        "xino": features.xino,
        "nfs_export": onoff[features.nfs_export],
        "userxattr": onoff[features.userxattr],
    }


def options_in_effect(
    requested: dict[str, str], printed: dict[str, str]
) -> tuple[dict[str, str], list[str]]:
    """Everything the kernel printed, plus each requested semantic option: its printed value
    or NOT_REPORTED. Also the mismatches between requested and printed values."""
    effect = dict(printed)
    mismatches: list[str] = []
    for key, want in requested.items():
        if key == "userxattr":
            # A flag: the kernel prints it whenever it is set, so absence means off.
            got = "on" if "userxattr" in printed else "off"
            effect[key] = got
        elif key in printed:
            got = printed[key]
        else:
            effect[key] = NOT_REPORTED
            continue
        if got != want:
            mismatches.append(f"{key}: requested {want}, in effect {got}")
    return effect, mismatches


def mount_data(layers: LayerDirs, features: Features) -> str:
    """The mount(2) data string: the layers, then every semantic option."""
    if not layers.lowers:
        raise AdapterError("an overlay needs at least one lower layer")
    opts = ["lowerdir=" + ":".join(check_layer_path(p, "lower layer") for p in layers.lowers)]
    if (layers.upper is None) != (layers.work is None):
        raise AdapterError("upper and work directories come together (both or neither)")
    if layers.upper is not None and layers.work is not None:
        opts.append("upperdir=" + check_layer_path(layers.upper, "upper layer"))
        opts.append("workdir=" + check_layer_path(layers.work, "work"))
    opts.extend(features.mount_options())
    return ",".join(opts)


def module_defaults() -> dict[str, str]:
    """The overlay module's parameters (what an unprinted option falls back to), for reports."""
    try:
        return {p.name: p.read_text().strip() for p in sorted(MODULE_PARAMETERS.iterdir())}
    except OSError:
        return {}


def _uptime() -> float:
    try:
        return float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def explain_mount_error(exc: MountError, since: float) -> str:
    """The error, with the kernel's own explanation from its log when there is one."""
    lines = mounting.kernel_log_tail(("overlay",), since=since)
    if not lines:
        return str(exc)
    return f"{exc}\nkernel log:\n" + "\n".join(f"  {line}" for line in lines)


class KernelMounted(MountedDir):
    """A kernel overlay on a mount point in the scratch area."""

    def __init__(self, mountpoint: Path, data: str, features: Features) -> None:
        super().__init__(mountpoint, "kernel")
        self.data = data
        self.features = features

    def _up(self) -> None:
        since = _uptime()
        try:
            mounting.mount("overlay", self.mountpoint, "overlay", 0, self.data)
        except MountError as exc:
            raise AdapterError(explain_mount_error(exc, since)) from exc
        printed = mounting.super_options(self.mountpoint)
        effect, mismatches = options_in_effect(requested_options(self.features), printed)
        self._in_effect = effect
        if mismatches:
            mounting.force_unmount(self.mountpoint)
            raise AdapterError(
                "the kernel overlay is not running with the options requested: "
                + "; ".join(mismatches)
                + f" (mountinfo: {','.join(f'{k}={v}' if v else k for k, v in printed.items())})"
            )

    def describe_mount(self) -> dict[str, str]:
        point = str(self.mountpoint)
        return {
            "mount": shlex.join(["mount", "-t", "overlay", "overlay", "-o", self.data, point]),
            "umount": shlex.join(["umount", point]),
            "mountpoint": point,
        }

    def _down(self) -> None:
        mounting.force_unmount(self.mountpoint)


class KernelAdapter(Adapter):
    """The kernel's overlay filesystem: the implementation the model describes."""

    name = "kernel"
    needs_root = True

    @classmethod
    def unavailable(cls) -> str | None:
        return _probe()

    def mount(self, layers: LayerDirs, features: Features, scratch: Path) -> Mounted:
        reason = self.unavailable()
        if reason is not None:
            raise Unavailable(reason)
        data = mount_data(layers, features)
        mountpoint = Path(tempfile.mkdtemp(prefix="merged-", dir=scratch))
        mounted = KernelMounted(mountpoint, data, features)
        mounted.start()
        return mounted

    def version(self) -> str:
        return f"Linux {os.uname().release}"


@functools.cache
def _probe() -> str | None:
    """Why a kernel overlay cannot be mounted here, found by trying once (cached)."""
    if not is_root():
        return f"needs root: mount(2) needs CAP_SYS_ADMIN (running as uid {os.geteuid()})"
    try:
        filesystems = FILESYSTEMS.read_text().split()
    except OSError as exc:
        return f"cannot read {FILESYSTEMS}: {exc}"
    if "overlay" not in filesystems:
        return "the kernel has no overlay filesystem ('overlay' is not in /proc/filesystems)"
    from adapters.scratch import Scratch

    try:
        with Scratch() as scratch:
            a, b, m = scratch.subdir("a"), scratch.subdir("b"), scratch.subdir("m")
            mounting.mount("overlay", m, "overlay", 0, f"lowerdir={a}:{b}")
            mounting.force_unmount(m)
    except MountError as exc:
        return f"no mount permission: {exc}"
    except (AdapterError, OSError) as exc:
        return f"cannot set up a probe mount: {exc}"
    return None
