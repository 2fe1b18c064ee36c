"""The pure-Python overlay against the real kernel overlay: the same layers, the same calls.

- ``test_agrees_with_kernel``: Hypothesis builds a random small layer stack twice (identical
  copies), runs one random operation sequence through a kernel mount of one copy and through
  ``OverlayFS`` on the other, and requires the same outcome at every step and the same merged
  view at the end. Raw inode numbers and fresh timestamps differ between copies, so they are
  compared as labels: the layer object an inode number belongs to, which names share one, and
  whether an mtime is one we set or a fresh one.
- ``test_kernel_reads_our_upper`` / ``test_we_read_kernel_upper``: one implementation writes an
  upper, the other reads the same directories, and the views must be identical.

Needs root and a kernel overlay (``adapters.kernel.KernelAdapter``). Example counts:
``PYO_EXAMPLES`` (default 60); ``PYO_FEATURES=userxattr`` for the user.overlay.* variant.
"""

from __future__ import annotations

import errno as E
import os
import shutil
import stat as S
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from adapters.base import LayerDirs, Mounted
from adapters.kernel import KernelAdapter
from adapters.pyoverlay.adapter import PythonMounted
from model import ops
from model.features import Features
from model.ops import Node, Op, Outcome, StatResult

_REASON = KernelAdapter.unavailable()
pytestmark = [
    pytest.mark.root,
    pytest.mark.kernel,
    pytest.mark.skipif(_REASON is not None, reason=str(_REASON)),
]

EXAMPLES = int(os.environ.get("PYO_EXAMPLES", "60"))
T0 = 1_600_000_000_000_000_000  # distinctive mtimes for everything the stack builder makes
NAMES = ("a", "b", "c")
# PYO_FEATURES=userxattr runs everything with user.overlay.* xattrs instead.
FEATURES = Features.parse(os.environ.get("PYO_FEATURES", ""))
P = FEATURES.xattr_prefix

# --- layer stacks as data -------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    kind: str  # file, dir, opaque, symlink, whiteout, xwhiteout, hardlink
    data: str = ""  # file data, symlink target, or the hard link's source path
    mode: int = 0o644
    xattr: bool = False


Layer = dict[str, Entry]  # path → entry; parents always present as dirs


_KINDS = ["file"] * 6 + ["symlink", "whiteout", "whiteout", "dir", "dir", "opaque"]
# xattr whiteouts only below: in an upper the kernel's readdir does not always filter them.
_LOWER_KINDS = [*_KINDS, "xwhiteout"]


@st.composite
def _entry(draw: st.DrawFn, lower: bool) -> Entry:
    kind = draw(st.sampled_from(_LOWER_KINDS if lower else _KINDS))
    if kind == "file":
        return Entry(
            "file",
            draw(st.sampled_from(["", "x", "data"])),
            draw(st.sampled_from([0o644, 0o600, 0o755])),
            draw(st.booleans()),
        )
    if kind == "symlink":
        return Entry("symlink", draw(st.sampled_from(_LINK_TARGETS)))
    if kind in ("whiteout", "xwhiteout"):
        return Entry(kind)
    return Entry(kind, mode=draw(st.sampled_from([0o755, 0o700])), xattr=draw(st.booleans()))


def _children(depth: int, lower: bool) -> st.SearchStrategy[dict[str, Entry]]:
    return st.dictionaries(st.sampled_from(NAMES), _entry(lower), min_size=1 - depth, max_size=3)


_LINK_TARGETS = ["a", "b", "a/b", "c/a", "b/", "nothing", "./b", ".", "c"]


