"""Hypothesis strategies: initial layer stacks (as ``model.state.Overlay`` values) and operations.

Stacks look like container images: a few lower layers whose names collide (a tiny alphabet),
whiteouts in both on-disk forms and opaque directories in the lowers, an empty upper (the
container layer) or none at all (a read-only overlay). Operations are drawn against the current
merged view so that they hit existing names, go through symlinks, use ``..`` and trailing
slashes, and name missing parents.

Containment: nothing generated may resolve outside the mount, or the implementation would touch
the host. Symlink targets are relative and never climb above the root lexically; and before each
operation the machine asks ``escapes`` (a physical resolution against the model's view, which
follows symlinks exactly as path lookup does) and rejects the operation if any path could leave.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

from hypothesis import strategies as st

from model import ops
from model.features import Features
from model.frozen import FrozenMap
from model.ops import Op, View
from model.state import Inode, Layer, Overlay, Path, empty_layer
from model.syscalls import escapes as model_escapes

NAMES: tuple[str, ...] = ("a", "b", "c", "d")
MAX_DEPTH = 3
FILE_MODES: tuple[int, ...] = (0o644, 0o600, 0o755, 0o444, 0o640)
DIR_MODES: tuple[int, ...] = (0o755, 0o700, 0o750, 0o775)
OP_MODES: tuple[int, ...] = (0o644, 0o600, 0o755, 0o700, 0o444, 0o000)
MTIMES: tuple[int, ...] = (0, 1_000_000_000_000_000_000, 1_700_000_000_123_456_789)
USER_XATTRS: tuple[str, ...] = ("user.a", "user.b")
XATTR_VALUES: tuple[bytes, ...] = (b"", b"1", b"xyz")
MAX_SYMLINK_HOPS = 40  # the kernel's limit on symlinks followed in one lookup
LOOP = "\0loop"  # what resolve() gives for a symlink loop: no path has a NUL in it
ROOT_IDS: tuple[int, ...] = (0, 1000, 1001)


@dataclass(frozen=True)
class Environment:
    """What can be built here: owners, and which on-disk encodings are possible."""

    root: bool
    uid: int
    gid: int

    @classmethod
    def here(cls) -> Environment:
        return cls(root=os.geteuid() == 0, uid=os.geteuid(), gid=os.getegid())

    @property
    def uids(self) -> tuple[int, ...]:
        return ROOT_IDS if self.root else (self.uid,)

    @property
    def gids(self) -> tuple[int, ...]:
        return ROOT_IDS if self.root else (self.gid,)

    def whiteout_forms(self, features: Features) -> tuple[str, ...]:
        # char 0/0 needs CAP_MKNOD; trusted.* xattrs need CAP_SYS_ADMIN; user.* needs userxattr.
        if self.root:
            return ("chardev", "xattr")
        return ("xattr",) if features.userxattr else ()

    def can_mark_opaque(self, features: Features) -> bool:
        return self.root or features.userxattr


# --- initial stacks -----------------------------------------------------------------------


@st.composite
def _layer(
    draw: st.DrawFn,
    *,
    first_ino: int,
    env: Environment,
    features: Features,
    annotations: bool,
) -> Layer:
    """One lower layer: a small tree with colliding names, hard links, whiteouts, opaques."""
    wanted: list[Path] = draw(
        st.lists(
            st.lists(st.sampled_from(NAMES), min_size=1, max_size=MAX_DEPTH).map(tuple),
            max_size=7,
            unique=True,
        )
    )
    forms = env.whiteout_forms(features) if annotations else ()
    kinds = ("file", "dir", "symlink", "fifo") + (("whiteout",) if forms else ())
    entries: dict[Path, int] = {(): first_ino}
    inodes: dict[int, Inode] = {first_ino: draw(_dir_inode(env, opaque=False))}
    next_ino = first_ino + 1
    files: list[int] = []
    for path in sorted(wanted, key=lambda p: (len(p), p)):
        if path in entries:
            continue
        # Ensure the parents exist as directories in this layer; drop paths under non-dirs.
        parent_ok = True
        for depth in range(1, len(path)):
            parent = path[:depth]
            if parent not in entries:
                entries[parent] = next_ino
                inodes[next_ino] = draw(_dir_inode(env, opaque=False))
                next_ino += 1
            elif inodes[entries[parent]].kind != "dir":
                parent_ok = False
                break
        if not parent_ok:
            continue
        is_leaf_depth = len(path) == MAX_DEPTH
        kind = draw(_kinds(kinds, leaf=is_leaf_depth))
        if kind == "file" and files and draw(st.integers(0, 3)) == 0:
            entries[path] = draw(st.sampled_from(files))  # a hard link within this layer
            continue
        if kind == "file":
            inode = draw(_file_inode(env))
            files.append(next_ino)
        elif kind == "dir":
            opaque = annotations and env.can_mark_opaque(features) and draw(st.booleans())
            inode = draw(_dir_inode(env, opaque=opaque))
        elif kind == "symlink":
            inode = draw(_symlink_inode(env, len(path) - 1))
        elif kind == "fifo":
            inode = draw(_fifo_inode(env))
        else:
            form = draw(st.sampled_from(forms))
            inode = Inode("whiteout", mode=0, whiteout_form=form)  # type: ignore[arg-type]
        entries[path] = next_ino
        inodes[next_ino] = inode
        next_ino += 1
    return Layer(FrozenMap(entries), FrozenMap(inodes))


@functools.cache
def _kinds(kinds: tuple[str, ...], *, leaf: bool) -> st.SearchStrategy[str]:
    return st.sampled_from([k for k in kinds if not (k == "dir" and leaf)])


# Strategy factories are cached: building a strategy costs far more than drawing from it,
# and the shrinker replays thousands of examples.
@functools.cache
def _xattrs() -> st.SearchStrategy[FrozenMap[str, bytes]]:
    return st.dictionaries(
        st.sampled_from(USER_XATTRS), st.sampled_from(XATTR_VALUES), max_size=2
    ).map(FrozenMap)


@functools.cache
def _file_inode(env: Environment) -> st.SearchStrategy[Inode]:
    return st.builds(
        Inode,
        st.just("file"),
        mode=st.sampled_from(FILE_MODES),
        uid=st.sampled_from(env.uids),
        gid=st.sampled_from(env.gids),
        mtime=st.sampled_from(MTIMES),
        xattrs=_xattrs(),
        data=st.sampled_from([b"", b"lower", b"x\n"]) | st.binary(max_size=6),
    )


@functools.cache
def _symlink_inode(env: Environment, depth: int) -> st.SearchStrategy[Inode]:
    return st.builds(
        Inode,
        st.just("symlink"),
        mode=st.just(0o777),
        uid=st.sampled_from(env.uids),
        gid=st.sampled_from(env.gids),
        mtime=st.sampled_from(MTIMES),
        target=symlink_targets(depth),
    )


@functools.cache
def _fifo_inode(env: Environment) -> st.SearchStrategy[Inode]:
    return st.builds(
        Inode,
        st.just("fifo"),
        mode=st.sampled_from(FILE_MODES),
        uid=st.sampled_from(env.uids),
        gid=st.sampled_from(env.gids),
        mtime=st.sampled_from(MTIMES),
    )


@functools.cache
def _dir_inode(env: Environment, *, opaque: bool) -> st.SearchStrategy[Inode]:
    return st.builds(
        Inode,
        st.just("dir"),
        mode=st.sampled_from(DIR_MODES),
        uid=st.sampled_from(env.uids),
        gid=st.sampled_from(env.gids),
        mtime=st.sampled_from(MTIMES),
        xattrs=_xattrs(),
        opaque=st.just(opaque),
    )


@functools.cache
def symlink_targets(depth: int) -> st.SearchStrategy[str]:
    """Relative targets for a symlink whose parent is ``depth`` levels below the root: plain
    names, paths into other directories, ``.``/``..`` forms, trailing slashes, dangling ones.
    A ``..`` is kept only while it stays at or below the root, counted from the link."""
    return st.lists(
        st.sampled_from((*NAMES, "..", ".")), min_size=1, max_size=3
    ).map(lambda parts: _clamp(parts, depth)).flatmap(
        lambda t: st.sampled_from([t, t + "/"]) if t not in ("", ".") else st.just(t or ".")
    )  # fmt: skip


def _clamp(parts: Sequence[str], depth: int) -> str:
    """Drop every ``..`` that would climb above the root, lexically."""
    kept: list[str] = []
    level = depth
    for part in parts:
        if part == "..":
            if level == 0:
                continue
            level -= 1
        elif part != ".":
            level += 1
        kept.append(part)
    return "/".join(kept) or "."


@st.composite
def stacks(
    draw: st.DrawFn,
    features: Features,
    *,
    max_lowers: int = 3,
    env: Environment | None = None,
    read_only: bool = True,
) -> Overlay:
    """An initial overlay: 1..max_lowers lowers (top first), an empty upper or none."""
    env = env or Environment.here()
    upper_none = read_only and draw(st.integers(0, 5)) == 0
    # The kernel needs two lowers to mount without an upper.
    n = draw(st.integers(2 if upper_none else 1, max(max_lowers, 2 if upper_none else 1)))
    lowers = []
    for i in range(n):
        bottom = i == n - 1
        lowers.append(
            draw(
                _layer(
                    first_ino=(i + 1) * 1000,
                    env=env,
                    features=features,
                    # Whiteouts and opaque dirs only matter above some other layer.
                    annotations=not bottom,
                )
            )
        )
    upper = None
    if not upper_none:
        root = draw(_dir_inode(env, opaque=False))
        upper = empty_layer(900, replace(root, xattrs=FrozenMap()))
    return Overlay(lowers=tuple(lowers), upper=upper, features=features)


# --- containment --------------------------------------------------------------------------


def resolve(view: View, path: str, *, follow: bool = True) -> str | None:
    """Where ``path`` leads in the model's view, or None if resolving it could leave the merged
    root. Physical resolution as the kernel's lookup does it: ``..`` goes to the parent of the
    directory a symlink resolved to. Conservative: a missing or non-directory component is
    walked through lexically. A symlink loop gives ``LOOP`` (ELOOP: the walk stopped inside)."""
    if path.startswith("/"):
        return None
    stack: list[str] = []
    pending = [c for c in path.split("/") if c not in ("", ".")]
    hops = 0
    while pending:
        comp = pending.pop(0)
        if comp == "..":
            if not stack:
                return None
            stack.pop()
            continue
        here = "/".join([*stack, comp])
        node = view.get(here)
        final = not pending
        if (
            node is not None
            and node.stat is not None
            and node.stat.kind == "symlink"
            and node.target is not None
            and (follow or not final)
        ):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                return LOOP  # lookup stops here with ELOOP, having gone nowhere outside
            if node.target.startswith("/"):
                return None
            pending = [c for c in node.target.split("/") if c not in ("", ".")] + pending
            continue
        stack.append(comp)
    return "/".join(stack)


def escapes(view: View, path: str) -> bool:
    """Whether resolving ``path``, following every symlink (the final one too, as O_CREAT
    through a dangling link does), could leave the merged root."""
    return resolve(view, path) is None


def op_paths(op: Op) -> list[str]:
    """Every path an operation resolves, and symlink targets it creates."""
    out = []
    for name in ("path", "src", "dst"):
        value = getattr(op, name, None)
        if isinstance(value, str):
            out.append(value)
    return out


def op_escapes(view: View, op: Op, state: Overlay | None = None) -> bool:
    """Whether any path of ``op`` could resolve outside the mount. The model's exact answer
    (``model.syscalls.escapes``, when given the state) and a conservative resolution on the
    view, which walks through missing components too, must both say it stays inside: the
    implementation may resolve differently from the model, and the host must stay safe even
    then."""
    if state is not None and model_escapes(state, op):
        return True
    if any(escapes(view, p) for p in op_paths(op)):
        return True
    # A new symlink must not point outside from where it is created.
    if isinstance(op, ops.Symlink):
        if op.target.startswith("/"):
            return True
        parent = op.path.rstrip("/").rpartition("/")[0]
        return escapes(view, f"{parent}/{op.target}" if parent else op.target)
    return False


# --- operations ---------------------------------------------------------------------------


def _clamp_path(parts: Sequence[str]) -> str:
    return _clamp(parts, 0) if parts else ""


def _shape_of(view: View) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What path strategies depend on: the existing names, and those one can walk into."""
    existing = tuple(sorted(p for p in view if p))
    containers = tuple(
        sorted(
            p
            for p, n in view.items()
            if p and n.stat is not None and n.stat.kind in ("dir", "symlink")
        )
    )
    return existing, containers


