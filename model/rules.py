"""Every rule the model applies, with a stable ID, a statement and its source.

Sources: ``rst:<section>`` is a section of the kernel's Documentation/filesystems/overlayfs.rst;
``vfs:<function>`` is generic Linux VFS behaviour (fs/namei.c and friends) that every
filesystem, overlay included, shows; ``observed:`` is kernel behaviour measured by this
project's conformance suite (kernel 6.18, all layers on one filesystem), where the document is
silent. ``docker:<n>`` is statement n of shared/reference/docker-overlay-notes.md.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    id: str
    statement: str
    source: str


_RULES: tuple[Rule, ...] = (
    # --- layers and lookup --------------------------------------------------------------
    Rule("lookup.upper-hides-lower",
         "A name present in a higher layer hides the same name in every layer below when "
         "either object is not a directory; the upper layer is above every lower layer and "
         "the first lower layer is above the others.",
         "rst:Upper and Lower; rst:Multiple lower layers; docker:5"),
    Rule("lookup.dir-merge",
         "Directories of the same name in several layers are merged: the merged directory "
         "shows the union of their names.",
         "rst:Directories; docker:3"),
    Rule("lookup.dir-metadata-from-top",
         "Only names are merged: the attributes and xattrs of a merged directory are those "
         "of its topmost directory.",
         "rst:Directories"),
    Rule("lookup.non-dir-stops-merge",
         "A non-directory below a directory of the same name is ignored and ends the merge.",
         "rst:Upper and Lower"),
    Rule("lookup.whiteout",
         "A whiteout (a 0/0 character device) hides the name in every layer below it and is "
         "never itself visible.",
         "rst:whiteouts and opaque directories; docker:7"),
    Rule("lookup.xattr-whiteout",
         "An empty regular file carrying the overlay whiteout xattr (trusted.overlay.whiteout, "
         "or user.overlay.whiteout with userxattr) inside a directory marked opaque=x is a "
         "whiteout too, for layers built by tools: it hides the name below and is not visible "
         "to lookup.",
         "rst:whiteouts and opaque directories (since 6.7)"),
    Rule("lookup.opaque",
         "A directory marked opaque hides the same-named directories of every layer below "
         "it, in the upper layer and in lower layers alike.",
         "rst:whiteouts and opaque directories"),
    Rule("readdir.union",
         "readdir of a merged directory returns each visible name once: the union of the "
         "layers' names, less whiteouts and what they hide. Order is unspecified.",
         "rst:readdir"),
    Rule("readdir.pass-through",
         "A directory that comes from a single layer and was never copied up (not merged, "
         "no origin) is read straight from that layer: whiteouts inside it are listed by "
         "readdir, although looking them up fails with ENOENT.",
         "rst:readdir (non-merged directories); observed on 6.18 (fs/overlayfs/readdir.c "
         "ovl_dir_is_real)"),
    Rule("readdir.lowest-xattr-whiteout",
         "Lookup reads a lower directory's opaque=x marker only when its layer is not the "
         "last of the parent directory's lower layers, and readdir filters xattr-form "
         "whiteouts only in marked directories: so readdir of a merged directory lists the "
         "xattr whiteouts of the merge's lowest layer (unless a higher layer of the merge has "
         "the name) when that layer is the parent's last lower layer or the directory there "
         "is opaque (marked y, not x), although looking them up fails with ENOENT. "
         "Character-device whiteouts are always filtered.",
         "observed on 6.18 (fs/overlayfs/namei.c ovl_lookup_single skips the xattr checks "
         "for the last layer)"),
    Rule("read.from-top",
         "Reading an object reads the topmost object of that name: the upper one if there "
         "is one, otherwise the topmost lower one.",
         "rst:Upper and Lower; docker:5"),
    # --- path resolution (VFS) -------------------------------------------------------------
    Rule("path.resolve",
         "Paths resolve one name at a time through the merged view: a missing component "
         "is ENOENT, a non-directory component ENOTDIR, '.' and '..' move within the tree.",
         "vfs:link_path_walk"),
    Rule("path.symlink",
         "Symlinks met along a path are followed through the merged view (relative to the "
         "directory holding them); more than 40 in one resolution is ELOOP.",
         "vfs:link_path_walk"),
    Rule("path.trailing-slash",
         "A trailing slash requires a directory: it follows a final symlink and turns a "
         "non-directory into ENOTDIR (EISDIR, ENOENT or EEXIST for the calls that create).",
         "vfs:filename_create; vfs:open_last_lookups; vfs:do_unlinkat"),
    Rule("path.dots",
         "A last component of '.' or '..' cannot be created, removed or renamed: mkdir, "
         "link, symlink and mknod give EEXIST, unlink EISDIR, rmdir EINVAL ('.') or "
         "ENOTEMPTY ('..'), rename EBUSY (EEXIST with RENAME_NOREPLACE).",
         "vfs:filename_create; vfs:do_rmdir; vfs:do_renameat2"),
    # --- copy-up ---------------------------------------------------------------------------
    Rule("copy-up.triggers",
         "An object is copied up before any change to it: open for writing (even without "
         "a write), O_TRUNC, truncate, chmod, chown, utimes, setxattr, removexattr of an "
         "xattr it has, link, and rename.",
         "rst:Non-directories; observed: open(O_WRONLY|O_RDWR) without a write copies up"),
    Rule("copy-up.not-on-read",
         "Read-only access never copies up: open O_RDONLY, read, readlink, stat, readdir, "
         "getxattr, listxattr.",
         "rst:Non-directories"),
    Rule("copy-up.preserves",
         "Copy-up keeps the object's data, mode, owner, mtime, xattrs and symlink target.",
         "rst:Non-directories; docker:6"),
    Rule("copy-up.symlink",
         "A symlink is copied up as a symlink with the same target, owner and mtime.",
         "rst:Non-directories; observed (lchown of a lower symlink)"),
    Rule("copy-up.parents",
         "Missing parent directories are copied up first, with their mode, owner, mtime "
         "and xattrs.",
         "rst:Non-directories; observed"),
    Rule("copy-up.parent-mtime",
         "Copying an object up into its parent's upper directory leaves the parent's mtime as "
         "it was: the kernel restores the parent's times after linking the copy in.",
         "observed (fs/overlayfs/copy_up.c restores the parent's timestamps)"),
    Rule("copy-up.lower-unchanged",
         "No operation ever changes a lower layer; every change lands in the upper layer.",
         "rst:Upper and Lower; docker:2; docker:6"),
    Rule("copy-up.special-files",
         "Fifos and device nodes are copied up as nodes of the same kind, with their "
         "metadata; opening a fifo never copies it up, whatever the flags: fifos are not "
         "opened through the overlay's file operations.",
         "observed"),
    Rule("copy-up.on-failed-setxattr",
         "setxattr copies the object up before the upper filesystem checks the call, so a "
         "setxattr that fails (XATTR_CREATE of an existing name, XATTR_REPLACE of a missing "
         "one) still leaves the object copied up. removexattr of a name the lower object "
         "lacks fails with ENODATA without a copy-up.",
         "observed (fs/overlayfs/xattrs.c ovl_xattr_set)"),
    # --- creating and removing --------------------------------------------------------------
    Rule("create.upper",
         "New objects are created in the upper layer, their parents copied up first; a "
         "new object is owned by the caller and gets the requested mode (umask 0).",
         "rst:Upper and Lower; docker:2"),
    Rule("create.exists",
         "Creating a name that is visible fails with EEXIST (O_CREAT|O_EXCL, mkdir, "
         "symlink, link, mknod).",
         "vfs:filename_create"),
    Rule("create.over-whiteout",
         "A directory created where a lower name is whited out is marked opaque, so the "
         "lower directory's entries stay hidden.",
         "rst:whiteouts and opaque directories; observed"),
    Rule("unlink.whiteout",
         "Removing a name that exists in a lower layer leaves a whiteout in the upper "
         "layer; the lower object is unchanged and no longer visible.",
         "rst:whiteouts and opaque directories; docker:7"),
    Rule("unlink.pure-upper",
         "Removing an object that has no lower counterpart leaves nothing behind in the "
         "upper layer.",
         "observed"),
    Rule("unlink.dir",
         "unlink of a directory is EISDIR; rmdir of a non-directory is ENOTDIR; rmdir of "
         "the root is EBUSY.",
         "vfs:may_delete; vfs:do_rmdir"),
    Rule("rmdir.empty",
         "rmdir of a merged or lower directory fails with ENOTEMPTY while any entry is "
         "visible in it, and succeeds when only whiteouts remain.",
         "rst:whiteouts and opaque directories"),
    Rule("mknod.whiteout-forbidden",
         "A whiteout (character device 0/0) cannot be created through the overlay: EPERM.",
         "observed (fs/overlayfs/dir.c ovl_mknod)"),
    Rule("mknod.fifo",
         "mknod creates fifos and character devices other than 0/0 in the upper layer.",
         "vfs:vfs_mknod"),
    # --- rename ----------------------------------------------------------------------------
    Rule("rename.flags",
         "RENAME_EXCHANGE with RENAME_NOREPLACE or RENAME_WHITEOUT is EINVAL; the overlay "
         "itself refuses RENAME_WHITEOUT with EINVAL.",
         "vfs:do_renameat2; observed (fs/overlayfs/dir.c ovl_rename)"),
    Rule("rename.vfs-checks",
         "rename checks, in order: the source exists (ENOENT); RENAME_NOREPLACE and an "
         "existing target (EEXIST); RENAME_EXCHANGE and a missing target (ENOENT); trailing "
         "slashes on a non-directory (ENOTDIR); a directory moved into itself (EINVAL); a "
         "target that is an ancestor of the source (ENOTEMPTY); a directory over a "
         "non-directory (ENOTDIR) and the reverse (EISDIR).",
         "vfs:do_renameat2; vfs:vfs_rename"),
    Rule("rename.same-inode",
         "Renaming a name onto another name of the same inode does nothing and succeeds.",
         "vfs:vfs_rename"),
    Rule("rename.dir-exdev",
         "Without redirect_dir=on, renaming a directory that is not purely upper (it is "
         "merged or lower) fails with EXDEV; so does exchanging with one.",
         "rst:Renaming directories; docker:8"),
    Rule("rename.dir-target-not-empty",
         "Renaming a directory over a directory that shows any entry fails with ENOTEMPTY.",
         "rst:Renaming directories; vfs:vfs_rename"),
    Rule("rename.non-dir",
         "A non-directory can always be renamed: it is copied up to the new name, and the "
         "old name becomes a whiteout if a lower object of that name exists.",
         "rst:Non-directories"),
    Rule("rename.opaque",
         "A purely upper directory moved into a merged directory is marked opaque, so no "
         "lower directory of the new name shows through it.",
         "observed (fs/overlayfs/dir.c ovl_rename)"),
    Rule("rename.exchange",
         "RENAME_EXCHANGE swaps two existing names atomically, copying both up.",
         "vfs:vfs_rename"),
    # --- attributes ------------------------------------------------------------------------
    Rule("attr.chmod-chown-utimes",
         "chmod and utimes follow a final symlink; chown follows it only when asked "
         "(lchown does not). Each copies the object up, then changes it there.",
         "vfs:chmod_common; rst:Non-directories"),
    Rule("attr.mtime",
         "Writing, truncating and O_TRUNC set a file's mtime to now; adding or removing "
         "names sets the directory's mtime to now; chmod, chown and xattr calls leave it.",
         "vfs:file_update_time"),
    Rule("xattr.user-namespace",
         "user.* xattrs exist only on regular files and directories: setting one on "
         "anything else is EPERM, reading one is ENODATA.",
         "vfs:xattr_permission"),
    Rule("xattr.private-hidden",
         "The overlay's own xattrs on the layers (trusted.overlay.*, or user.overlay.* with "
         "userxattr) are never shown through the mount.",
         "rst:User xattr; observed"),
    Rule("xattr.flags",
         "XATTR_CREATE of an existing name is EEXIST, XATTR_REPLACE or removexattr of a "
         "missing name is ENODATA, getxattr of a missing name is ENODATA.",
         "vfs:setxattr"),
    # --- open, read, write -------------------------------------------------------------------
    Rule("open.flags",
         "open: O_CREAT with O_DIRECTORY is EINVAL; O_CREAT|O_EXCL of an existing name is "
         "EEXIST (a final symlink is not followed); O_NOFOLLOW of a final symlink is ELOOP; "
         "O_DIRECTORY of a non-directory is ENOTDIR; writing or truncating a directory is "
         "EISDIR; O_CREAT through a dangling symlink creates its target.",
         "vfs:build_open_flags; vfs:do_open; vfs:may_open"),
    Rule("open.fifo-nonblock",
         "Every open the suite makes uses O_NONBLOCK: opening a fifo for writing with no "
         "reader is ENXIO, for reading it succeeds at once and reads nothing.",
         "vfs:fifo_open"),
    Rule("read.errors",
         "read of a directory is EISDIR; readlink of a non-symlink is EINVAL; readdir of a "
         "non-directory is ENOTDIR; truncate of a directory is EISDIR and of other "
         "non-regular files EINVAL.",
         "vfs:vfs_read; vfs:do_readlinkat; vfs:vfs_truncate"),
    Rule("write.data",
         "pwrite at an offset past the end leaves a hole of zero bytes; truncate cuts or "
         "extends with zero bytes.",
         "vfs:pwrite"),
    # --- hard links and inodes ---------------------------------------------------------------
    Rule("link.copy-up",
         "link(2) of a lower object copies it up and creates the new name as a hard link "
         "in the upper layer; directories cannot be linked (EPERM).",
         "rst:Non-directories; vfs:vfs_link"),
    Rule("link.broken-by-copy-up",
         "With index=off, copying up one name of a lower hard link breaks the link: that "
         "name gets its own upper inode, the other names keep the lower data, inode number "
         "and (stale) link count.",
         "rst:Non-standard behavior; docker:4"),
    Rule("inode.st-ino",
         "With all layers on one filesystem, st_ino is the underlying inode number of the "
         "object's origin: the lower object for lower objects, merged directories and "
         "copied-up objects (for non-directories only when the lower inode has a single "
         "link), the upper inode for purely upper objects. It is stable across copy-up "
         "and remount.",
         "rst:Inode properties; observed (fs/overlayfs/inode.c ovl_getattr)"),
    Rule("inode.nlink",
         "st_nlink is the underlying object's link count, except for merged directories "
         "(an upper and a lower directory, or several lower ones), which report 1.",
         "observed (fs/overlayfs/inode.c ovl_getattr)"),
    # --- mounts ---------------------------------------------------------------------------
    Rule("mount.read-only",
         "An overlay without an upper layer is read-only: every change fails with EROFS.",
         "rst:Multiple lower layers"),
    Rule("mount.remount",
         "Unmounting and mounting the same layers with the same options shows the same "
         "view, inode numbers included.",
         "rst:Inode properties; observed"),
    Rule("docker.layers",
         "An image is a stack of read-only layers, each holding only what differs from the "
         "layer below; a container adds one writable layer on top, and all of its changes "
         "land there.",
         "docker:1; docker:2; docker:3"),
)  # fmt: skip

RULES: dict[str, Rule] = {rule.id: rule for rule in _RULES}
assert len(RULES) == len(_RULES), "duplicate rule IDs"
