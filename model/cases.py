"""Named cases: deterministic scenarios, at least one per model rule and per Docker statement.

Each case is data: an initial layer stack, a list of operations, and what the specification
says each step returns: the spec's worked examples. ``tests/test_cases.py`` checks the model
against ``expect``; the conformance suite (``conformance/test_named_cases.py``) runs the same
steps on an implementation and compares it with the model, so a failing case names its rules.

Copy-up is invisible in the merged view except through hard links (a copied-up name leaves its
lower hard link: rule link.broken-by-copy-up), which is why many copy-up cases use a lower file
with two names and look at st_nlink.
"""

from __future__ import annotations

import errno as E
from dataclasses import dataclass, field

from model.build import MTIME, Dir, Entry, Fifo, File, HardLink, Symlink, Whiteout, stack
from model.frozen import FrozenMap
from model.ops import (
    Chmod,
    Chown,
    GetXattr,
    Link,
    ListXattr,
    Lstat,
    Mkdir,
    Mknod,
    Op,
    Open,
    Read,
    Readdir,
    Readlink,
    Remount,
    RemoveXattr,
    Rename,
    Rmdir,
    SetXattr,
    Stat,
    Truncate,
    Unlink,
    Utimes,
    Value,
    Write,
)  # fmt: skip
from model.ops import (
    Symlink as SymlinkOp,
)
from model.state import Overlay


@dataclass(frozen=True)
class Expect:
    """What one step returns: an errno, or success with (optionally) a value or stat fields."""

    errno: int = 0
    value: Value = None
    check_value: bool = False
    fields: FrozenMap[str, object] = field(default_factory=FrozenMap)
    same_ino_as: int | None = None  # the stat of this earlier step has the same st_ino
    other_ino_than: int | None = None  # ... or a different one


def ok() -> Expect:
    return Expect()


def err(errno: int) -> Expect:
    return Expect(errno=errno)


def val(value: Value | set[str]) -> Expect:
    return Expect(value=frozenset(value) if isinstance(value, set) else value, check_value=True)


def st(
    same_ino_as: int | None = None, other_ino_than: int | None = None, **fields: object
) -> Expect:
    return Expect(fields=FrozenMap(fields), same_ino_as=same_ino_as, other_ino_than=other_ino_than)


@dataclass(frozen=True)
class Case:
    id: str  # unique, e.g. "copy-up.triggers/open-wronly"
    rules: tuple[str, ...]  # the rule IDs the case exercises
    stack: Overlay  # the initial state
    steps: tuple[Op, ...]
    expect: tuple[Expect, ...]  # one per step
    docker: tuple[int, ...] = ()  # statements of docker-overlay-notes.md the case covers


def case(
    id: str, rules: str, state: Overlay, *steps: tuple[Op, Expect], docker: tuple[int, ...] = ()
) -> Case:
    return Case(
        id, tuple(rules.split()), state, tuple(s[0] for s in steps), tuple(s[1] for s in steps),
        docker,
    )  # fmt: skip


W, RW, RO = ("O_WRONLY",), ("O_RDWR",), ("O_RDONLY",)
LINKED: dict[str, Entry] = {"a": "lower data", "b": HardLink("a")}  # one lower inode, two names
DIR_A = {"d": {"x": "1"}}

