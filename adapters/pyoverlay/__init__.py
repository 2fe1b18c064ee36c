"""A pure-Python overlay filesystem over layer directories in the kernel's on-disk format."""

from adapters.pyoverlay.adapter import PythonAdapter
from adapters.pyoverlay.fs import OverlayFS

__all__ = ["OverlayFS", "PythonAdapter"]