@st.composite
def layers(draw: st.DrawFn, upper: bool = False) -> Layer:
    layer: Layer = {}
    top = draw(_children(0, not upper))
    for name, entry in top.items():
        layer[name] = entry
        if entry.kind in ("dir", "opaque"):
            for child, centry in draw(_children(1, not upper)).items():
                layer[f"{name}/{child}"] = centry
    files = [p for p, e in layer.items() if e.kind == "file"]
    add_link: bool = draw(st.booleans())
    if files and add_link:
        name = draw(st.sampled_from(NAMES))
        parent = draw(st.sampled_from(["", *[p for p, e in layer.items() if e.kind == "dir"]]))
        path = f"{parent}/{name}" if parent else name
        if path not in layer:
            layer[path] = Entry("hardlink", draw(st.sampled_from(files)))
    return layer


@st.composite
def stacks(draw: st.DrawFn) -> tuple[list[Layer], Layer | None]:
    lowers = draw(st.lists(layers(), min_size=1, max_size=3))
    upper = draw(st.one_of(st.just({}), layers(upper=True))) if draw(st.booleans()) else {}
    if draw(st.integers(0, 9)) == 0:  # read-only: the kernel wants two lowers at least then
        return [*lowers, {}] if len(lowers) < 2 else lowers, None
    return lowers, upper


def _build_order(item: tuple[str, Entry]) -> tuple[bool, int]:
    return item[1].kind == "hardlink", item[0].count("/")


def build_layer(layer: Layer, root: Path, stamp: int) -> None:
    prefix = FEATURES.xattr_prefix
    root.mkdir(parents=True)
    dirs = [root]
    for i, (path, entry) in enumerate(sorted(layer.items(), key=_build_order)):
        real = root / path
        t = stamp + i * 1000
        if entry.kind in ("dir", "opaque"):
            real.mkdir()
            os.chmod(real, entry.mode)
            if entry.kind == "opaque":
                os.setxattr(real, prefix + "opaque", b"y")
            dirs.append(real)
        elif entry.kind == "file":
            real.write_text(entry.data)
            os.chmod(real, entry.mode)
        elif entry.kind == "symlink":
            os.symlink(entry.data, real)
        elif entry.kind == "whiteout":
            os.mknod(real, S.S_IFCHR, 0)
        elif entry.kind == "xwhiteout":
            real.touch()
            os.setxattr(real, prefix + "whiteout", b"")
            if layer.get(os.path.dirname(path), Entry("dir")).kind != "opaque":
                os.setxattr(real.parent, prefix + "opaque", b"x")
        elif entry.kind == "hardlink":
            os.link(root / entry.data, real)
            continue
        if entry.xattr and entry.kind in ("dir", "file"):
            os.setxattr(real, "user.x", path.encode())
        os.utime(real, ns=(t, t), follow_symlinks=False)
    for i, d in enumerate(reversed(dirs)):  # parents last: creating children moved their mtime
        os.utime(d, ns=(stamp + 500 + i, stamp + 500 + i))


@dataclass
class Built:
    base: Path
    layers: LayerDirs
    labels: dict[int, str]  # inode number of every object the builder made → layer:path


def build_stack(base: Path, lowers: list[Layer], upper: Layer | None) -> Built:
    paths = []
    for i, layer in enumerate(lowers):
        build_layer(layer, base / f"l{i}", T0 + i * 10**12)
        paths.append(base / f"l{i}")
    up = work = None
    if upper is not None:
        up, work = base / "u", base / "w"
        build_layer(upper, up, T0 + 9 * 10**12)
        work.mkdir()
    layers = LayerDirs(tuple(paths), up, work)
    return Built(base, layers, _labels(layers))


def _labels(layers: LayerDirs) -> dict[int, str]:
    """Lower objects only: they never go away, while a removed upper object's inode number
    may be reused by the next one created (on one copy and not the other)."""
    labels: dict[int, str] = {}
    for root in layers.lowers:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in ["", *dirnames, *filenames]:
                real = os.path.join(dirpath, name) if name else dirpath
                ino = os.lstat(real).st_ino
                labels.setdefault(ino, f"{root.name}:{os.path.relpath(real, root)}")
    return labels


