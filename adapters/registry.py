"""Adapters by name, imported only when asked for.

Built-ins: kernel, fuse, command, python. Third-party adapters register an entry point in the
group ``overlay_spec.adapters`` (``name = "package.module:Factory"``), or are named directly
as ``package.module:Factory``. A factory is an ``Adapter`` subclass or any callable taking
``AdapterOptions`` and returning an ``Adapter``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points

from adapters.base import Adapter, AdapterError, AdapterOptions

ENTRY_POINT_GROUP = "overlay_spec.adapters"

BUILTINS: dict[str, str] = {
    "kernel": "adapters.kernel:KernelAdapter",
    "fuse": "adapters.fuse:FuseAdapter",
    "command": "adapters.command:CommandAdapter",
    "python": "adapters.pyoverlay.adapter:PythonAdapter",
}


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def known_names() -> list[str]:
    """Built-in names first, then entry-point names, each once."""
    names = list(BUILTINS)
    names.extend(sorted(n for n in _entry_points() if n not in BUILTINS))
    return names


def _load_spec(spec: str) -> object:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AdapterError(f"bad adapter reference {spec!r}: expected package.module:Factory")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AdapterError(f"cannot import adapter module {module_name!r}: {exc}") from exc
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AdapterError(
                f"adapter module {module_name!r} has no attribute {attr!r}"
            ) from None
    return obj


def load_factory(name: str) -> object:
    """What ``name`` refers to (not yet called): a built-in, an entry point, or a reference."""
    if name in BUILTINS:
        return _load_spec(BUILTINS[name])
    eps = _entry_points()
    if name in eps:
        try:
            return eps[name].load()
        except Exception as exc:
            raise AdapterError(
                f"cannot load adapter {name!r} from entry point {eps[name].value!r}: {exc}"
            ) from exc
    if ":" in name:
        return _load_spec(name)
    raise AdapterError(
        f"unknown adapter {name!r}; known adapters: {', '.join(known_names())} "
        "(or give package.module:Factory)"
    )


def get_adapter(name: str, options: AdapterOptions | None = None) -> Adapter:
    """An adapter instance for ``name`` (built-in, entry point or ``package.module:Factory``)."""
    factory = load_factory(name)
    if not callable(factory):
        raise AdapterError(f"adapter {name!r} refers to {factory!r}, which is not callable")
    make: Callable[[AdapterOptions | None], object] = factory
    try:
        adapter = make(options)
    except AdapterError:
        raise
    except Exception as exc:
        raise AdapterError(f"creating adapter {name!r} failed: {exc}") from exc
    if not isinstance(adapter, Adapter):
        raise AdapterError(
            f"adapter {name!r}: {factory!r} returned {type(adapter).__name__}, not an Adapter"
        )
    return adapter


def unavailable(name: str) -> str | None:
    """Why adapter ``name`` cannot run here (an import failure included), or None."""
    try:
        factory = load_factory(name)
    except AdapterError as exc:
        return str(exc)
    check = getattr(factory, "unavailable", None)
    if check is None:
        return None
    try:
        reason = check()
    except Exception as exc:
        return f"checking availability failed: {exc}"
    return None if reason is None else str(reason)


def describe_all() -> list[tuple[str, str | None]]:
    """Every known adapter with the reason it cannot run here (None: it can)."""
    return [(name, unavailable(name)) for name in known_names()]
