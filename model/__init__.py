"""The reference model: an executable specification of overlay filesystem semantics.

Read it as the spec. ``state`` holds the layers as values; ``lookup`` says what the merged view
shows; ``syscalls`` has one pure function per system call, each running its ordered error checks
and then its state change; ``copy_up`` says when and how objects move to the upper layer;
``rules`` lists every rule with its ID and source.

    from model import Overlay, apply, view
    t = apply(state, Unlink("a"))   # t.outcome, t.state, t.rules
"""

from model.features import Features
from model.ops import Node, Op, Outcome, StatResult, View
from model.state import Inode, Layer, Overlay
from model.syscalls import Transition, apply
from model.view import view

__all__ = [
    "Features",
    "Inode",
    "Layer",
    "Node",
    "Op",
    "Outcome",
    "Overlay",
    "StatResult",
    "Transition",
    "View",
    "apply",
    "view",
]
