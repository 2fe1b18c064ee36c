"""Named cases: deterministic scenarios, at least one per model rule and per Docker statement.

Each case is data: an initial layer stack, a list of operations, and the outcome the
specification expects at each step. ``tests/`` checks the model against ``expect``; the
conformance suite runs the same steps on an implementation and compares with the model, so a
failing case names its rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.ops import Op, Outcome
from model.state import Overlay


@dataclass(frozen=True)
class Case:
    id: str  # unique, e.g. "copy-up.triggers/open-wronly"
    rules: tuple[str, ...]  # the rule IDs the case exercises
    stack: Overlay  # the initial state
    steps: tuple[Op, ...]
    expect: tuple[Outcome, ...]  # one per step: what the specification says the call returns
    docker: tuple[int, ...] = ()  # statements of docker-overlay-notes.md the case covers


CASES: tuple[Case, ...] = ()  # filled in with the model's rules
