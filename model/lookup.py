"""Lookup through the layers: what one name in the merged view is made of.

A merged object is the list of its *sources*: the objects of that name in the layers, topmost
first. A non-directory has one source; a directory has one per layer that merges into it. The
walk mirrors the kernel's per-layer lookup (overlayfs.rst "Upper and Lower", "Directories",
"whiteouts and opaque directories"): go down the layers of the parent's merge; a whiteout stops
everything below; a non-directory stops the merge (and is itself ignored below a directory);
an opaque directory stops the merge after itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.state import ROOT, Inode, Layer, Overlay, Path

UPPER = -1  # the layer number of the upper layer; lower layers are 0 (top), 1, ...


@dataclass(frozen=True)
class Source:
    """One layer's object inside a merged object."""

    layer: int  # UPPER or the index of a lower layer
    path: Path  # where it is inside that layer (differs from the merged path after a redirect)
    ino: int


@dataclass(frozen=True)
class Merged:
    """A visible object of the merged view."""

    path: Path
    sources: tuple[Source, ...]  # topmost first, never empty

    @property
    def top(self) -> Source:
        return self.sources[0]

    @property
    def is_upper(self) -> bool:
        return self.top.layer == UPPER

    @property
    def lower_sources(self) -> tuple[Source, ...]:
        return tuple(s for s in self.sources if s.layer != UPPER)

    @property
    def is_merge(self) -> bool:
        """Several layers make up this directory (the kernel's OVL_TYPE_MERGE)."""
        return len(self.sources) > 1

    @property
    def pure_upper(self) -> bool:
        return self.is_upper and len(self.sources) == 1


@dataclass(frozen=True)
class Absent:
    """A name that is not visible. ``whiteout`` tells whether a whiteout hides it."""

    path: Path
    whiteout: bool


def layer(state: Overlay, number: int) -> Layer:
    if number == UPPER:
        assert state.upper is not None
        return state.upper
    return state.lowers[number]


def inode(state: Overlay, source: Source) -> Inode:
    return layer(state, source.layer).inodes[source.ino]


def top_inode(state: Overlay, obj: Merged) -> Inode:
    return inode(state, obj.top)


def _layer_numbers(state: Overlay) -> list[int]:
    return ([] if state.upper is None else [UPPER]) + list(range(len(state.lowers)))


def root(state: Overlay) -> Merged:
    """The merged root: every layer's root, merged (an opaque root still stops the merge)."""
    sources: list[Source] = []
    for number in _layer_numbers(state):
        ino = layer(state, number).entries[ROOT]
        sources.append(Source(number, ROOT, ino))
        if layer(state, number).inodes[ino].opaque:
            break
    return Merged(ROOT, tuple(sources))


def child(state: Overlay, parent: Merged, name: str) -> Merged | Absent:
    """Look ``name`` up in the merged directory ``parent``."""
    path = (*parent.path, name)
    found: list[Source] = []
    for dir_source in parent.sources:
        lay = layer(state, dir_source.layer)
        lpath = (*dir_source.path, name)
        ino = lay.entries.get(lpath)
        if ino is None:
            continue
        node = lay.inodes[ino]
        if node.kind == "whiteout":
            if not found:
                return Absent(path, whiteout=True)
            break
        if found and not node.is_dir:
            break  # lookup.non-dir-stops-merge
        found.append(Source(dir_source.layer, lpath, ino))
        if not node.is_dir or node.opaque:
            break  # lookup.upper-hides-lower, lookup.opaque
    if not found:
        return Absent(path, whiteout=False)
    return Merged(path, tuple(found))


def lookup(state: Overlay, path: Path) -> Merged | None:
    """The merged object at a canonical path (no symlinks, no dots), or None."""
    obj: Merged | Absent = root(state)
    for name in path:
        assert isinstance(obj, Merged)
        if not top_inode(state, obj).is_dir:
            return None
        obj = child(state, obj, name)
        if isinstance(obj, Absent):
            return None
    assert isinstance(obj, Merged)
    return obj


def names(state: Overlay, directory: Merged) -> list[str]:
    """The visible names in a merged directory (readdir.union)."""
    candidates: set[str] = set()
    for source in directory.sources:
        candidates.update(layer(state, source.layer).children(source.path))
    return sorted(n for n in candidates if isinstance(child(state, directory, n), Merged))