CASES: tuple[Case, ...] = (
    # --- lookup ---
    case("lookup/upper-file-hides-lower", "lookup.upper-hides-lower read.from-top",
         stack({"a": "lower"}, upper={"a": "upper"}),
         (Read("a"), val(b"upper")), docker=(5,)),
    case("lookup/top-lower-hides-bottom", "lookup.upper-hides-lower",
         stack({"a": "top"}, {"a": "bottom"}),
         (Read("a"), val(b"top"))),
    case("lookup/upper-file-hides-lower-dir", "lookup.upper-hides-lower",
         stack({"d": {"x": "1"}}, upper={"d": "file"}),
         (Lstat("d"), st(kind="file")), (Readdir(""), val({"d"})), (Stat("d/x"), err(E.ENOTDIR))),
    case("lookup/only-lower", "read.from-top", stack({"a": "lower"}),
         (Read("a"), val(b"lower")), docker=(5,)),
    case("lookup/only-upper", "read.from-top", stack({}, upper={"a": "upper"}),
         (Read("a"), val(b"upper")), docker=(5,)),
    case("lookup/dir-merge", "lookup.dir-merge readdir.union",
         stack({"d": {"x": "1"}}, {"d": {"y": "2"}}, upper={"d": {"z": "3"}}),
         (Readdir("d"), val({"x", "y", "z"})), (Read("d/y"), val(b"2")), docker=(3,)),
    case("lookup/dir-metadata-from-top", "lookup.dir-metadata-from-top",
         stack({"d": Dir({"x": "1"}, mode=0o700, uid=3, xattrs={"user.who": b"lower"})},
               upper={"d": Dir(mode=0o751, uid=4, xattrs={"user.who": b"upper"})}),
         (Stat("d"), st(mode=0o751, uid=4)), (GetXattr("d", "user.who"), val(b"upper")),
         (Readdir("d"), val({"x"}))),
    case("lookup/non-dir-stops-merge", "lookup.non-dir-stops-merge",
         stack({"d": {"x": "1"}}, {"d": "file"}, {"d": {"y": "2"}}),
         (Readdir("d"), val({"x"}))),
    case("lookup/whiteout-chardev", "lookup.whiteout readdir.union",
         stack({"a": Whiteout()}, {"a": "hidden", "b": "b"}),
         (Stat("a"), err(E.ENOENT)), (Readdir(""), val({"b"}))),
    case("lookup/whiteout-xattr", "lookup.xattr-whiteout",
         stack({"d": {"a": Whiteout("xattr"), "c": "c"}}, {"d": {"a": "hidden", "b": "b"}}),
         (Stat("d/a"), err(E.ENOENT)), (Readdir("d"), val({"b", "c"}))),
    case("lookup/opaque-lower", "lookup.opaque",
         stack({"d": Dir({"x": "1"}, opaque=True)}, {"d": {"y": "2"}}),
         (Readdir("d"), val({"x"})), (Stat("d/y"), err(E.ENOENT))),
    case("lookup/opaque-upper", "lookup.opaque",
         stack({"d": {"y": "2"}}, upper={"d": Dir({"x": "1"}, opaque=True)}),
         (Readdir("d"), val({"x"}))),
    case("readdir/pass-through", "readdir.pass-through rmdir.empty",
         stack({"d": {"w": Whiteout(), "f": "1"}, "o": Dir({"w": Whiteout()}, opaque=True)},
               {"o": {"w": "hidden"}}),
         (Readdir("d"), val({"w", "f"})), (Lstat("d/w"), err(E.ENOENT)),
         (Readdir("o"), val({"w"})), (Rmdir("o"), ok()), (Readdir(""), val({"d"})),
         (Chmod("d", 0o700), ok()), (Readdir("d"), val({"f"}))),
    case("readdir/lowest-xattr-whiteout", "readdir.lowest-xattr-whiteout",
         stack({"d": {"w": Whiteout()}}, {"d": {"c": Whiteout("xattr"), "w": Whiteout("xattr"),
                                                "e": Whiteout()}}),
         (Readdir("d"), val({"c"})), (Lstat("d/c"), err(E.ENOENT)), (Readdir(""), val({"d"}))),
    case("readdir/checked-xattr-whiteout", "readdir.lowest-xattr-whiteout lookup.whiteout",
         stack({"x": "1", "d": {"c": Whiteout("xattr"), "f": "1"}}, {"y": "2"}),
         (Readdir("d"), val({"c", "f"})), (Chmod("d", 0o700), ok()), (Readdir("d"), val({"f"}))),
    case("readdir/xattr-whiteout-in-opaque", "readdir.lowest-xattr-whiteout",
         stack({"x": "1", "d": Dir({"c": Whiteout("xattr"), "f": "1"}, opaque=True)}, {"d": {}}),
         (Chmod("d", 0o700), ok()), (Readdir("d"), val({"c", "f"}))),
    case("readdir/hard-links-across-directories", "readdir.union inode.nlink",
         stack({"a": {"a": {"a": HardLink("c")}, "b": HardLink("c"), "c": {"a": HardLink("c")}},
                "b": {"a": {"a": Symlink("a")}}, "c": "", "d": {"a": HardLink("c")}},
               {"a": Symlink("a")}),
         (Readdir(""), val({"a", "b", "c", "d"})), (Readdir("a"), val({"a", "b", "c"})),
         (Lstat("c"), st(nlink=5))),
    case("readdir/no-duplicates", "readdir.union",
         stack({"a": "1", "d": {"x": "1"}}, {"a": "2", "d": {"x": "2", "y": "3"}}),
         (Readdir(""), val({"a", "d"})), (Readdir("d"), val({"x", "y"}))),
    # --- path resolution ---
    case("path/missing-and-notdir", "path.resolve",
         stack({"a": "1", "d": {"x": "1"}}),
         (Stat("m/x"), err(E.ENOENT)), (Stat("a/x"), err(E.ENOTDIR)),
         (Read("d/../a"), val(b"1")), (Read("./d/./x"), val(b"1"))),
    case("path/symlinks", "path.symlink",
         stack({"d": {"x": "1"}, "s": Symlink("d"), "t": Symlink("s/x"), "n": Symlink("nope"),
                "l1": Symlink("l2"), "l2": Symlink("l1"), "u": Symlink("d/../d/x")}),
         (Read("s/x"), val(b"1")), (Read("t"), val(b"1")), (Read("u"), val(b"1")),
         (Stat("n"), err(E.ENOENT)), (Lstat("n"), st(kind="symlink")),
         (Stat("l1"), err(E.ELOOP)), (Readlink("t"), val("s/x"))),
    case("path/trailing-slash", "path.trailing-slash",
         stack({"a": "1", "d": {}, "s": Symlink("d"), "f": Symlink("a")}),
         (Stat("a/"), err(E.ENOTDIR)), (Lstat("s/"), st(kind="dir")),
         (Lstat("f/"), err(E.ENOTDIR)),
         (Open("n/", ("O_CREAT", "O_WRONLY")), err(E.EISDIR)),
         (SymlinkOp("x", "n/"), err(E.ENOENT)), (Unlink("a/"), err(E.ENOTDIR)),
         (Mkdir("n/"), ok()), (Rmdir("n/"), ok()), (Rename("a", "b/"), err(E.ENOTDIR))),
    case("path/symlink-target-trailing-slash", "path.trailing-slash path.symlink",
         stack({"a": "x", "d": {}, "g": Symlink("a/"), "e": Symlink("d/")}),
         (Stat("g"), err(E.ENOTDIR)), (Read("g"), err(E.ENOTDIR)),
         (Chmod("g", 0o600), err(E.ENOTDIR)),
         (Lstat("g"), st(kind="symlink")), (Stat("e"), st(kind="dir")), (Readdir("e"), val(set()))),
    case("path/dots", "path.dots",
         stack({"d": {"x": "1"}}),
         (Mkdir("d/."), err(E.EEXIST)), (Rmdir("d/."), err(E.EINVAL)),
         (Rmdir("d/.."), err(E.ENOTEMPTY)), (Unlink("d/."), err(E.EISDIR)),
         (Rename("d/.", "e"), err(E.EBUSY)),
         (Rename("d/x", "d/..", "RENAME_NOREPLACE"), err(E.EEXIST))),
    # --- copy-up ---
    *(
        case(f"copy-up/trigger-{name}", "copy-up.triggers link.broken-by-copy-up",
             stack(LINKED), (step, ok()), (Lstat("a"), st(nlink=nlink_a)),
             (Lstat("b"), st(nlink=2)), docker=(6,))
        for name, step, nlink_a in (
            ("open-wronly", Open("a", W), 1),
            ("open-rdwr", Open("a", RW), 1),
            ("open-trunc", Open("a", ("O_RDONLY", "O_TRUNC")), 1),
            ("truncate", Truncate("a", 3), 1),
            ("chmod", Chmod("a", 0o600), 1),
            ("chown", Chown("a", 5, 6), 1),
            ("utimes", Utimes("a", MTIME + 5), 1),
            ("setxattr", SetXattr("a", "user.k", b"v"), 1),
            ("link", Link("a", "c"), 2),
        )
    ),
    case("copy-up/trigger-removexattr", "copy-up.triggers link.broken-by-copy-up",
         stack({"a": File("x", xattrs={"user.k": b"v"}), "b": HardLink("a")}),
         (RemoveXattr("a", "user.k"), ok()), (Lstat("a"), st(nlink=1)),
         (ListXattr("b"), val({"user.k"})), (ListXattr("a"), val(set()))),
    *(
        case(f"copy-up/not-on-{name}", "copy-up.not-on-read",
             stack({"a": File("x", xattrs={"user.k": b"v"}), "b": HardLink("a"),
                    "s": Symlink("a"), "t": Symlink("a"), "u": HardLink("t")}),
             (step, ok()), (Lstat("a"), st(nlink=2)), (Lstat("t"), st(nlink=2)))
        for name, step in (
            ("open-rdonly", Open("a", RO)),
            ("read", Read("a")),
            ("stat", Stat("a")),
            ("readlink", Readlink("t")),
            ("getxattr", GetXattr("a", "user.k")),
            ("listxattr", ListXattr("a")),
        )
    ),
    case("copy-up/preserves", "copy-up.preserves",
         stack({"a": File("data", mode=0o640, uid=7, gid=8, mtime=MTIME + 1,
                          xattrs={"user.k": b"v"})}),
         (Open("a", W), ok()),
         (Stat("a"), st(mode=0o640, uid=7, gid=8, mtime=MTIME + 1, size=4)),
         (GetXattr("a", "user.k"), val(b"v")), (Read("a"), val(b"data")), docker=(6,)),
    case("copy-up/preserves-symlink", "copy-up.preserves copy-up.symlink",
         stack({"s": Symlink("target", uid=1, mtime=MTIME + 6), "t": Symlink("s", uid=4, gid=5)}),
         (Chown("s", 2, 3), ok()), (Lstat("s"), st(uid=2, gid=3, kind="symlink", mtime=MTIME + 6)),
         (Readlink("s"), val("target")), (Link("t", "u"), ok()),
         (Lstat("u"), st(uid=4, gid=5, mtime=MTIME, nlink=2))),
    case("copy-up/parents", "copy-up.parents copy-up.parent-mtime",
         stack({"d": Dir({"e": Dir({"f": "1"}, mode=0o711, mtime=MTIME + 2)}, mode=0o700, uid=5,
                         mtime=MTIME + 3, xattrs={"user.d": b"1"})}),
         (Write("d/e/f", b"2"), ok()),
         (Stat("d"), st(mode=0o700, uid=5, mtime=MTIME + 3)), (Stat(""), st(mtime=MTIME)),
         (Stat("d/e"), st(mode=0o711, mtime=MTIME + 2)),
         (GetXattr("d", "user.d"), val(b"1")), (Read("d/e/f"), val(b"2"))),
    case("copy-up/lower-unchanged", "copy-up.lower-unchanged",
         stack({"a": "lower"}, {"a": "bottom"}),
         (Write("a", b"new"), ok()), (Read("a"), val(b"newer")), (Unlink("a"), ok()),
         (Stat("a"), err(E.ENOENT)), docker=(2, 6)),
    case("copy-up/special-files", "copy-up.special-files open.fifo-nonblock",
         stack({"p": Fifo(), "q": HardLink("p")}),
         (Open("p", RW), ok()), (Lstat("p"), st(nlink=2, kind="fifo")),
         (Open("p", W), err(E.ENXIO)), (Read("p"), val(b"")), (Chmod("p", 0o600), ok()),
         (Lstat("p"), st(kind="fifo", mode=0o600, nlink=1))),
    case("copy-up/on-failed-setxattr", "copy-up.on-failed-setxattr xattr.flags",
         stack({"a": File("x", xattrs={"user.k": b"v"}), "b": HardLink("a"),
                "c": "y", "e": HardLink("c")}),
         (SetXattr("a", "user.k", b"w", "XATTR_CREATE"), err(E.EEXIST)),
         (Lstat("a"), st(nlink=1)), (GetXattr("a", "user.k"), val(b"v")),
         (RemoveXattr("c", "user.none"), err(E.ENODATA)), (Lstat("c"), st(nlink=2))),
    # --- creating and removing ---
    case("create/in-lower-dir", "create.upper copy-up.parents",
         stack({"d": {"x": "1"}}),
         (Open("d/n", ("O_CREAT", "O_WRONLY"), 0o600), ok()),
         (Stat("d/n"), st(mode=0o600, uid=0, size=0)), (Readdir("d"), val({"x", "n"})),
         docker=(2,)),
    case("create/exists", "create.exists open.flags",
         stack({"a": "1", "d": {}}),
         (Mkdir("d"), err(E.EEXIST)), (Mkdir("a"), err(E.EEXIST)),
         (Open("a", ("O_CREAT", "O_EXCL", "O_WRONLY")), err(E.EEXIST)),
         (SymlinkOp("x", "a"), err(E.EEXIST)), (Link("a", "d"), err(E.EEXIST)),
         (Mknod("a"), err(E.EEXIST))),
    case("create/dir-over-whiteout", "create.over-whiteout rmdir.empty unlink.whiteout",
         stack({"d": {"x": "1"}}),
         (Unlink("d/x"), ok()), (Rmdir("d"), ok()), (Mkdir("d"), ok()),
         (Readdir("d"), val(set())), (Stat("d/x"), err(E.ENOENT))),
    case("create/dir-over-lower-file", "create.over-whiteout",
         stack({"d": "file"}, {"d": {"x": "1"}}),
         (Unlink("d"), ok()), (Mkdir("d"), ok()), (Readdir("d"), val(set()))),
    case("unlink/whiteout", "unlink.whiteout",
         stack({"a": "lower", "b": "b"}),
         (Unlink("a"), ok()), (Stat("a"), err(E.ENOENT)), (Readdir(""), val({"b"})),
         (Open("a", ("O_CREAT", "O_WRONLY")), ok()), (Read("a"), val(b"")), docker=(7,)),
    case("unlink/pure-upper", "unlink.pure-upper create.upper",
         stack({"b": "b"}),
         (Open("a", ("O_CREAT", "O_WRONLY")), ok()), (Unlink("a"), ok()),
         (Stat("a"), err(E.ENOENT)), (Readdir(""), val({"b"}))),
    case("unlink/dir-errors", "unlink.dir",
         stack({"a": "1", "d": {}}),
         (Unlink("d"), err(E.EISDIR)), (Rmdir("a"), err(E.ENOTDIR)), (Rmdir(""), err(E.EBUSY))),
    case("rmdir/not-empty", "rmdir.empty",
         stack({"d": {"x": "1"}}, {"d": {"y": "2"}}),
         (Rmdir("d"), err(E.ENOTEMPTY)), (Unlink("d/x"), ok()), (Rmdir("d"), err(E.ENOTEMPTY)),
         (Unlink("d/y"), ok()), (Rmdir("d"), ok()), (Stat("d"), err(E.ENOENT))),
    case("mknod/whiteout-forbidden", "mknod.whiteout-forbidden",
         stack({}), (Mknod("w", "chr", 0o644, 0), err(E.EPERM)), (Stat("w"), err(E.ENOENT))),
    case("mknod/fifo", "mknod.fifo", stack({}),
         (Mknod("p", "fifo", 0o640), ok()), (Lstat("p"), st(kind="fifo", mode=0o640))),
    # --- rename ---
    case("rename/whiteout-flag", "rename.flags",
         stack({}, upper={"a": "1"}),
         (Rename("a", "b", "RENAME_WHITEOUT"), err(E.EINVAL)), (Read("a"), val(b"1"))),
    case("rename/vfs-checks", "rename.vfs-checks",
         stack({"a": "1", "d": {}}, upper={"p": {"q": {}}}),
         (Rename("m", "x"), err(E.ENOENT)),
         (Rename("a", "d", "RENAME_NOREPLACE"), err(E.EEXIST)),
         (Rename("a", "m", "RENAME_EXCHANGE"), err(E.ENOENT)),
         (Rename("a", "x/"), err(E.ENOTDIR)), (Rename("p", "p/q/r"), err(E.EINVAL)),
         (Rename("p/q", "p"), err(E.ENOTEMPTY)), (Rename("p", "a"), err(E.ENOTDIR)),
         (Rename("a", "p"), err(E.EISDIR))),
    case("rename/same-inode", "rename.same-inode",
         stack({}, upper={"a": "1", "b": HardLink("a")}),
         (Rename("a", "b"), ok()), (Readdir(""), val({"a", "b"})), (Rename("a", "./a"), ok())),
    case("rename/dir-exdev", "rename.dir-exdev",
         stack({"d": {"x": "1"}, "m": {}}, upper={"m": {}, "p": {}}),
         (Rename("d", "e"), err(E.EXDEV)), (Rename("m", "e"), err(E.EXDEV)),
         (Rename("p", "e"), ok()), (Readdir(""), val({"d", "m", "e"})),
         (Rename("e", "d", "RENAME_EXCHANGE"), err(E.EXDEV)), docker=(8,)),
    case("rename/dir-target-not-empty", "rename.dir-target-not-empty",
         stack({"d": {"x": "1"}}, upper={"p": {}}),
         (Rename("p", "d"), err(E.ENOTEMPTY))),
    case("rename/non-dir", "rename.non-dir unlink.whiteout",
         stack({"a": "1", "d": {}}),
         (Rename("a", "d/b"), ok()), (Read("d/b"), val(b"1")), (Stat("a"), err(E.ENOENT)),
         (Readdir(""), val({"d"}))),
    case("rename/over-lower-file", "rename.non-dir",
         stack({"a": "1", "b": "2"}),
         (Rename("a", "b"), ok()), (Read("b"), val(b"1")), (Readdir(""), val({"b"}))),
    case("rename/opaque", "rename.opaque",
         stack({"d": {"x": "1"}}),
         (Unlink("d/x"), ok()), (Mkdir("p"), ok()), (Rename("p", "d"), ok()),
         (Readdir("d"), val(set())), (Stat("d/x"), err(E.ENOENT))),
    case("rename/exchange", "rename.exchange",
         stack({"a": "1", "b": "2"}),
         (Rename("a", "b", "RENAME_EXCHANGE"), ok()), (Read("a"), val(b"2")),
         (Read("b"), val(b"1"))),
    # --- attributes ---
    case("attr/follow", "attr.chmod-chown-utimes",
         stack({"a": File("1", mode=0o644), "s": Symlink("a")}),
         (Chmod("s", 0o600), ok()), (Stat("a"), st(mode=0o600)),
         (Chown("s", 4, 4), ok()), (Lstat("s"), st(uid=4)), (Stat("a"), st(uid=0)),
         (Chown("s", 5, 5, True), ok()), (Stat("a"), st(uid=5)),
         (Utimes("s", MTIME + 9), ok()), (Stat("a"), st(mtime=MTIME + 9))),
    case("attr/mtime-kept", "attr.mtime",
         stack({"a": File("1", mtime=MTIME + 4, xattrs={"user.k": b"v"})}),
         (Chmod("a", 0o600), ok()), (SetXattr("a", "user.j", b"w"), ok()),
         (Chown("a", 1, 1), ok()), (Stat("a"), st(mtime=MTIME + 4))),
    case("xattr/user-namespace", "xattr.user-namespace",
         stack({"p": Fifo()}),
         (SetXattr("p", "user.k", b"v"), err(E.EPERM)),
         (GetXattr("p", "user.k"), err(E.ENODATA)), (RemoveXattr("p", "user.k"), err(E.EPERM))),
    case("xattr/private-hidden", "xattr.private-hidden",
         stack({"d": Dir({"x": "1"}, opaque=True, xattrs={"user.a": b"1"})}, {"d": {"y": "2"}}),
         (ListXattr("d"), val({"user.a"}))),
    case("xattr/flags", "xattr.flags",
         stack({"a": File("1", xattrs={"user.k": b"v"})}),
         (SetXattr("a", "user.k", b"w", "XATTR_CREATE"), err(E.EEXIST)),
         (SetXattr("a", "user.n", b"w", "XATTR_REPLACE"), err(E.ENODATA)),
         (RemoveXattr("a", "user.n"), err(E.ENODATA)), (GetXattr("a", "user.n"), err(E.ENODATA)),
         (SetXattr("a", "user.k", b"w", "XATTR_REPLACE"), ok()),
         (GetXattr("a", "user.k"), val(b"w")), (RemoveXattr("a", "user.k"), ok()),
         (ListXattr("a"), val(set()))),
    # --- open, read, write ---
    case("open/flags", "open.flags",
         stack({"a": "1", "d": {}, "s": Symlink("a"), "n": Symlink("d/new")}),
         (Open("x", ("O_CREAT", "O_DIRECTORY")), err(E.EINVAL)),
         (Open("s", ("O_RDONLY", "O_NOFOLLOW")), err(E.ELOOP)),
         (Open("a", ("O_RDONLY", "O_DIRECTORY")), err(E.ENOTDIR)),
         (Open("d", W), err(E.EISDIR)), (Open("d", ("O_CREAT", "O_RDONLY")), err(E.EISDIR)),
         (Open("s", ("O_CREAT", "O_EXCL", "O_WRONLY")), err(E.EEXIST)),
         (Open("n", ("O_CREAT", "O_WRONLY"), 0o640), ok()), (Stat("d/new"), st(mode=0o640))),
    case("open/create-checks-trailing-slash-first", "open.flags path.trailing-slash",
         stack({"d": {"a": Symlink("a"), "v": Symlink("..")}, "s": Symlink("x/"),
                "t": Symlink("d/.")}),
         (Open("d/a/", ("O_RDONLY", "O_CREAT")), err(E.EISDIR)),
         (Open("d/a", ("O_RDONLY", "O_CREAT")), err(E.ELOOP)),
         (Open("s", ("O_WRONLY", "O_CREAT")), err(E.EISDIR)),
         (Open("t", ("O_WRONLY", "O_CREAT")), err(E.EISDIR)),
         (Open("d/v", ("O_RDONLY", "O_CREAT", "O_EXCL")), err(E.EEXIST)),
         (Open("d/.", ("O_RDONLY", "O_CREAT", "O_EXCL")), err(E.EEXIST))),
    case("read/errors", "read.errors",
         stack({"a": "1", "d": {}, "p": Fifo()}),
         (Read("d"), err(E.EISDIR)), (Readlink("a"), err(E.EINVAL)),
         (Readdir("a"), err(E.ENOTDIR)), (Truncate("d", 0), err(E.EISDIR)),
         (Truncate("p", 0), err(E.EINVAL))),
    case("write/data", "write.data",
         stack({"a": "ab"}),
         (Write("a", b"xy", 3), ok()), (Read("a"), val(b"ab\0xy")), (Truncate("a", 1), ok()),
         (Read("a"), val(b"a")), (Truncate("a", 3), ok()), (Read("a"), val(b"a\0\0"))),
    # --- hard links and inodes ---
    case("link/copy-up", "link.copy-up",
         stack({"a": "1", "d": {}}),
         (Link("a", "c"), ok()), (Read("c"), val(b"1")), (Lstat("a"), st(nlink=2)),
         (Lstat("c"), st(nlink=2)), (Link("d", "e"), err(E.EPERM))),
    case("link/broken-by-copy-up", "link.broken-by-copy-up inode.st-ino",
         stack(LINKED),
         (Lstat("a"), st(nlink=2)), (Lstat("b"), st(nlink=2, same_ino_as=0)),
         (Write("a", b"new"), ok()), (Read("b"), val(b"lower data")),
         (Lstat("a"), st(nlink=1, other_ino_than=0)), (Lstat("b"), st(nlink=2, same_ino_as=0)),
         (Remount(), ok()), (Lstat("b"), st(nlink=2, same_ino_as=0)), docker=(4,)),
    case("inode/st-ino-stable", "inode.st-ino mount.remount",
         stack({"a": "1", "d": {"x": "1"}}),
         (Stat("a"), st()), (Stat("d"), st()), (Chmod("a", 0o600), ok()),
         (Stat("a"), st(same_ino_as=0)), (Write("d/x", b"2"), ok()),
         (Stat("d"), st(same_ino_as=1)), (Remount(), ok()), (Stat("a"), st(same_ino_as=0)),
         (Rename("a", "b"), ok()), (Stat("b"), st(same_ino_as=0))),
    case("inode/nlink", "inode.nlink",
         stack({"m": {"x": {}}, "o": {"x": {}, "y": {}}}, {"m": {"z": {}}}, upper={"u": {"v": {}}}),
         (Stat("m"), st(nlink=1)), (Stat("o"), st(nlink=4)), (Stat("u"), st(nlink=3)),
         (Stat(""), st(nlink=1))),
    # --- mounts ---
    case("mount/read-only", "mount.read-only",
         stack({"a": "1", "d": {}}, {"b": "2"}, read_only=True),
         (Read("a"), val(b"1")), (Unlink("a"), err(E.EROFS)), (Mkdir("n"), err(E.EROFS)),
         (Open("a", W), err(E.EROFS)), (Chmod("a", 0o600), err(E.EROFS)),
         (Rename("a", "b"), err(E.EROFS)), (Open("a", RO), ok())),
    case("mount/read-only-before-lookup", "mount.read-only",
         stack({"a": "1"}, {"b": "2"}, read_only=True),
         (Rename("a/", "a/"), err(E.EROFS)), (Unlink("missing"), err(E.EROFS)),
         (Rmdir("missing"), err(E.EROFS))),
    case("mount/remount", "mount.remount",
         stack({"a": "1", "d": {"x": "1"}}),
         (Write("a", b"2"), ok()), (Unlink("d/x"), ok()), (Remount(), ok()),
         (Read("a"), val(b"2")), (Readdir("d"), val(set()))),
    case("docker/image-and-container", "docker.layers lookup.dir-merge copy-up.lower-unchanged",
         stack({"app": {"cfg": "v3"}},                       # RUN: change a file
               {"app": {"cfg": "v2", "bin": "x"}},           # COPY: add files
               {"etc": {"os": "debian"}, "app": {}}),        # FROM: the base image
         (Readdir(""), val({"app", "etc"})), (Read("app/cfg"), val(b"v3")),
         (Write("app/cfg", b"container"), ok()), (Open("app/new", ("O_CREAT", "O_WRONLY")), ok()),
         (Unlink("etc/os"), ok()), (Readdir("app"), val({"cfg", "bin", "new"})),
         (Read("app/cfg"), val(b"container")), (Readdir("etc"), val(set())),
         docker=(1, 2, 3)),
    case("docker/old-driver-hardlinks", "inode.st-ino link.broken-by-copy-up",
         stack({"l1": {"f": "shared"}, "l2": {"f": HardLink("l1/f")}}),
         (Stat("l1/f"), st(nlink=2)), (Stat("l2/f"), st(nlink=2, same_ino_as=0)), docker=(3, 4)),
)  # fmt: skip

CASES_BY_ID: dict[str, Case] = {c.id: c for c in CASES}
assert len(CASES_BY_ID) == len(CASES), "duplicate case IDs"

#: Statements of docker-overlay-notes.md that are not filesystem semantics, and why.
DOCKER_NOT_SEMANTIC: dict[int, str] = {
    9: "performance against aufs/devicemapper and the advice to use volumes for write-heavy "
    "files: not behaviour of the overlay; measured by bench/, not asserted",
    10: "choosing the storage driver in /etc/docker/daemon.json: Docker configuration, "
    "not overlay behaviour",
}