# --- the operations -------------------------------------------------------------------------

_NAME = st.sampled_from(NAMES)


@st.composite
def op_paths(draw: st.DrawFn) -> str:
    depth = draw(st.sampled_from([1, 1, 1, 2, 2, 3]))
    comps = [draw(_NAME) for _ in range(depth)]
    if draw(st.integers(0, 15)) == 0:
        # No "..": through a symlink to "." it would climb out of the kernel mount.
        comps.insert(draw(st.integers(0, depth)), ".")
    path = "/".join(comps)
    if draw(st.integers(0, 9)) == 0:
        path += "/"
    return path


_OPEN_FLAGS = st.sampled_from(
    [
        ("O_RDONLY",),
        ("O_WRONLY",),
        ("O_RDWR",),
        ("O_RDONLY", "O_TRUNC"),
        ("O_WRONLY", "O_CREAT"),
        ("O_WRONLY", "O_CREAT", "O_EXCL"),
        ("O_RDWR", "O_CREAT", "O_TRUNC"),
        ("O_RDONLY", "O_DIRECTORY"),
        ("O_RDONLY", "O_NOFOLLOW"),
        ("O_WRONLY", "O_APPEND"),
        ("O_RDONLY", "O_CREAT", "O_DIRECTORY"),
    ]
)
_KEYS = st.sampled_from(
    ["user.x", "user.y", "trusted.overlay.foo", "trusted.t", "user.overlay.foo"]
)
_MTIMES = st.sampled_from([T0 - 7, T0 + 123_456_789])
_P = op_paths()
_RENAME_FLAGS = st.sampled_from(
    ["", "", "RENAME_NOREPLACE", "RENAME_EXCHANGE", "RENAME_EXCHANGE", "RENAME_WHITEOUT"]
)


def ops_over(_P: st.SearchStrategy[str]) -> st.SearchStrategy[Op]:
    """Every operation, on paths drawn from ``_P``."""
    return st.one_of(
        st.builds(ops.Stat, _P),
        st.builds(ops.Lstat, _P),
        st.builds(ops.Read, _P),
        st.builds(ops.Readlink, _P),
        st.builds(ops.Readdir, _P),
        st.builds(ops.GetXattr, _P, _KEYS),
        st.builds(ops.ListXattr, _P),
        st.builds(ops.Open, _P, _OPEN_FLAGS, st.sampled_from([0o644, 0o600])),
        st.builds(ops.Write, _P, st.sampled_from([b"new", b"zz"]), st.sampled_from([0, 2])),
        st.builds(ops.Truncate, _P, st.sampled_from([0, 1, 5, -1])),
        st.builds(ops.Chmod, _P, st.sampled_from([0o600, 0o755])),
        st.builds(ops.Chown, _P, st.sampled_from([0, 7]), st.sampled_from([0, 8]), st.booleans()),
        st.builds(ops.Utimes, _P, _MTIMES),
        st.builds(
            ops.SetXattr,
            _P,
            _KEYS,
            st.sampled_from([b"v", b""]),
            st.sampled_from(["", "XATTR_CREATE", "XATTR_REPLACE"]),
        ),
        st.builds(ops.RemoveXattr, _P, _KEYS),
        st.builds(ops.Mkdir, _P, st.sampled_from([0o755, 0o700])),
        st.builds(ops.Rmdir, _P),
        st.builds(ops.Unlink, _P),
        st.builds(ops.Symlink, st.sampled_from([*_LINK_TARGETS, ""]), _P),
        st.builds(ops.Link, _P, _P),
        st.builds(ops.Mknod, _P, st.just("chr"), st.just(0o644), st.just(0)),
        st.builds(ops.Rename, _P, _P, _RENAME_FLAGS),
        st.just(ops.Remount()),
    )


