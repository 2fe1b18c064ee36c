"""Standalone reproducers: a bash script that rebuilds the exact layer stack, mounts it, runs
the steps printing each outcome next to the model's, shows the difference, and always cleans up.

The layers are described from what is on disk right after the suite wrote them (``snapshot``),
not from the model, so the script rebuilds exactly what the implementation was mounted on: the
overlay's own xattrs and whiteout encodings included, whatever ``adapters.layout`` chose.
Steps run in an embedded ``python3`` program (stdlib only) because the shell cannot express
renameat2 flags, nanosecond times or xattr flags.
"""

from __future__ import annotations

import os
import shlex
import stat as S
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from model import ops
from model.features import Features
from model.ops import Op, Outcome, StatResult

# --- on-disk snapshot ---------------------------------------------------------------------


@dataclass(frozen=True)
class DiskEntry:
    rel: str  # relative to the layer root; "" is the root
    kind: str  # file, dir, symlink, fifo, chr, other
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    data: bytes = b""
    target: str = ""
    rdev: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()
    link_to: str | None = None  # an earlier entry of the same inode (hard link)


@dataclass(frozen=True)
class LayerSnapshot:
    role: str  # "lower0" (top lower), "lower1", ..., "upper"
    path: str  # where it was on disk (to rewrite mount command lines)
    entries: tuple[DiskEntry, ...]


_KIND = {S.S_IFREG: "file", S.S_IFDIR: "dir", S.S_IFLNK: "symlink", S.S_IFIFO: "fifo",
         S.S_IFCHR: "chr"}  # fmt: skip


def snapshot(role: str, root: Path) -> LayerSnapshot:
    """Describe a layer directory completely (it is small), without following symlinks."""
    entries: list[DiskEntry] = []
    seen: dict[tuple[int, int], str] = {}
    pending = [""]
    while pending:
        rel = pending.pop(0)
        full = os.path.join(root, rel) if rel else os.fspath(root)
        st = os.lstat(full)
        kind = _KIND.get(S.S_IFMT(st.st_mode), "other")
        try:
            keys = sorted(os.listxattr(full, follow_symlinks=False))
        except OSError:
            keys = []
        xattrs = tuple((k, os.getxattr(full, k, follow_symlinks=False)) for k in keys)
        ident = (st.st_dev, st.st_ino)
        link_to = seen.get(ident) if kind != "dir" else None
        if link_to is None:
            seen[ident] = rel
        entries.append(
            DiskEntry(
                rel=rel,
                kind=kind,
                mode=S.S_IMODE(st.st_mode),
                uid=st.st_uid,
                gid=st.st_gid,
                mtime_ns=st.st_mtime_ns,
                data=_read(full) if kind == "file" and link_to is None else b"",
                target=os.readlink(full) if kind == "symlink" else "",
                rdev=st.st_rdev if kind == "chr" else 0,
                xattrs=xattrs,
                link_to=link_to,
            )
        )
        if kind == "dir":
            pending.extend(f"{rel}/{n}" if rel else n for n in sorted(os.listdir(full)))
    return LayerSnapshot(role, os.fspath(root), tuple(entries))


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


# --- the script ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StepRecord:
    """One step as it ran: the model's outcome and the implementation's."""

    index: int  # 1-based
    op: Op
    expected: Outcome
    observed: Outcome
    rules: tuple[str, ...] = ()


@dataclass(frozen=True)
class MountSpec:
    """How to bring the implementation up again, with real paths (rewritten by the script)."""

    mount: str
    umount: str
    mountpoint: str
    scratch: str | None = None  # the adapter's private dir, to be recreated by the script


@dataclass
class ReproducerInput:
    title: str
    adapter: str
    features: Features
    layers: Sequence[LayerSnapshot]  # lowers (top first), then the upper if any
    work: str | None  # the workdir path used (recreated empty)
    steps: Sequence[StepRecord]
    differences: Sequence[str]  # readable messages
    paths_to_show: Sequence[str] = ()  # merged paths whose final state the script prints
    mount: MountSpec | None = None  # None: the kernel's overlay with the declared features
    notes: Sequence[str] = field(default_factory=list)


def _octal_printf(data: bytes) -> str:
    """A printf format producing exactly ``data`` (octal escapes for everything but [A-Za-z0-9])."""
    return "".join(chr(b) if chr(b).isalnum() and b < 128 else f"\\{b:03o}" for b in data)


