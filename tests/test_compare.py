"""conformance.compare: exact, readable differences; None means "not predicted"; inode identity
as a bijection kept across a run."""

from __future__ import annotations

import errno as E

from conformance.compare import (
    InodeMap,
    StepContext,
    compare_fingerprints,
    compare_options,
    compare_outcome,
    compare_views,
)
from model import ops
from model.features import Features
from model.frozen import FrozenMap
from model.ops import Node, Outcome, StatResult


def st(
    kind: str = "file", mode: int = 0o644, ino: int = 1, size: int | None = 0,
    nlink: int | None = 1, mtime: int | None = 0,
) -> StatResult:  # fmt: skip
    return StatResult(kind, mode, 0, 0, size, nlink, ino, mtime)


CTX = StepContext(3, ops.Unlink("a"), ("unlink.whiteout",))


def test_equal_outcomes_give_no_difference() -> None:
    assert compare_outcome(Outcome(), Outcome(), InodeMap(), CTX) == []
    assert compare_outcome(Outcome(value=b"x"), Outcome(value=b"x"), InodeMap(), CTX) == []


def test_errno_difference_names_both_errnos_the_step_and_the_rules() -> None:
    [d] = compare_outcome(Outcome(E.EXDEV), Outcome(), InodeMap(), CTX)
    assert d.field == "errno"
    assert d.expected == "EXDEV (18)"
    assert d.observed == "0 (success)"
    assert d.step == 3 and d.op_name == "unlink" and d.rules == ("unlink.whiteout",)
    assert d.message() == (
        "step 3 unlink(path='a'): errno: expected EXDEV (18), observed 0 (success) "
        "[rules: unlink.whiteout]"
    )


def test_value_difference() -> None:
    [d] = compare_outcome(Outcome(value=b"new"), Outcome(value=b"old"), InodeMap(), CTX)
    assert (d.field, d.expected, d.observed) == ("value", "b'new'", "b'old'")


def test_stat_fields_none_is_not_predicted() -> None:
    want = Outcome(value=st(size=None, nlink=None, mtime=None, ino=7))
    got = Outcome(value=st(size=99, nlink=5, mtime=12345, ino=4242))
    assert compare_outcome(want, got, InodeMap(), CTX) == []


def test_stat_mode_shown_in_octal() -> None:
    [d] = compare_outcome(
        Outcome(value=st(mode=0o755)), Outcome(value=st(mode=0o600)), InodeMap(), CTX
    )
    assert (d.field, d.expected, d.observed) == ("stat.mode", "0o755", "0o600")


def test_inode_identity_must_persist() -> None:
    inodes = InodeMap()
    assert compare_outcome(Outcome(value=st(ino=7)), Outcome(value=st(ino=100)), inodes, CTX) == []
    [d] = compare_outcome(Outcome(value=st(ino=7)), Outcome(value=st(ino=101)), inodes, CTX)
    assert d.field == "stat.ino"
    assert "was st_ino 100" in d.detail and "now st_ino 101" in d.detail


def test_distinct_model_inodes_must_not_share_st_ino() -> None:
    inodes = InodeMap()
    compare_outcome(Outcome(value=st(ino=7)), Outcome(value=st(ino=100)), inodes, CTX)
    [d] = compare_outcome(Outcome(value=st(ino=8)), Outcome(value=st(ino=100)), inodes, CTX)
    assert "already belongs to model inode 7" in d.detail


def view(**nodes: Node) -> FrozenMap[str, Node]:
    return FrozenMap({k.replace("__", "/") if k != "root" else "": v for k, v in nodes.items()})


ROOT = Node(st("dir", 0o755, ino=1, size=None, nlink=None))


def test_views_missing_and_extra_paths() -> None:
    expected = view(root=ROOT, a=Node(st(ino=2), data=b""))
    observed = view(root=Node(st("dir", 0o755, ino=50, size=None)), b=Node(st(ino=51), data=b""))
    diffs = compare_views(expected, observed, InodeMap(), StepContext())
    assert [(d.path, d.field, d.expected, d.observed) for d in diffs] == [
        ("a", "present", "a file", "absent"),
        ("b", "present", "absent", "a file"),
    ]


def test_views_compare_contents_targets_and_xattrs() -> None:
    expected = view(
        root=ROOT,
        f=Node(st(ino=2), data=b"a", xattrs=FrozenMap({"user.a": b"1"})),
        s=Node(st("symlink", 0o777, ino=3, size=1), target="f"),
    )
    observed = view(
        root=Node(st("dir", 0o755, ino=50, size=None)),
        f=Node(st(ino=51), data=b"b", xattrs=FrozenMap({"user.b": b"1"})),
        s=Node(st("symlink", 0o777, ino=52, size=1), target="g"),
    )
    diffs = compare_views(expected, observed, InodeMap(), StepContext())
    assert {(d.path, d.field) for d in diffs} == {
        ("f", "data"),
        ("f", "xattr:user.a"),
        ("f", "xattr:user.b"),
        ("s", "target"),
    }