OPS = ops_over(_P)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[tuple[list[Layer], Layer | None], list[Op]]:
    """A stack, and a program whose paths mostly name what the stack holds."""
    stack = draw(stacks())
    lowers, upper = stack
    pool = sorted({p for layer in [*lowers, upper or {}] for p in layer})
    if not pool:
        return stack, draw(st.lists(OPS, min_size=4, max_size=25))
    known = st.sampled_from(pool)
    slashed = known.map(lambda p: p + "/")
    paths = st.one_of(known, known, known, known, known, slashed, op_paths())
    return stack, draw(st.lists(ops_over(paths), min_size=4, max_size=25))


# --- comparing ------------------------------------------------------------------------------


class Labeller:
    """Turns raw inode numbers and mtimes into values comparable across the two copies."""

    def __init__(self, built: Built) -> None:
        self.labels = built.labels
        self.known_mtimes: set[int] = set()

    def ino(self, ino: int) -> str:
        return self.labels.get(ino, "fresh")

    def mtime(self, mtime: int | None) -> object:
        if mtime is None:
            return None
        if mtime in self.known_mtimes or T0 <= mtime < T0 + 10**13:
            return mtime
        return "fresh"

    def stat(self, s: StatResult) -> tuple[object, ...]:
        return (s.kind, s.mode, s.uid, s.gid, s.size, s.nlink, self.ino(s.ino), self.mtime(s.mtime),
                s.rdev)  # fmt: skip

    def outcome(self, out: Outcome) -> tuple[object, ...]:
        value = out.value
        if isinstance(value, StatResult):
            return (out.errno, self.stat(value))
        return (out.errno, value)

    def view(self, view: ops.View) -> tuple[dict[str, object], frozenset[frozenset[str]]]:
        nodes: dict[str, object] = {}
        groups: dict[int, set[str]] = {}
        for path, node in view.items():
            nodes[path] = self._node(node)
            if node.stat is not None:
                groups.setdefault(node.stat.ino, set()).add(path)
        return nodes, frozenset(frozenset(g) for g in groups.values() if len(g) > 1)

    def _node(self, node: Node) -> object:
        stat = None if node.stat is None else self.stat(node.stat)
        return (stat, node.data, node.target, dict(node.xattrs), getattr(node, "errno", 0))


@pytest.fixture
def workspace() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="pyo-kernel-", dir="/tmp"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)
        assert str(base) not in Path("/proc/self/mountinfo").read_text(), "a mount was left"


def _fresh(base: Path, name: str) -> Path:
    path = base / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir()
    return path


def _kernel(built: Built) -> Mounted:
    scratch = built.base / "scratch"
    scratch.mkdir(exist_ok=True)
    return KernelAdapter().mount(built.layers, FEATURES, scratch)


def _lowers_fingerprint(built: Built) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for root in built.layers.lowers:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [*dirnames, *filenames]:
                real = os.path.join(dirpath, name)
                s = os.lstat(real)
                xattrs = tuple(sorted(os.listxattr(real, follow_symlinks=False)))
                out[real] = (s.st_mode, s.st_ino, s.st_nlink, s.st_size, s.st_mtime_ns, xattrs)
    return out


def _describe(steps: list[tuple[Op, object, object]]) -> str:
    return "\n".join(f"  {op}: kernel={k} python={p}" for op, k, p in steps)


SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SETTINGS
@given(scenario=scenarios())
def test_agrees_with_kernel(
    workspace: Path, scenario: tuple[tuple[list[Layer], Layer | None], list[Op]]
) -> None:
    (lowers, upper), program = scenario
    kbuilt = build_stack(_fresh(workspace, "k"), lowers, upper)
    pbuilt = build_stack(_fresh(workspace, "p"), lowers, upper)
    _differential(kbuilt, pbuilt, program)