def _layer_commands(layer: LayerSnapshot, var: str) -> list[str]:
    lines = [f"# --- {layer.role} ---"]

    def q(rel: str) -> str:
        return f'"${var}"' + (shlex.quote("/" + rel) if rel else "")

    for e in layer.entries:
        p = q(e.rel)
        if e.rel == "":
            lines.append(f"mkdir -p {p}")
        elif e.link_to is not None:
            lines.append(f"ln {q(e.link_to)} {p}")
            continue  # same inode: attributes already set through the first name
        elif e.kind == "dir":
            lines.append(f"mkdir {p}")
        elif e.kind == "file":
            lines.append(f"printf '{_octal_printf(e.data)}' > {p}")
        elif e.kind == "symlink":
            lines.append(f"ln -s {shlex.quote(e.target)} {p}")
        elif e.kind == "fifo":
            lines.append(f"mkfifo {p}")
        elif e.kind == "chr":
            lines.append(f"mknod {p} c {os.major(e.rdev)} {os.minor(e.rdev)}")
        else:
            lines.append(f"# {e.rel}: unsupported file type, skipped")
            continue
        lines.append(f"chown -h {e.uid}:{e.gid} {p}")
        if e.kind != "symlink":
            lines.append(f"chmod {e.mode:04o} {p}")
        for key, value in e.xattrs:
            lines.append(f"xset {p} {shlex.quote(key)} {value.hex() or '-'}")
    # Times last, deepest first, so creating children does not disturb a parent's mtime.
    for e in sorted(layer.entries, key=lambda e: e.rel.count("/") + (e.rel != ""), reverse=True):
        if e.link_to is None:
            sec, nsec = divmod(e.mtime_ns, 1_000_000_000)
            lines.append(f"touch -h -d @{sec}.{nsec:09d} {q(e.rel)}")
    return lines


def _rewrite(text: str, replacements: Mapping[str, str]) -> str:
    # Longest first, so a layer path inside the scratch path is rewritten as the layer.
    for old in sorted(replacements, key=len, reverse=True):
        text = text.replace(old, replacements[old])
    return text


_PY_HELPERS = r"""
import ctypes, errno, os, stat, sys
M = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
KINDS = {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
         stat.S_IFIFO: "fifo", stat.S_IFCHR: "chr"}
class S(frozenset):  # a set that prints sorted
    def __repr__(self): return "{" + ", ".join(map(repr, sorted(self))) + "}" if self else "set()"
def P(p): return f"{M}/{p}" if p else M
def st(s):
    k = KINDS.get(stat.S_IFMT(s.st_mode), "?")
    return dict(kind=k, mode=oct(stat.S_IMODE(s.st_mode)), uid=s.st_uid, gid=s.st_gid,
                size=None if k == "dir" else s.st_size, nlink=s.st_nlink, ino=s.st_ino,
                mtime=s.st_mtime_ns)
NB = os.O_NONBLOCK | os.O_CLOEXEC  # as the suite: opening a fifo must never block
def read(p):
    fd = os.open(P(p), os.O_RDONLY | NB)
    try:
        out = b""
        while chunk := os.read(fd, 65536): out += chunk
        return out
    finally: os.close(fd)
def openclose(p, flags, mode):
    os.close(os.open(P(p), flags | NB, mode))
def write(p, data, off):
    fd = os.open(P(p), os.O_WRONLY | NB)
    try: os.pwrite(fd, data, off)
    finally: os.close(fd)
def renameat2(a, b, flags):
    if flags == 0: return os.rename(P(a), P(b))
    if libc.renameat2(-100, os.fsencode(P(a)), -100, os.fsencode(P(b)), flags) != 0:
        e = ctypes.get_errno(); raise OSError(e, os.strerror(e))
def step(n, text, expected, fn):
    # expected: an errno name, "ok", a value, or a dict of the stat fields the model predicts
    try:
        v = fn()
        got = "ok" if v is None else (st(v) if isinstance(v, os.stat_result) else v)
    except OSError as e:
        got = errno.errorcode.get(e.errno, str(e.errno))
    if isinstance(expected, dict) and isinstance(got, dict):
        same = all(got[k] == w for k, w in expected.items())
    else:
        same = got == expected
    print(f"{'  ' if same else '!!'} step {n}: {text}\n     expected: {expected!r}"
          f"\n     observed: {got!r}")
def show(p):
    try: s = os.lstat(P(p))
    except OSError as e:
        print(f"   {p!r}: {errno.errorcode.get(e.errno)}"); return
    extra = ""
    if stat.S_ISREG(s.st_mode): extra = f" data={read(p)!r}"
    if stat.S_ISLNK(s.st_mode): extra = f" target={os.readlink(P(p))!r}"
    if stat.S_ISDIR(s.st_mode): extra = f" entries={sorted(os.listdir(P(p)))}"
    try:
        xs = {k: os.getxattr(P(p), k, follow_symlinks=False)
              for k in os.listxattr(P(p), follow_symlinks=False)}
    except OSError: xs = "?"
    print(f"   {p!r}: {st(s)}{extra} xattrs={xs}")
def walk(p=""):
    show(p)
    try:
        if stat.S_ISDIR(os.lstat(P(p)).st_mode):
            for n in sorted(os.listdir(P(p))): walk(f"{p}/{n}" if p else n)
    except OSError: pass
"""


