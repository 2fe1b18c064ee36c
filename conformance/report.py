"""Difference reports: the failure message a person acts on, and the run's summary files.

A failure message holds the shrunk program (initial stack and steps, with the model's and the
implementation's outcome of each), the rule IDs involved, expected against observed, where the
reproducer script was written, and how to replay. The summary (``summary-<adapter>.json`` and
``.md`` in ``--report-dir``) lists every difference of the run; the JSON is one flat record per
difference, keyed by adapter, so runs against several implementations merge by concatenation.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from conformance.compare import Difference, show, show_errno
from conformance.known import KnownDifference
from conformance.reproducer import StepRecord
from model.ops import Outcome, StatResult
from model.state import Layer, Overlay

SCHEMA = 1


def outcome_text(outcome: Outcome) -> str:
    if outcome.errno:
        return show_errno(outcome.errno)
    v = outcome.value
    if v is None:
        return "ok"
    if isinstance(v, StatResult):
        return (
            f"stat(kind={v.kind}, mode={oct(v.mode)}, uid={v.uid}, gid={v.gid}, size={v.size}, "
            f"nlink={v.nlink}, ino={v.ino}, mtime={v.mtime})"
        )
    return show(v)


def describe_layer(layer: Layer) -> list[str]:
    """One line per path: kind, attributes, content."""
    lines = []
    for path in sorted(layer.entries, key=lambda p: (len(p), p)):
        ino = layer.entries[path]
        node = layer.inodes[ino]
        name = "/".join(path) or "."
        bits = [f"{node.kind}", f"ino={ino}"]
        if node.kind == "whiteout":
            bits.append(f"form={node.whiteout_form}")
        else:
            bits += [oct(node.mode), f"{node.uid}:{node.gid}", f"mtime={node.mtime}"]
        if node.kind == "file":
            bits.append(f"data={node.data!r}")
        if node.kind == "symlink":
            bits.append(f"-> {node.target!r}")
        if node.opaque:
            bits.append("opaque")
        if node.redirect is not None:
            bits.append(f"redirect={node.redirect!r}")
        if node.xattrs:
            bits.append(f"xattrs={dict(node.xattrs)!r}")
        lines.append(f"    {name}: " + " ".join(bits))
    return lines


def describe_stack(state: Overlay) -> list[str]:
    lines = [f"  features: {state.features.describe()}"]
    for i, layer in enumerate(state.lowers):
        lines.append(f"  lower{i}{' (top)' if i == 0 else ''}:")
        lines += describe_layer(layer)
    if state.upper is None:
        lines.append("  upper: none (read-only overlay)")
    else:
        lines.append("  upper:")
        lines += describe_layer(state.upper)
    return lines


@dataclass
class FailureRecord:
    """One failing example (or named case), as reports and the summary show it."""

    test: str  # the pytest node id
    adapter: str
    initial: Overlay
    steps: Sequence[StepRecord]
    differences: Sequence[Difference]
    context: Sequence[Difference] = ()  # further differences seen after the failing step
    known: Sequence[tuple[Difference, KnownDifference]] = ()
    reproducer: Path | None = None
    replay: str = ""

    @property
    def rules(self) -> list[str]:
        seen: dict[str, None] = {}
        for d in self.differences:
            for r in d.rules:
                seen[r] = None
        return list(seen)

    def message(self) -> str:
        lines = [
            f"overlay conformance: {len(self.differences)} difference(s) between the "
            f"{self.adapter} adapter and the model",
            f"rules involved: {', '.join(self.rules) or '(none named by the model)'}",
            "",
            "differences (expected = model, observed = implementation):",
            *[f"  - {d.message()}" for d in self.differences],
        ]
        if self.context:
            lines += ["", "also seen in the same step (not judged on their own):"]
            lines += [f"  - {d.message()}" for d in self.context]
        if self.known:
            lines += ["", "known differences in the same step:"]
            lines += [f"  - {d.message()} -- known: {k.reason}" for d, k in self.known]
        lines += ["", "initial stack:", *describe_stack(self.initial), "", "steps:"]
        for s in self.steps:
            rules = f" [{', '.join(s.rules)}]" if s.rules else ""
            mark = "  " if s.expected == s.observed else "!!"
            lines.append(f"  {mark}{s.index:3d}. {s.op}{rules}")
            lines.append(f"         model: {outcome_text(s.expected)}")
            lines.append(f"         impl:  {outcome_text(s.observed)}")
        if self.reproducer is not None:
            lines += ["", f"reproducer (run as root): {self.reproducer}"]
        if self.replay:
            lines += [f"replay: {self.replay}"]
        return "\n".join(lines)

    def to_json(self, run: Mapping[str, object]) -> dict[str, object]:
        return {
            **run,
            "test": self.test,
            "rules": self.rules,
            "differences": [d.to_json() for d in self.differences],
            "context": [d.to_json() for d in self.context],
            "steps": [
                {
                    "index": s.index,
                    "op": str(s.op),
                    "expected": outcome_text(s.expected),
                    "observed": outcome_text(s.observed),
                    "rules": list(s.rules),
                }
                for s in self.steps
            ],
            "initial": describe_stack(self.initial),
            "reproducer": None if self.reproducer is None else str(self.reproducer),
            "replay": self.replay,
        }


@dataclass
class Recorder:
    """Everything a run found, written out at the end of the session."""

    adapter: str
    version: str
    features: str
    profile: str
    seed: str
    report_dir: Path
    worker: str | None = None  # the xdist worker id: each worker writes its own summary
    options_in_effect: dict[str, str] = field(default_factory=dict)
    failures: list[FailureRecord] = field(default_factory=list)
    passed_case_rules: set[str] = field(default_factory=set)
    stale: list[KnownDifference] = field(default_factory=list)
    known_occurred: dict[KnownDifference, int] = field(default_factory=dict)

    def run_info(self) -> dict[str, object]:
        return {
            "schema": SCHEMA,
            "adapter": self.adapter,
            "adapter_version": self.version,
            "kernel": platform.release(),
            "features": self.features,
            "options_in_effect": self.options_in_effect,
            "profile": self.profile,
            "seed": self.seed,
        }

    def add(self, failure: FailureRecord) -> None:
        # A test reruns its shrunk example once per report; keep one record per test.
        self.failures = [f for f in self.failures if f.test != failure.test]
        self.failures.append(failure)

    def write(self) -> list[Path]:
        """Write the JSON and Markdown summaries (always, so an empty run says so)."""
        self.report_dir.mkdir(parents=True, exist_ok=True)
        run = self.run_info()
        data = {
            **run,
            "failures": [f.to_json(run) for f in self.failures],
            "known": [
                {
                    "rule": k.rule,
                    "op": k.op,
                    "field": k.field,
                    "reason": k.reason,
                    "source": k.source,
                    "occurrences": n,
                }
                for k, n in self.known_occurred.items()
            ],
            "stale_known": [k.describe() for k in self.stale],
        }
        # One file per adapter (and per xdist worker): runs merge by collecting the files.
        stem = f"summary-{_safe(self.adapter)}" + (f"-{self.worker}" if self.worker else "")
        json_path = self.report_dir / f"{stem}.json"
        json_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        md_path = self.report_dir / f"{stem}.md"
        md_path.write_text(self.markdown())
        return [json_path, md_path]

    def markdown(self) -> str:
        lines = [
            f"# Overlay conformance: {self.adapter}",
            "",
            f"- adapter version: {self.version}",
            f"- kernel: {platform.release()}",
            f"- features: `{self.features}`",
            f"- options in effect: `{_opts(self.options_in_effect)}`",
            f"- profile: {self.profile}; seed: {self.seed}",
            "",
        ]
        if not self.failures:
            lines.append("No differences from the model.")
        else:
            lines += ["| test | rules | difference | reproducer |", "|---|---|---|---|"]
            for f in self.failures:
                for d in f.differences:
                    lines.append(
                        f"| `{f.test}` | {', '.join(d.rules)} | {_md(d.message())} | "
                        f"{'' if f.reproducer is None else f'`{f.reproducer.name}`'} |"
                    )
        if self.known_occurred:
            lines += ["", "## Known differences that occurred", ""]
            lines += [
                f"- {k.describe()}: {n}x — {k.reason}" for k, n in self.known_occurred.items()
            ]
        if self.stale:
            lines += ["", "## Known differences that no longer occur (remove them)", ""]
            lines += [f"- {k.describe()}: {k.reason}" for k in self.stale]
        return "\n".join(lines) + "\n"


def _opts(opts: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" if v else k for k, v in opts.items()) or "(not reported)"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