def _differential(kbuilt: Built, pbuilt: Built, program: list[Op]) -> None:
    """Run ``program`` on a kernel mount of one copy and on OverlayFS over the other."""
    before = _lowers_fingerprint(pbuilt)
    klabel, plabel = Labeller(kbuilt), Labeller(pbuilt)
    for op in program:
        if isinstance(op, ops.Utimes):
            klabel.known_mtimes.add(op.mtime)
            plabel.known_mtimes.add(op.mtime)
    steps: list[tuple[Op, object, object]] = []
    kernel = _kernel(kbuilt)
    python = PythonMounted(pbuilt.layers, FEATURES)
    try:
        for op in program:
            k = klabel.outcome(kernel.perform(op))
            p = plabel.outcome(python.perform(op))
            steps.append((op, k, p))
            event(f"{op.name}: {E.errorcode.get(int(str(k[0])), 'ok')}")
            assert k == p, "outcomes differ:\n" + _describe(steps)
        kview, kgroups = klabel.view(kernel.observe())
        pview, pgroups = plabel.view(python.observe())
    finally:
        kernel.close()
        python.close()
    assert set(kview) == set(pview), "visible paths differ:\n" + _describe(steps)
    for path in kview:
        assert kview[path] == pview[path], f"{path!r} differs:\n" + _describe(steps)
    assert kgroups == pgroups, "hard-link groups differ:\n" + _describe(steps)
    assert _lowers_fingerprint(pbuilt) == before, "a lower layer was modified"


@SETTINGS
@given(scenario=scenarios(), data=st.data())
def test_kernel_upper_committed_as_lower(
    workspace: Path,
    scenario: tuple[tuple[list[Layer], Layer | None], list[Op]],
    data: st.DataObject,
) -> None:
    """The way images are built: the kernel's upper (origin, impure, whiteouts in directories
    of one layer only...) becomes the top lower layer of a new stack, then both
    implementations run a second program on it."""
    (lowers, upper), first = scenario
    built = build_stack(_fresh(workspace, "first"), lowers, upper if upper is not None else {})
    kernel = _kernel(built)
    try:
        for op in first:
            kernel.perform(op)
    finally:
        kernel.close()
    assert built.layers.upper is not None
    stacked = (built.layers.upper, *built.layers.lowers)
    pool = sorted({p for layer in lowers for p in layer} | {"a", "b", "c"})
    known = st.sampled_from(pool)
    second = data.draw(st.lists(ops_over(st.one_of(known, known, op_paths())), max_size=20))
    copies = []
    for name in ("k", "p"):
        base = _fresh(workspace, name)
        for i, src in enumerate(stacked):
            # cp -a keeps hard links, devices and every xattr (trusted.* too, as root).
            subprocess.run(["cp", "-a", str(src), str(base / f"l{i}")], check=True)
        (base / "u").mkdir()
        (base / "w").mkdir()
        layers = LayerDirs(tuple(base / f"l{i}" for i in range(len(stacked))), base / "u",
                           base / "w")  # fmt: skip
        copies.append(Built(base, layers, _labels(layers)))
    _differential(copies[0], copies[1], second)


def _raw_view(view: ops.View) -> dict[str, object]:
    return {path: node for path, node in view.items()}


@SETTINGS
@given(scenario=scenarios())
def test_kernel_reads_our_upper(
    workspace: Path, scenario: tuple[tuple[list[Layer], Layer | None], list[Op]]
) -> None:
    """What OverlayFS leaves in the upper, the kernel mounts with the same view."""
    (lowers, upper), program = scenario
    built = build_stack(_fresh(workspace, "p"), lowers, upper)
    python = PythonMounted(built.layers, FEATURES)
    try:
        for op in program:
            python.perform(op)
        python.remount()  # what is on disk, without what one session keeps in memory
        ours = python.observe()
    finally:
        python.close()
    kernel = _kernel(built)
    try:
        theirs = kernel.observe()
    finally:
        kernel.close()
    assert _raw_view(theirs) == _raw_view(ours), "program:\n" + "\n".join(map(str, program))