def _expected_literal(outcome: Outcome) -> str:
    """The model's outcome as a python3 literal the script compares with what it observes.

    A StatResult becomes a dict of the fields the model predicts: not ``ino`` (the model's own
    numbering) and not the ``None`` (unpredicted) ones."""
    import errno as E

    if outcome.errno:
        return repr(E.errorcode.get(outcome.errno, str(outcome.errno)))
    v = outcome.value
    if v is None:
        return "'ok'"
    if isinstance(v, StatResult):
        fields = {
            "kind": v.kind, "mode": oct(v.mode), "uid": v.uid, "gid": v.gid,
            "size": v.size, "nlink": v.nlink, "mtime": v.mtime,
        }  # fmt: skip
        return repr({k: x for k, x in fields.items() if x is not None})
    if isinstance(v, frozenset):
        return f"S({sorted(v)!r})"
    return repr(v)


def _call(op: Op) -> str:
    """The python3 expression performing ``op`` below mount point M."""
    r = repr
    match op:
        case ops.Stat(path):
            return f"os.stat(P({r(path)}))"
        case ops.Lstat(path):
            return f"os.lstat(P({r(path)}))"
        case ops.Read(path):
            return f"read({r(path)})"
        case ops.Readlink(path):
            return f"os.readlink(P({r(path)}))"
        case ops.Readdir(path):
            return f"S(os.listdir(P({r(path)})))"
        case ops.GetXattr(path, key):
            return f"os.getxattr(P({r(path)}), {r(key)})"
        case ops.ListXattr(path):
            return f"S(os.listxattr(P({r(path)})))"
        case ops.Open(path, flags, mode):
            flag_expr = " | ".join(f"os.{f}" for f in flags) or "0"
            return f"openclose({r(path)}, {flag_expr}, {oct(mode)})"
        case ops.Write(path, data, offset):
            return f"write({r(path)}, {r(data)}, {offset})"
        case ops.Truncate(path, length):
            return f"os.truncate(P({r(path)}), {length})"
        case ops.Chmod(path, mode):
            return f"os.chmod(P({r(path)}), {oct(mode)})"
        case ops.Chown(path, uid, gid, follow):
            return f"os.chown(P({r(path)}), {uid}, {gid}, follow_symlinks={follow})"
        case ops.Utimes(path, mtime):
            return f"os.utime(P({r(path)}), ns=({mtime}, {mtime}))"
        case ops.SetXattr(path, key, value, flags):
            flag = f"os.{flags}" if flags else "0"
            return f"os.setxattr(P({r(path)}), {r(key)}, {r(value)}, {flag})"
        case ops.RemoveXattr(path, key):
            return f"os.removexattr(P({r(path)}), {r(key)})"
        case ops.Mkdir(path, mode):
            return f"os.mkdir(P({r(path)}), {oct(mode)})"
        case ops.Rmdir(path):
            return f"os.rmdir(P({r(path)}))"
        case ops.Unlink(path):
            return f"os.unlink(P({r(path)}))"
        case ops.Symlink(target, path):
            return f"os.symlink({r(target)}, P({r(path)}))"
        case ops.Link(src, dst):
            return f"os.link(P({r(src)}), P({r(dst)}), follow_symlinks=False)"
        case ops.Mknod(path, kind, mode, rdev):
            kind_bits = "stat.S_IFCHR" if kind == "chr" else "stat.S_IFIFO"
            return f"os.mknod(P({r(path)}), {kind_bits} | {oct(mode)}, {rdev})"
        case ops.Rename(src, dst, flags):
            bits = {"": 0, "RENAME_NOREPLACE": 1, "RENAME_EXCHANGE": 2, "RENAME_WHITEOUT": 4}
            return f"renameat2({r(src)}, {r(dst)}, {bits[flags]})"
    raise TypeError(f"no reproducer form for {op}")


def _python_block(steps: Sequence[StepRecord]) -> list[str]:
    lines = ["python3 - \"$M\" <<'PYEOF'", _PY_HELPERS.strip()]
    for s in steps:
        text = str(s.op)
        rules = f"  [{', '.join(s.rules)}]" if s.rules else ""
        lines.append(
            f"step({s.index}, {text + rules!r}, {_expected_literal(s.expected)}, "
            f"lambda: {_call(s.op)})"
        )
    lines.append("PYEOF")
    return lines


