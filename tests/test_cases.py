"""The model against the hand-written expectations of every named case."""

from __future__ import annotations

import errno

import pytest

from model import apply
from model.cases import CASES, DOCKER_NOT_SEMANTIC, Case
from model.ops import StatResult
from model.rules import RULES


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_model_meets_case(case: Case) -> None:
    state = case.stack
    stats: dict[int, StatResult] = {}
    for i, (op, want) in enumerate(zip(case.steps, case.expect, strict=True)):
        t = apply(state, op)
        got = t.outcome
        where = f"step {i}: {op}"
        assert got.errno == want.errno, (
            f"{where}: errno {errno.errorcode.get(got.errno, got.errno)}, "
            f"expected {errno.errorcode.get(want.errno, want.errno)} (rules {t.rules})"
        )
        if want.check_value:
            assert got.value == want.value, where
        if isinstance(got.value, StatResult):
            stats[i] = got.value
            for name, value in want.fields.items():
                assert getattr(got.value, name) == value, f"{where}: {name}"
            if want.same_ino_as is not None:
                assert got.value.ino == stats[want.same_ino_as].ino, f"{where}: st_ino"
            if want.other_ino_than is not None:
                assert got.value.ino != stats[want.other_ino_than].ino, f"{where}: st_ino"
        else:
            assert not want.fields and want.same_ino_as is None, f"{where}: not a stat"
        assert t.state.lowers == state.lowers, f"{where}: a lower layer changed"
        state = t.state


def test_every_rule_has_a_case() -> None:
    covered = {rule for case in CASES for rule in case.rules}
    assert set(RULES) - covered == set()
    assert covered - set(RULES) == set(), "cases name rules the model does not have"


def test_every_docker_statement_is_covered() -> None:
    covered = {n for case in CASES for n in case.docker}
    assert covered | set(DOCKER_NOT_SEMANTIC) == set(range(1, 11))