def paths(view: View) -> st.SearchStrategy[str]:
    """Path shapes that matter: existing names (symlinks included), children of existing
    directories and symlinks, ``..`` and ``.`` forms, missing parents, trailing slashes."""
    return _paths(*_shape_of(view))


@functools.lru_cache(maxsize=512)
def _paths(existing: tuple[str, ...], containers: tuple[str, ...]) -> st.SearchStrategy[str]:
    shapes: list[st.SearchStrategy[str]] = [
        st.sampled_from(NAMES),
        st.lists(st.sampled_from((*NAMES, "..", ".")), min_size=1, max_size=4).map(_clamp_path),
    ]
    if existing:
        # Existing names most often: that is where overlay semantics live.
        shapes[:0] = [st.sampled_from(existing)] * 3
        shapes.append(
            st.tuples(st.sampled_from(existing), st.sampled_from(NAMES)).map(
                lambda t: f"{t[0]}/../{t[1]}"
            )
        )
    if containers:
        shapes.insert(1, st.tuples(st.sampled_from(containers), st.sampled_from(NAMES)).map(
            lambda t: f"{t[0]}/{t[1]}"
        ))  # fmt: skip
    base = st.one_of(*shapes)
    return st.tuples(base, st.integers(0, 7)).map(
        lambda t: t[0] + "/" if t[1] == 0 and t[0] else t[0]
    )


