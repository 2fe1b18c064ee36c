"""The generated conformance test: random layer stacks and operation sequences, each step
performed on the adapter and the model and compared (see ``conformance.machine``)."""

from __future__ import annotations

import pytest

from conformance.machine import Context, run_machine

pytestmark = pytest.mark.conformance


def test_stateful(conformance: Context, request: pytest.FixtureRequest) -> None:
    run_machine(conformance, request.node.nodeid)