def lower_positive(state: Overlay, parent: Merged, name: str) -> bool:
    """Whether a lower layer has an object of this name under ``parent`` that a removal must
    keep hidden with a whiteout: the first lower layer of the parent's merge holding the name
    decides (a whiteout there means nothing to hide)."""
    for source in parent.lower_sources:
        lay = layer(state, source.layer)
        ino = lay.entries.get((*source.path, name))
        if ino is not None:
            return lay.inodes[ino].kind != "whiteout"
    return False


def explain(state: Overlay, path: Path) -> tuple[str, ...]:
    """The IDs of the lookup rules that decide what ``path`` shows (or that it shows nothing):
    every whiteout, opaque directory, merge and shadowing met on the way down."""
    rules: list[str] = []
    obj: Merged | Absent = root(state)
    for name in path:
        if not isinstance(obj, Merged) or not top_inode(state, obj).is_dir:
            break
        layers_with_name = 0
        for source in obj.sources:
            node = layer(state, source.layer).get((*source.path, name))
            if node is None:
                continue
            layers_with_name += 1
            if node.kind == "whiteout":
                xattr = node.whiteout_form == "xattr"
                rules.append("lookup.xattr-whiteout" if xattr else "lookup.whiteout")
            elif node.opaque:
                rules.append("lookup.opaque")
        parent, obj = obj, child(state, obj, name)
        if isinstance(obj, Absent) and name in listing(state, parent):
            merged = parent.is_merge or top_inode(state, parent).origin is not None
            rules.append("readdir.lowest-xattr-whiteout" if merged else "readdir.pass-through")
        if isinstance(obj, Merged):
            if obj.is_merge:
                rules.append("lookup.dir-merge")
            if layers_with_name > len(obj.sources):
                rules.append("lookup.upper-hides-lower")
    if isinstance(obj, Merged) and obj.is_upper and _holds_copies(state, obj):
        rules.append("copy-up.parent-mtime")  # its times are what the copy-ups left
    return tuple(dict.fromkeys(rules))


def _holds_copies(state: Overlay, directory: Merged) -> bool:
    upper = layer(state, UPPER)
    return any(
        upper.inodes[upper.entries[(*directory.top.path, name)]].origin is not None
        for name in upper.children(directory.top.path)
    )


def listing(state: Overlay, directory: Merged) -> list[str]:
    """What readdir returns. A directory made of one layer's directory that was never copied
    up is read straight from that layer (readdir.pass-through), so whiteouts in it are listed;
    every other directory lists its visible names (readdir.union), and xattr whiteouts of its
    lowest layer (readdir.lowest-xattr-whiteout)."""
    node = top_inode(state, directory)
    if directory.is_merge or node.origin is not None:
        return sorted({*names(state, directory), *_lowest_xattr_whiteouts(state, directory)})
    top = directory.top
    return layer(state, top.layer).children(top.path)


def _lowest_xattr_whiteouts(state: Overlay, directory: Merged) -> set[str]:
    """readdir.lowest-xattr-whiteout: readdir filters xattr whiteouts only in lower
    directories that lookup found marked opaque=x, and lookup reads the marker only when the
    layer is not the last of the parent's lower layers. So the xattr whiteouts of the merge's
    lowest layer are listed (unless a higher layer of the merge names them) when that layer is
    the parent's last, or when the directory there is opaque (marked "y", not "x")."""
    lowest = directory.sources[-1]
    if lowest.layer == UPPER or len(directory.sources) < 2:
        return set()
    parent = root(state) if not directory.path else lookup(state, directory.path[:-1])
    assert parent is not None
    if not directory.path:
        last = len(state.lowers) - 1
    else:
        parent_lowers = parent.lower_sources
        last = parent_lowers[-1].layer if parent_lowers else UPPER
    # An opaque directory is marked "y", not "x": its xattr whiteouts are never filtered.
    if lowest.layer != last and not inode(state, lowest).opaque:
        return set()
    lay = layer(state, lowest.layer)
    higher: set[str] = set()
    for source in directory.sources[:-1]:
        higher.update(layer(state, source.layer).children(source.path))
    found = set()
    for name in lay.children(lowest.path):
        node = lay.inodes[lay.entries[(*lowest.path, name)]]
        if node.kind == "whiteout" and node.whiteout_form == "xattr" and name not in higher:
            found.add(name)
    return found