def _open_flags() -> st.SearchStrategy[tuple[str, ...]]:
    extra = ("O_CREAT", "O_EXCL", "O_TRUNC", "O_APPEND", "O_DIRECTORY", "O_NOFOLLOW")
    return st.tuples(
        st.sampled_from(("O_RDONLY", "O_WRONLY", "O_RDWR")),
        st.lists(st.sampled_from(extra), unique=True, max_size=2),
    ).map(lambda t: (t[0], *sorted(t[1], key=extra.index)))


def _link_targets(existing: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.sampled_from(existing or NAMES) | symlink_targets(0)


def operations(view: View, env: Environment | None = None) -> st.SearchStrategy[Op]:
    """One operation of every kind in ``model.ops.ALL_OPS``, drawn against ``view``."""
    return _operations(*_shape_of(view), env or Environment.here())


# Building and validating a strategy costs far more than drawing from it, and most steps
# leave the set of names unchanged: one strategy per distinct shape of the view.
@functools.lru_cache(maxsize=512)
def _operations(
    existing: tuple[str, ...], containers: tuple[str, ...], env: Environment
) -> st.SearchStrategy[Op]:
    p = _paths(existing, containers)
    keys = st.sampled_from(USER_XATTRS) | st.just("user.none")
    get_keys = keys | st.just("trusted.overlay.opaque") if env.root else keys
    mknod_kinds = st.sampled_from(ops.MKNOD_KINDS if env.root else ("fifo",))
    by_op: dict[type[Op], st.SearchStrategy[Op]] = {
        ops.Stat: st.builds(ops.Stat, p),
        ops.Lstat: st.builds(ops.Lstat, p),
        ops.Read: st.builds(ops.Read, p),
        ops.Readlink: st.builds(ops.Readlink, p),
        ops.Readdir: st.builds(ops.Readdir, p),
        ops.GetXattr: st.builds(ops.GetXattr, p, get_keys),
        ops.ListXattr: st.builds(ops.ListXattr, p),
        ops.Open: st.builds(ops.Open, p, _open_flags(), st.sampled_from(OP_MODES)),
        ops.Write: st.builds(
            ops.Write, p, st.sampled_from([b"w", b"upper", b"\x00\xff"]), st.integers(0, 3)
        ),
        ops.Truncate: st.builds(ops.Truncate, p, st.integers(0, 6)),
        ops.Chmod: st.builds(ops.Chmod, p, st.sampled_from(OP_MODES)),
        ops.Chown: st.builds(
            ops.Chown, p, st.sampled_from(env.uids), st.sampled_from(env.gids), st.booleans()
        ),
        ops.Utimes: st.builds(ops.Utimes, p, st.sampled_from(MTIMES)),
        ops.SetXattr: st.builds(
            ops.SetXattr, p, keys, st.sampled_from(XATTR_VALUES), st.sampled_from(ops.XATTR_FLAGS)
        ),
        ops.RemoveXattr: st.builds(ops.RemoveXattr, p, keys),
        ops.Mkdir: st.builds(ops.Mkdir, p, st.sampled_from(DIR_MODES)),
        ops.Rmdir: st.builds(ops.Rmdir, p),
        ops.Unlink: st.builds(ops.Unlink, p),
        ops.Symlink: st.builds(ops.Symlink, _link_targets(existing), p),
        ops.Link: st.builds(ops.Link, p, p),
        ops.Mknod: st.builds(
            ops.Mknod,
            p,
            mknod_kinds,
            st.sampled_from(FILE_MODES),
            st.sampled_from((0, os.makedev(1, 3))),
        ).map(lambda op: op if op.kind == "chr" else replace(op, rdev=0)),
        ops.Rename: st.builds(ops.Rename, p, p, st.sampled_from(ops.RENAME_FLAGS)),
        ops.Remount: st.just(ops.Remount()),
    }
    missing = [op.name for op in ops.ALL_OPS if op not in by_op]
    assert not missing, f"no strategy for {missing}"  # a new op must get a strategy
    return st.one_of(*(by_op[op] for op in ops.ALL_OPS))
