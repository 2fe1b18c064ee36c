"""The adapter registry: built-ins, entry points, ``package.module:Factory``, lazy imports and
the errors for everything that cannot be loaded."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from adapters import registry
from adapters.base import Adapter, AdapterError, AdapterOptions
from adapters.command import CommandAdapter
from adapters.fuse import FuseAdapter
from adapters.kernel import KernelAdapter

REPO = Path(__file__).resolve().parents[1]

PLUGIN = textwrap.dedent(
    """
    from adapters.base import Adapter

    class Dummy(Adapter):
        name = "dummy"

        @classmethod
        def unavailable(cls):
            return "dummy never runs"

        def mount(self, layers, features, scratch):
            raise NotImplementedError

    def make(options):
        adapter = Dummy(options)
        adapter.made_by_factory = True
        return adapter

    def not_an_adapter(options):
        return 42

    def broken(options):
        raise RuntimeError("factory exploded")

    NOT_CALLABLE = 7
    """
)


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "overlay_spec_test_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "overlay_spec_test_plugin"


def test_builtins() -> None:
    options = AdapterOptions(mount_cmd="m {mountpoint}", umount_cmd="u {mountpoint}")
    assert type(registry.get_adapter("kernel")) is KernelAdapter
    assert type(registry.get_adapter("fuse")) is FuseAdapter
    cmd = registry.get_adapter("command", options)
    assert type(cmd) is CommandAdapter and cmd.options is options
    assert registry.get_adapter("kernel").options == AdapterOptions()


def test_unknown_name_lists_known_ones() -> None:
    with pytest.raises(AdapterError) as info:
        registry.get_adapter("nope")
    message = str(info.value)
    assert "unknown adapter 'nope'" in message
    for name in ("kernel", "fuse", "command", "python"):
        assert name in message
    assert "package.module:Factory" in message


def test_module_factory_syntax(plugin: str) -> None:
    adapter = registry.get_adapter(f"{plugin}:Dummy", AdapterOptions(extra={"k": "v"}))
    assert adapter.name == "dummy" and adapter.options.extra == {"k": "v"}
    made = registry.get_adapter(f"{plugin}:make")
    assert getattr(made, "made_by_factory", False)
    assert registry.unavailable(f"{plugin}:Dummy") == "dummy never runs"


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("{p}:not_an_adapter", "returned int, not an Adapter"),
        ("{p}:broken", "creating adapter .* failed: factory exploded"),
        ("{p}:NOT_CALLABLE", "not callable"),
        ("{p}:Missing", "has no attribute 'Missing'"),
        ("no_such_module_xyz:Factory", "cannot import adapter module 'no_such_module_xyz'"),
        ("{p}:", "expected package.module:Factory"),
    ],
)
def test_module_factory_errors(plugin: str, ref: str, message: str) -> None:
    with pytest.raises(AdapterError, match=message):
        registry.get_adapter(ref.format(p=plugin))


def test_entry_points(plugin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    eps = [
        EntryPoint("dummy", f"{plugin}:Dummy", registry.ENTRY_POINT_GROUP),
        EntryPoint("gone", "no_such_module_xyz:X", registry.ENTRY_POINT_GROUP),
    ]

    def fake(group: str) -> list[EntryPoint]:
        assert group == registry.ENTRY_POINT_GROUP
        return eps

    monkeypatch.setattr(registry, "entry_points", fake)
    assert registry.known_names() == ["kernel", "fuse", "command", "python", "dummy", "gone"]
    assert registry.get_adapter("dummy").name == "dummy"
    with pytest.raises(AdapterError, match="cannot load adapter 'gone' from entry point"):
        registry.get_adapter("gone")
    described = dict(registry.describe_all())
    assert described["dummy"] == "dummy never runs"
    assert "cannot load adapter 'gone'" in (described["gone"] or "")


def test_describe_all_matches_each_adapter() -> None:
    described = dict(registry.describe_all())
    assert list(described)[:4] == ["kernel", "fuse", "command", "python"]
    assert described["kernel"] == KernelAdapter.unavailable()
    assert described["fuse"] == FuseAdapter.unavailable()
    assert described["command"] is None


def test_python_adapter_is_lazy() -> None:
    code = (
        "import sys, adapters.registry; "
        "print(any(m.startswith('adapters.pyoverlay') for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
    try:
        present = importlib.util.find_spec("adapters.pyoverlay.adapter") is not None
    except ModuleNotFoundError:
        present = False
    if present:
        assert isinstance(registry.get_adapter("python"), Adapter)
    else:
        with pytest.raises(AdapterError, match="cannot import adapter module"):
            registry.get_adapter("python")
