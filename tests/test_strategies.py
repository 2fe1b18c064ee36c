"""conformance.strategies: stacks are well formed and buildable, operations cover every system
call, and nothing generated can resolve outside the mount."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

import model
from conformance import strategies as S
from model import ops
from model.features import Features
from model.frozen import FrozenMap
from model.ops import Node, StatResult
from model.state import Overlay

ROOT_ENV = S.Environment(root=True, uid=0, gid=0)
USER_ENV = S.Environment(root=False, uid=1000, gid=1000)


def check_layer_tree(state: Overlay) -> None:
    seen: set[int] = set()
    layers = [*state.lowers, *([state.upper] if state.upper is not None else [])]
    for layer in layers:
        assert () in layer.entries
        for path, ino in layer.entries.items():
            assert ino in layer.inodes
            if path:
                parent = layer.get(path[:-1])
                assert parent is not None and parent.kind == "dir", path
                assert len(path) <= S.MAX_DEPTH
                assert all(name in S.NAMES for name in path)
        # Inode numbers are one identity across the whole stack.
        assert not (set(layer.inodes) & seen)
        seen |= set(layer.inodes)


@settings(max_examples=100)
@given(S.stacks(Features(), env=ROOT_ENV))
def test_stacks_are_well_formed(state: Overlay) -> None:
    check_layer_tree(state)
    assert 1 <= len(state.lowers) <= 3
    if state.upper is None:
        assert len(state.lowers) >= 2  # the kernel needs two lowers without an upper
    else:
        assert list(state.upper.entries) == [()]  # an empty container layer
    assert not any(i.kind == "whiteout" for i in state.lowers[-1].inodes.values())


@settings(max_examples=100)
@given(S.stacks(Features(), env=ROOT_ENV, max_lowers=6))
def test_thorough_stacks_have_up_to_six_lowers(state: Overlay) -> None:
    assert 1 <= len(state.lowers) <= 6


@settings(max_examples=100)
@given(S.stacks(Features(), env=USER_ENV))
def test_without_root_only_buildable_objects(state: Overlay) -> None:
    for layer in state.lowers:
        for inode in layer.inodes.values():
            assert inode.kind != "whiteout"  # neither char 0/0 nor trusted.* xattrs
            assert not inode.opaque
            assert (inode.uid, inode.gid) == (1000, 1000)


@settings(max_examples=100)
@given(S.stacks(Features(userxattr=True), env=USER_ENV))
def test_without_root_userxattr_allows_xattr_whiteouts(state: Overlay) -> None:
    forms = {i.whiteout_form for layer in state.lowers for i in layer.inodes.values()
             if i.kind == "whiteout"}  # fmt: skip
    assert forms <= {"xattr"}


@settings(max_examples=100)
@given(S.stacks(Features(), env=ROOT_ENV))
def test_generated_symlinks_stay_inside(state: Overlay) -> None:
    for layer in state.lowers:
        for path, ino in layer.entries.items():
            inode = layer.inodes[ino]
            if inode.kind == "symlink":
                assert not inode.target.startswith("/")
                depth = len(path) - 1
                level = depth
                for part in inode.target.split("/"):
                    if part == "..":
                        level -= 1
                    elif part not in ("", "."):
                        level += 1
                    assert level >= 0, (path, inode.target)


def _node(kind: str, target: str | None = None) -> Node:
    return Node(StatResult(kind, 0o755, 0, 0, None, None, 1, None), target=target)


VIEW = FrozenMap(
    {
        "": _node("dir"),
        "d": _node("dir"),
        "d/up": _node("symlink", ".."),  # stays inside: d/.. is the root
        "d/upup": _node("symlink", "../.."),  # climbs above the root
        "loop": _node("symlink", "loop"),
        "abs": _node("symlink", "/etc"),
        "f": _node("fifo"),
        "lf": _node("symlink", "f"),
    }
)


def test_escapes() -> None:
    assert not S.escapes(VIEW, "d/up")
    assert not S.escapes(VIEW, "d/up/d")
    assert S.escapes(VIEW, "d/up/..")  # physical: the link resolved to the root
    assert S.escapes(VIEW, "d/upup")
    assert S.escapes(VIEW, "..")
    assert S.escapes(VIEW, "d/../..")
    assert S.escapes(VIEW, "abs")
    assert S.escapes(VIEW, "/x")
    assert not S.escapes(VIEW, "d/..")
    assert not S.escapes(VIEW, "missing/../d/")
    assert not S.escapes(VIEW, "loop")  # ELOOP: the walk stops inside


def test_op_escapes_checks_every_path_and_new_symlink_targets() -> None:
    assert S.op_escapes(VIEW, ops.Rename("d", "d/upup/x"))
    assert S.op_escapes(VIEW, ops.Symlink("../..", "d/x"))
    assert not S.op_escapes(VIEW, ops.Symlink("..", "d/x"))
    assert S.op_escapes(VIEW, ops.Symlink("/etc/passwd", "x"))


@settings(max_examples=100)
@given(st.data())
def test_operations_cover_every_system_call(data: st.DataObject) -> None:
    state = data.draw(S.stacks(Features(), env=ROOT_ENV))
    view = model.view(state)
    op = data.draw(S.operations(view, ROOT_ENV))
    assert type(op) in ops.ALL_OPS
    for path in S.op_paths(op):
        assert not path.startswith("/")


def test_every_op_kind_is_generated() -> None:
    seen: set[str] = set()
    view = FrozenMap({"": _node("dir"), "a": _node("dir")})

    @settings(max_examples=400, database=None, derandomize=True)  # a fixed sample: no flakes
    @given(S.operations(view, ROOT_ENV))
    def collect(op: ops.Op) -> None:
        seen.add(op.name)

    collect()
    assert seen == {op.name for op in ops.ALL_OPS}


def test_symlink_targets_clamped() -> None:
    assert S._clamp(["..", "a"], 0) == "a"
    assert S._clamp(["..", "a"], 1) == "../a"
    assert S._clamp(["a", "..", ".."], 0) == "a/.."
    assert S._clamp([".."], 0) == "."
