"""Properties of the model itself, over generated stacks and operation sequences."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.strategies import Environment, operations, stacks
from model import apply, view
from model.features import DEFAULT
from model.ops import Lstat, Op, Readdir, Remount
from model.paths import Escape
from model.state import Overlay
from model.syscalls import Transition

ROOT_ENV = Environment(root=True, uid=0, gid=0)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


Step = tuple[Overlay, Op, Transition]


def run(state: Overlay, data: st.DataObject, steps: int = 12) -> list[Step]:
    """Apply generated operations; return each state, the operation and its transition."""
    out: list[Step] = []
    for _ in range(steps):
        op = data.draw(operations(view(state), ROOT_ENV))
        try:
            t = apply(state, op)
        except Escape:
            continue
        out.append((state, op, t))
        state = t.state
    return out


@SETTINGS
@given(stacks(DEFAULT, env=ROOT_ENV), st.data())
def test_a_failed_call_changes_nothing(state: Overlay, data: st.DataObject) -> None:
    for before, _, t in run(state, data):
        if t.outcome.ok:
            continue
        if "copy-up.on-failed-setxattr" in t.rules:
            # The one documented exception: the copy-up already happened. Nothing a user
            # sees through names, data or attributes may change.
            old, new = view(before), view(t.state)
            assert set(old) == set(new)
            for path, node in old.items():
                assert new[path].data == node.data and new[path].xattrs == node.xattrs
        else:
            assert t.state == before, t.rules


@SETTINGS
@given(stacks(DEFAULT, env=ROOT_ENV), st.data())
def test_lower_layers_never_change(state: Overlay, data: st.DataObject) -> None:
    for before, _, t in run(state, data):
        assert t.state.lowers == before.lowers


@SETTINGS
@given(stacks(DEFAULT, env=ROOT_ENV), st.data())
def test_no_whiteout_is_ever_visible(state: Overlay, data: st.DataObject) -> None:
    for _, _, t in run(state, data):
        for node in view(t.state).values():
            assert node.stat is None or node.stat.kind != "whiteout"


@SETTINGS
@given(stacks(DEFAULT, env=ROOT_ENV), st.data())
def test_readdir_agrees_with_lookup(state: Overlay, data: st.DataObject) -> None:
    for _, _, t in [(state, Remount(), apply(state, Remount())), *run(state, data, steps=6)]:
        v = view(t.state)
        for path, node in v.items():
            if node.stat is not None:
                # Everything the walk found is what lstat of that path says.
                got = apply(t.state, Lstat(path or ".")).outcome
                assert got.ok and got.value == node.stat, path
            if node.stat is None or node.stat.kind != "dir":
                continue
            listed = apply(t.state, Readdir(path or ".")).outcome.value
            prefix = f"{path}/" if path else ""
            children = {k[len(prefix) :] for k in v if k.startswith(prefix) and k != path}
            assert listed == {c for c in children if "/" not in c}, path


@SETTINGS
@given(stacks(DEFAULT, env=ROOT_ENV), st.data())
def test_remount_is_the_identity_on_the_view(state: Overlay, data: st.DataObject) -> None:
    for _, _, t in run(state, data):
        again = apply(t.state, Remount())
        assert again.outcome.ok and view(again.state) == view(t.state)


@SETTINGS
@given(stacks(DEFAULT, env=ROOT_ENV), st.data())
def test_observing_calls_change_nothing(state: Overlay, data: st.DataObject) -> None:
    for before, op, t in run(state, data):
        if op.observing or isinstance(op, Remount):
            assert t.state == before, op
