"""Copy-up: moving an object from a lower layer into the upper layer before it changes.

overlayfs.rst "Non-directories": the first change to a lower object copies it to the upper
layer (parents first), and from then on the upper copy is the object. What is copied: data,
mode, owner, mtime, xattrs, symlink target (rule copy-up.preserves). The copy records where it
came from (``origin``), which is what keeps st_ino stable (rule inode.st-ino).
"""

from __future__ import annotations

from dataclasses import replace

from model.lookup import Merged, Source, inode, layer, lookup
from model.state import Overlay


def copy_up(state: Overlay, obj: Merged, trace: list[str]) -> tuple[Overlay, Merged]:
    """Copy ``obj`` up (a no-op if it is already upper). Returns the new state and the object
    as it now looks."""
    if obj.is_upper:
        return state, obj
    assert state.upper is not None
    trace.append("copy-up.preserves")
    if obj.path:
        parent = lookup(state, obj.path[:-1])
        assert parent is not None
        if not parent.is_upper:
            trace.append("copy-up.parents")
        state, parent = copy_up(state, parent, trace)
    lower = inode(state, obj.top)
    # The upper copy has everything a user sees, plus the origin. A directory is copied
    # without its entries: they stay in the lower layers and merge (lookup.dir-merge).
    copy = replace(lower, origin=obj.top.ino, opaque=False, redirect=None)
    ino, state = state.alloc()
    if obj.path:
        trace.append("copy-up.parent-mtime")
    upper = state.upper
    assert upper is not None
    state = state.with_upper(upper.link(obj.path, ino, copy))
    if lower.kind == "symlink":
        trace.append("copy-up.symlink")
    if lower.kind in ("fifo", "chr"):
        trace.append("copy-up.special-files")
    if lower.kind == "file" and lower_nlink(state, obj.top) > 1:
        trace.append("link.broken-by-copy-up")
    copied = lookup(state, obj.path)
    assert copied is not None and copied.is_upper
    return state, copied


def lower_nlink(state: Overlay, source: Source) -> int:
    """The link count of a layer object in its own layer."""
    return layer(state, source.layer).nlink(source.ino)