def test_hard_links_must_share_st_ino_and_only_they() -> None:
    expected = view(
        root=ROOT,
        a=Node(st(ino=2, nlink=2), data=b""),
        b=Node(st(ino=2, nlink=2), data=b""),
        c=Node(st(ino=3), data=b""),
    )
    observed = view(
        root=Node(st("dir", 0o755, ino=50, size=None)),
        a=Node(st(ino=60, nlink=2), data=b""),
        b=Node(st(ino=61, nlink=2), data=b""),  # should be 60
        c=Node(st(ino=60), data=b""),  # should differ from a
    )
    diffs = compare_views(expected, observed, InodeMap(), StepContext())
    assert {(d.path, d.field) for d in diffs} == {("b", "ino"), ("c", "ino")}


def test_identity_kept_across_steps_and_forgotten_when_gone() -> None:
    inodes = InodeMap()
    one = view(root=ROOT, a=Node(st(ino=2), data=b""))
    obs = view(root=Node(st("dir", 0o755, ino=50, size=None)), a=Node(st(ino=60), data=b""))
    assert compare_views(one, obs, inodes, StepContext()) == []
    # Same model inode, new st_ino (e.g. after a remount): a difference.
    obs2 = view(root=Node(st("dir", 0o755, ino=50, size=None)), a=Node(st(ino=61), data=b""))
    assert [d.field for d in compare_views(one, obs2, inodes, StepContext())] == ["ino"]
    # Once model inode 2 is gone, its st_ino may be reused by a new object.
    gone = view(root=ROOT)
    assert compare_views(gone, view(root=obs[""]), inodes, StepContext()) == []
    new = view(root=ROOT, b=Node(st(ino=9), data=b""))
    reuse = view(root=obs[""], b=Node(st(ino=60), data=b""))
    assert compare_views(new, reuse, inodes, StepContext()) == []


def test_listed_name_that_cannot_be_looked_up() -> None:
    expected = view(root=ROOT, w=Node(None, errno=E.ENOENT))
    same = view(root=Node(st("dir", 0o755, ino=50, size=None)), w=Node(None, errno=E.ENOENT))
    assert compare_views(expected, same, InodeMap(), StepContext()) == []
    other = view(root=same[""], w=Node(st(ino=70), data=b""))
    [d] = compare_views(expected, other, InodeMap(), StepContext())
    assert d.field == "lookup" and "ENOENT" in d.expected and d.observed == "a file"


def test_fingerprints() -> None:
    assert compare_fingerprints({"lower0": "x"}, {"lower0": "x"}, StepContext()) == []
    [d] = compare_fingerprints({"lower0": "x"}, {"lower0": "y"}, StepContext(1, ops.Remount()))
    assert d.field == "fingerprint" and d.path == "lower0"


def test_options_in_effect_must_match_declared_features() -> None:
    declared = Features.parse("redirect_dir=nofollow")
    assert compare_options(declared, {"redirect_dir": "nofollow", "index": "off"}) == []
    assert compare_options(declared, {"index": "not reported", "ro": ""}) == []
    [d] = compare_options(declared, {"redirect_dir": "on"})
    assert (d.field, d.expected, d.observed) == ("option:redirect_dir", "nofollow", "on")


# --- known differences (conformance.known) ---------------------------------------------------

from pathlib import Path  # noqa: E402 - this section's own imports

import pytest  # noqa: E402

from conformance.known import KnownFileError, KnownList, load  # noqa: E402


def test_known_entries_match_rule_op_and_field_pattern(tmp_path: Path) -> None:
    f = tmp_path / "k.toml"
    f.write_text(
        '[[known]]\nrule = "unlink.whiteout"\nop = "unlink"\nfield = "xattr:*"\n'
        'reason = "r"\nlink = "https://x"\n'
    )
    [entry] = load(f)
    known = KnownList([entry])
    ctx = StepContext(1, ops.Unlink("a"), ("unlink.whiteout", "other"))
    hit = ctx.diff("xattr:user.a", "absent", "b'1'", "a")
    miss_field = ctx.diff("mode", "0o644", "0o600", "a")
    miss_rule = StepContext(1, ops.Unlink("a"), ("other",)).diff("xattr:user.a", "x", "y")
    miss_op = StepContext(1, ops.Rmdir("a"), ("unlink.whiteout",)).diff("xattr:user.a", "x", "y")
    found, unknown = known.classify([hit, miss_field, miss_rule, miss_op])
    assert found == [(hit, entry)]
    assert unknown == [miss_field, miss_rule, miss_op]


def test_stale_entries_are_those_whose_rule_passed_without_them(tmp_path: Path) -> None:
    f = tmp_path / "k.toml"
    f.write_text('[[known]]\nrule = "a"\nreason = "r"\n[[known]]\nrule = "b"\nreason = "r"\n')
    a, b = load(f)
    known = KnownList([a, b])
    known.record(a)
    assert known.stale({"a", "b"}) == [b]
    assert known.stale({"a"}) == []
    assert known.stale(set()) == []  # never exercised: not judged


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[known]]\nrule = "a"\n', "'reason' is required"),
        ('[[known]]\nrule = "a"\nreason = "r"\ncolour = "x"\n', "unknown keys ['colour']"),
        ("known = 3\n", "array of tables"),
        ("[[known]\n", "k.toml"),
        ("other = 1\n", "unknown top-level keys"),
    ],
)
def test_bad_known_files(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "k.toml"
    f.write_text(text)
    with pytest.raises(KnownFileError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(f)


def test_shipped_known_lists_parse() -> None:
    root = Path(__file__).parent.parent / "conformance" / "known"
    for path in root.glob("*.toml"):
        load(path)
