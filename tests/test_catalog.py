"""The rule catalog: IDs are well formed, sources are given, RULES.md is current."""

from __future__ import annotations

import re

from model import catalog
from model.rules import RULES


def test_rule_ids_are_stable_shapes() -> None:
    for rule_id, rule in RULES.items():
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*\.[a-z]+(-[a-z]+)*", rule_id), rule_id
        assert rule.statement.endswith("."), rule_id
        assert re.search(r"rst:|vfs:|observed|docker:", rule.source), rule_id


def test_checked_in_catalog_is_current() -> None:
    assert catalog.CATALOG.read_text() == catalog.render(), "run python -m model.catalog --write"


def test_check_command(capsys) -> None:
    assert catalog.main(["--check"]) == 0
    assert "current" in capsys.readouterr().out
