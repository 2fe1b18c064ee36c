"""Path resolution through the merged view (rule path.*), as the VFS does it.

The overlay resolves paths like any filesystem: one name at a time, following symlinks through
the merged view. What differs between calls is how the *last* component is treated, so the
walk stops at the last component's parent and each call decides the rest.
"""

from __future__ import annotations

import errno as E
from dataclasses import dataclass
from typing import Literal

from model.lookup import Absent, Merged, child, lookup, root, top_inode
from model.state import Overlay

MAXSYMLINKS = 40

LastType = Literal["norm", "dot", "dotdot", "root"]


class Errno(Exception):
    """A call fails with this errno. ``rule`` is the ID of the rule that decided it."""

    def __init__(self, errno: int, rule: str) -> None:
        super().__init__(E.errorcode.get(errno, str(errno)), rule)
        self.errno = errno
        self.rule = rule


class Escape(Exception):
    """The path would leave the merged root ('..' above it, or an absolute symlink).

    The suite never performs such a call: on a real mount it would reach the host.
    """


@dataclass
class Walk:
    """The state of one resolution: how many symlinks it has followed so far."""

    links: int = 0

    def follow(self) -> None:
        self.links += 1
        if self.links > MAXSYMLINKS:
            raise Errno(E.ELOOP, "path.symlink")


@dataclass(frozen=True)
class Last:
    """The parent directory of a path's last component, and what that component is."""

    parent: Merged
    name: str  # "" for the root
    type: LastType
    trailing: bool  # the path ends in '/' after the last name
    found: Merged | Absent | None  # the object the name gives (None for dots and the root)

    @property
    def exists(self) -> bool:
        return isinstance(self.found, Merged)


def split(path: str) -> tuple[list[str], bool]:
    if path.startswith("/"):
        raise Escape(path)
    parts = [p for p in path.split("/") if p]
    trailing = path.endswith("/") and bool(parts)
    return parts, trailing


def _dotdot(state: Overlay, current: Merged) -> Merged:
    if not current.path:
        raise Escape("..")
    parent = lookup(state, current.path[:-1])
    assert parent is not None
    return parent


def _walk_dirs(state: Overlay, start: Merged, names: list[str], walk: Walk) -> Merged:
    """Resolve every name as a directory (the components before the last)."""
    current = start
    for name in names:
        current = _step(state, current, name, walk, follow=True)
        if not top_inode(state, current).is_dir:
            raise Errno(E.ENOTDIR, "path.resolve")
    return current


def _step(state: Overlay, current: Merged, name: str, walk: Walk, follow: bool) -> Merged:
    if name == ".":
        return current
    if name == "..":
        return _dotdot(state, current)
    found = child(state, current, name)
    if isinstance(found, Absent):
        raise Errno(E.ENOENT, "path.resolve")
    if follow and top_inode(state, found).kind == "symlink":
        return follow_link(state, current, found, walk)
    return found


def follow_link(state: Overlay, directory: Merged, link: Merged, walk: Walk) -> Merged:
    """The object a symlink (found in ``directory``) points to; it must exist."""
    walk.follow()
    target = top_inode(state, link).target
    names, trailing = split(target)
    if not names:
        return directory
    parent = _walk_dirs(state, directory, names[:-1], walk)
    found = _step(state, parent, names[-1], walk, follow=True)
    if trailing and not top_inode(state, found).is_dir:
        raise Errno(E.ENOTDIR, "path.trailing-slash")  # a target "x/" must be a directory
    return found


def parent_of(state: Overlay, path: str, walk: Walk | None = None) -> Last:
    """Resolve everything but the last component; look the last one up without following."""
    walk = walk or Walk()
    names, trailing = split(path)
    if not names:
        return Last(root(state), "", "root", trailing=False, found=None)
    parent = _walk_dirs(state, root(state), names[:-1], walk)
    last = names[-1]
    if last == ".":
        return Last(parent, last, "dot", trailing, None)
    if last == "..":
        return Last(parent, last, "dotdot", trailing, None)
    return Last(parent, last, "norm", trailing, child(state, parent, last))


def dots(state: Overlay, last: Last) -> Merged:
    """The directory a last component of '.', '..' or the root names."""
    return _dotdot(state, last.parent) if last.type == "dotdot" else last.parent


def resolve(state: Overlay, path: str, follow: bool) -> Merged:
    """The existing object a path names. A trailing slash follows a final symlink and
    requires a directory."""
    walk = Walk()
    last = parent_of(state, path, walk)
    if last.type != "norm":
        return dots(state, last)
    if isinstance(last.found, Absent) or last.found is None:
        raise Errno(E.ENOENT, "path.resolve")
    obj = last.found
    if top_inode(state, obj).kind == "symlink" and (follow or last.trailing):
        obj = follow_link(state, last.parent, obj, walk)
    if last.trailing and not top_inode(state, obj).is_dir:
        raise Errno(E.ENOTDIR, "path.trailing-slash")
    return obj


def resolve_for_create(state: Overlay, path: str) -> Last:
    """Like ``parent_of``, but a final symlink is followed, as open(O_CREAT) does: a dangling
    symlink yields the place where its target would be created. Each last component with a
    trailing slash is EISDIR before it is even looked up (vfs:open_last_lookups)."""
    walk = Walk()
    last = parent_of(state, path, walk)
    if last.type == "norm" and last.trailing:
        raise Errno(E.EISDIR, "path.trailing-slash")
    while (
        last.type == "norm"
        and isinstance(last.found, Merged)
        and top_inode(state, last.found).kind == "symlink"
    ):
        walk.follow()
        target = top_inode(state, last.found).target
        names, trailing = split(target)
        if not names:
            return Last(last.parent, ".", "dot", last.trailing, None)
        parent = _walk_dirs(state, last.parent, names[:-1], walk)
        name = names[-1]
        if trailing and name not in (".", ".."):
            raise Errno(E.EISDIR, "path.trailing-slash")
        if name in (".", ".."):
            kind: LastType = "dot" if name == "." else "dotdot"
            return Last(parent, name, kind, trailing, None)
        last = Last(parent, name, "norm", trailing, child(state, parent, name))
    return last