def render(inp: ReproducerInput) -> str:
    """The whole script, as text."""
    roles = {layer.role: f"T/{layer.role}" for layer in inp.layers}
    replacements = {layer.path: f"$T/{layer.role}" for layer in inp.layers}
    if inp.work is not None:
        replacements[inp.work] = "$T/work"
    lowers = [layer for layer in inp.layers if layer.role.startswith("lower")]
    upper = next((layer for layer in inp.layers if layer.role == "upper"), None)
    if inp.mount is not None:
        if inp.mount.scratch is not None:
            replacements[inp.mount.scratch] = "$T/adapter"
        mount_cmd = _rewrite(inp.mount.mount, replacements)
        umount_cmd = _rewrite(inp.mount.umount, replacements)
        mountpoint = _rewrite(inp.mount.mountpoint, replacements)
        how = f"the {inp.adapter} adapter's own mount command"
    else:
        opts = ["lowerdir=" + ":".join(f"$T/{x.role}" for x in lowers)]
        if upper is not None:
            opts += ["upperdir=$T/upper", "workdir=$T/work"]
        opts += inp.features.mount_options()
        mountpoint = "$T/merged"
        mount_cmd = f'mount -t overlay overlay -o "{",".join(opts)}" "$M"'
        umount_cmd = 'umount "$M"'
        how = (
            f"the kernel's overlay with the declared features (the {inp.adapter} adapter "
            "gave no mount command line)"
        )
    out = [
        "#!/bin/bash",
        f"# Reproducer: {inp.title}",
        f"# Adapter: {inp.adapter}; features: {inp.features.describe()}",
        f"# Mounted with {how}.",
        "# Run as root. Builds the layer stack in a temporary directory, mounts it, runs the",
        "# steps printing each outcome next to the model's ('!!' marks a difference), shows the",
        "# final state of the paths involved, and always unmounts and removes its directory.",
        *[f"# {n}" for n in inp.notes],
        "#",
        "# Differences found:",
        *[f"#   {d}" for d in inp.differences],
        "set -euo pipefail",
        "umask 0  # the model applies no umask: modes are exactly as passed",
        'T="$(mktemp -d /tmp/overlay-repro.XXXXXX)"',
        f'M="{mountpoint}"',
        "MOUNTED=0",
        "cleanup() {",
        '    if [ "$MOUNTED" = 1 ]; then',
        f'        {umount_cmd} || umount -l "$M" || true',
        "    fi",
        '    if mountpoint -q "$M" 2>/dev/null; then',
        '        echo "still mounted: $M; leaving $T in place" >&2',
        "        return",
        "    fi",
        '    rm -rf "$T"',
        "}",
        "trap cleanup EXIT INT TERM",
        "xset() {  # path key hex-value ('-' for empty): setfattr may be missing, python3 is not",
        "    python3 -c 'import os,sys; os.setxattr(sys.argv[1], sys.argv[2], "
        'bytes.fromhex("" if sys.argv[3] == "-" else sys.argv[3]), follow_symlinks=False)\''
        ' "$@"',
        "}",
    ]
    for layer in inp.layers:
        out.append(f'{layer.role.upper()}="$T/{layer.role}"')
        out.extend(_layer_commands(layer, layer.role.upper()))
    del roles
    if inp.work is not None or upper is not None:
        out.append('mkdir -p "$T/work"')
    if inp.mount is not None and inp.mount.scratch is not None:
        out.append('mkdir -p "$T/adapter"')
    out += [
        'mkdir -p "$M"',
        "mount_it() {",
        f"    {mount_cmd}",
        "    MOUNTED=1",
        "}",
        "umount_it() {",
        f"    {umount_cmd}",
        "    MOUNTED=0",
        "}",
        "mount_it",
        'echo "mounted at $M"',
    ]
    segment: list[StepRecord] = []
    for s in inp.steps:
        if isinstance(s.op, ops.Remount):
            if segment:
                out += _python_block(segment)
                segment = []
            out += [f'echo "   step {s.index}: remount()"', "umount_it", "mount_it"]
        else:
            segment.append(s)
    if segment:
        out += _python_block(segment)
    out += ["python3 - \"$M\" <<'PYEOF'", _PY_HELPERS.strip()]
    if inp.paths_to_show:
        out.append('print("final state of the paths that differ:")')
        out += [f"show({p!r})" for p in inp.paths_to_show]
    out += ['print("the whole merged view now:")', "walk()", "PYEOF"]
    out += ['echo "differences the suite found (model vs implementation):"']
    out += [f"echo {shlex.quote('  ' + d)}" for d in inp.differences]
    return "\n".join(out) + "\n"


def write(inp: ReproducerInput, directory: Path, name: str) -> Path:
    """Write the script as ``<directory>/<name>.sh`` (executable) and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:120]
    path = directory / f"{safe}.sh"
    path.write_text(render(inp))
    path.chmod(0o755)
    return path