@SETTINGS
@given(scenario=scenarios())
def test_we_read_kernel_upper(
    workspace: Path, scenario: tuple[tuple[list[Layer], Layer | None], list[Op]]
) -> None:
    """What the kernel leaves in the upper, OverlayFS reads with the same view."""
    (lowers, upper), program = scenario
    built = build_stack(_fresh(workspace, "k"), lowers, upper)
    kernel = _kernel(built)
    try:
        for op in program:
            kernel.perform(op)
        kernel.remount()  # what is on disk, without what one session keeps in memory
        theirs = kernel.observe()
    finally:
        kernel.close()
    python = PythonMounted(built.layers, FEATURES)
    try:
        ours = python.observe()
    finally:
        python.close()
    assert _raw_view(ours) == _raw_view(theirs), "program:\n" + "\n".join(map(str, program))


# --- hand-written cross checks ----------------------------------------------------------------


def test_origin_xattr_matches_kernel_format(workspace: Path) -> None:
    """Copy-up writes ``origin`` byte for byte as the kernel does, and ``impure`` on the parent."""
    lowers: list[Layer] = [{"d": Entry("dir"), "d/f": Entry("file", "x")}]
    kb = build_stack(_fresh(workspace, "k"), lowers, {})
    pb = build_stack(_fresh(workspace, "p"), lowers, {})
    kernel = _kernel(kb)
    try:
        kernel.perform(ops.Chmod("d/f", 0o600))
    finally:
        kernel.close()
    python = PythonMounted(pb.layers, FEATURES)
    try:
        python.perform(ops.Chmod("d/f", 0o600))
    finally:
        python.close()
    assert kb.layers.upper and pb.layers.upper
    for rel in ("d", "d/f"):
        korigin = os.getxattr(kb.layers.upper / rel, P + "origin")
        porigin = os.getxattr(pb.layers.upper / rel, P + "origin")
        # Same layout; the handles name different (copied) inodes, so compare the header only.
        assert korigin[:21] == porigin[:21] and len(korigin) == len(porigin)
    for up in (kb.layers.upper, pb.layers.upper):
        assert os.getxattr(up, P + "impure") == b"y"
        assert os.getxattr(up / "d", P + "impure") == b"y"


def test_copy_up_keeps_st_ino_across_remount(workspace: Path) -> None:
    lowers: list[Layer] = [{"f": Entry("file", "x"), "g": Entry("file", "y")}]
    built = build_stack(_fresh(workspace, "p"), lowers, {})
    python = PythonMounted(built.layers, FEATURES)
    try:
        before = python.perform(ops.Stat("f")).value
        python.perform(ops.Write("f", b"changed"))
        python.perform(ops.Rename("f", "h"))
        python.perform(ops.Remount())
        after = python.perform(ops.Stat("h")).value
    finally:
        python.close()
    assert isinstance(before, StatResult) and isinstance(after, StatResult)
    assert before.ino == after.ino
    kernel = _kernel(built)
    try:
        kst = kernel.perform(ops.Stat("h")).value
    finally:
        kernel.close()
    assert isinstance(kst, StatResult) and kst.ino == before.ino


def test_escaped_private_xattr(workspace: Path) -> None:
    built = build_stack(_fresh(workspace, "p"), [{"f": Entry("file")}], {})
    python = PythonMounted(built.layers, FEATURES)
    try:
        assert python.perform(ops.SetXattr("f", P + "foo", b"v")).ok
        assert python.perform(ops.ListXattr("f")).value == frozenset({P + "foo"})
    finally:
        python.close()
    assert built.layers.upper is not None
    assert os.getxattr(built.layers.upper / "f", P + "overlay.foo") == b"v"
    kernel = _kernel(built)
    try:
        assert kernel.perform(ops.GetXattr("f", P + "foo")).value == b"v"
    finally:
        kernel.close()


def test_no_mounts_left() -> None:
    assert "pyo-kernel-" not in Path("/proc/self/mountinfo").read_text()
