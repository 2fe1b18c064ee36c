"""Shared fixtures for the adapter tests: a scratch area, and a check that nothing leaks."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters import mounting
from adapters.base import is_root
from adapters.scratch import Scratch, processes_using

needs_root = pytest.mark.skipif(not is_root(), reason="needs root (mount(2), mknod, chown)")


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Scratch]:
    """A scratch area below this test's tmp_path; afterwards nothing may be left of it."""
    with Scratch(base=tmp_path) as s:
        path = s.path
        yield s
    assert not mounting.mounts_under(path), "a mount was left behind"
    assert not path.exists(), "the scratch directory was left behind"
    assert not processes_using(str(path)), "a process serving the scratch area was left behind"
