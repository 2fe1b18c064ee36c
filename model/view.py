"""The merged view: what stat, read, readlink, readdir and the xattr calls show.

``stat_of`` is the one place that says what each stat field of a merged object is
(rules inode.st-ino, inode.nlink, lookup.dir-metadata-from-top).
"""

from __future__ import annotations

import errno

from model.frozen import FrozenMap
from model.lookup import Merged, child, layer, listing, root, top_inode
from model.ops import Node, StatResult, View
from model.state import Overlay, Path


def identity(state: Overlay, obj: Merged) -> int:
    """The inode number stat reports, in the model's numbering (rule inode.st-ino)."""
    top = obj.top
    if not obj.is_upper:
        return top.ino
    node = top_inode(state, obj)
    if node.is_dir:
        lowers = obj.lower_sources
        return lowers[0].ino if lowers else top.ino
    if node.origin is not None and origin_nlink(state, node.origin) == 1:
        return node.origin
    return top.ino


def origin_nlink(state: Overlay, ino: int) -> int:
    for lower in state.lowers:
        if ino in lower.inodes:
            return lower.nlink(ino)
    return 0


def stat_of(state: Overlay, obj: Merged) -> StatResult:
    node = top_inode(state, obj)
    if node.is_dir:
        nlink = 1 if obj.is_merge else layer(state, obj.top.layer).nlink(obj.top.ino)
        size = None
    else:
        nlink = layer(state, obj.top.layer).nlink(obj.top.ino)
        size = node.size
    return StatResult(
        kind=node.kind,
        mode=node.mode,
        uid=node.uid,
        gid=node.gid,
        size=size,
        nlink=nlink,
        ino=identity(state, obj),
        mtime=node.mtime,
        rdev=node.rdev if node.kind == "chr" else 0,
    )


def node_of(state: Overlay, obj: Merged) -> Node:
    inode = top_inode(state, obj)
    return Node(
        stat=stat_of(state, obj),
        data=inode.data if inode.kind == "file" else None,
        target=inode.target if inode.kind == "symlink" else None,
        xattrs=inode.xattrs,
    )


def key(path: Path) -> str:
    return "/".join(path)


def view(state: Overlay) -> View:
    """Every visible path of the merged view."""
    nodes: dict[str, Node] = {}
    pending = [root(state)]
    while pending:
        obj = pending.pop()
        nodes[key(obj.path)] = node_of(state, obj)
        if top_inode(state, obj).is_dir:
            for name in listing(state, obj):
                found = child(state, obj, name)
                if isinstance(found, Merged):
                    pending.append(found)
                else:  # readdir.pass-through: listed, but lookup finds nothing
                    nodes[key(found.path)] = Node(stat=None, errno=errno.ENOENT)
    return FrozenMap(nodes)
