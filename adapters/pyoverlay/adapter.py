"""The ``python`` adapter: our own overlay implementation (``OverlayFS``) over the layers.

Nothing is mounted: the implementation works on the layer directories directly, so it runs
without root (with userxattr) and on pyfakefs. Remount re-opens the implementation on the
same directories, which checks that everything it knows is on disk.
"""

from __future__ import annotations

from pathlib import Path

from adapters import posix
from adapters.base import Adapter, LayerDirs, Mounted
from adapters.pyoverlay.fs import OverlayFS
from model.features import Features
from model.ops import OK, Op, Outcome, Remount, View


class PythonMounted(Mounted):
    """An open ``OverlayFS``: closing only forgets it (there is no mount to undo)."""

    def __init__(self, layers: LayerDirs, features: Features) -> None:
        self.layers = layers
        self.features = features
        self.fs: OverlayFS | None = OverlayFS(layers, features)

    def _fs(self) -> OverlayFS:
        if self.fs is None:
            from adapters.base import AdapterError

            raise AdapterError("the python overlay is closed")
        return self.fs

    def perform(self, op: Op) -> Outcome:
        if isinstance(op, Remount):
            self.remount()
            return OK
        return posix.perform(self._fs(), op)

    def observe(self) -> View:
        return posix.observe(self._fs())

    def remount(self) -> None:
        self.close()
        self.fs = OverlayFS(self.layers, self.features)

    def close(self) -> None:
        if self.fs is not None:
            self.fs.shutdown()
            self.fs = None

    def options_in_effect(self) -> dict[str, str]:
        return dict(item.partition("=")[::2] for item in self.features.mount_options())


class PythonAdapter(Adapter):
    """The pure-Python overlay in ``adapters/pyoverlay``."""

    name = "python"
    needs_root = False

    def mount(self, layers: LayerDirs, features: Features, scratch: Path) -> Mounted:
        return PythonMounted(layers, features)

    def version(self) -> str:
        return "pyoverlay (pure Python, kernel on-disk format)"
