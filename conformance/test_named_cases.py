"""The named cases (``model.cases.CASES``) run on the adapter and the model, step by
step, judged exactly as the generated test judges (``conformance.machine.Run``)."""

from __future__ import annotations

import pytest

from conformance.machine import Context, case_features_mismatch, run_case
from model.cases import CASES, Case

pytestmark = pytest.mark.conformance


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_case(case: Case, conformance: Context, request: pytest.FixtureRequest) -> None:
    reason = case_features_mismatch(case.stack.features, conformance.features)
    if reason is not None:
        pytest.skip(reason)
    run_case(conformance, case.stack, case.steps, request.node.nodeid, case.rules)
    # Reached only when no unknown difference was found: the case's rules were exercised.
    conformance.recorder.passed_case_rules.update(case.rules)
