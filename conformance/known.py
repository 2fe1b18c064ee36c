"""Known differences: a reviewed list, per adapter, of where it is allowed to differ.

Each entry names a rule ID and, optionally, the operation and the field (an fnmatch pattern,
e.g. ``xattr:*``) it covers, with a reason and a link. A difference matching an entry is
reported as known rather than failing; the example stops there unless the difference is in a
descriptive field only (conformance.compare.OBSERVATIONAL_FIELDS). The list must stay true: in
a clean run, an entry that never occurs although a passing named case exercised its rule is
reported as "no longer occurs" and fails the session.

File format (TOML)::

    [[known]]
    rule = "rename.dir-exdev"      # required
    op = "rename"                   # optional: the system call name
    field = "errno"                 # optional: fnmatch pattern on Difference.field
    reason = "why this is acceptable"
    link = "https://..."
"""

from __future__ import annotations

import fnmatch
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from conformance.compare import Difference, base_field

KNOWN_DIR = Path(__file__).parent / "known"


class KnownFileError(ValueError):
    """A known-differences file that cannot be read; the message names the file and entry."""


@dataclass(frozen=True)
class KnownDifference:
    rule: str
    reason: str
    source: str  # the file it came from
    op: str | None = None
    field: str | None = None
    link: str | None = None

    def matches(self, diff: Difference) -> bool:
        if self.rule not in diff.rules:
            return False
        if self.op is not None and self.op != diff.op_name:
            return False
        if self.field is None:
            return True
        # "nlink" also covers a stat's "stat.nlink"; "xattr:*" covers every xattr.
        return any(
            fnmatch.fnmatchcase(name, self.field) for name in (diff.field, base_field(diff.field))
        )

    def describe(self) -> str:
        parts = [self.rule]
        if self.op:
            parts.append(f"op={self.op}")
        if self.field:
            parts.append(f"field={self.field}")
        return " ".join(parts) + f" ({self.source})"


def load(path: Path) -> list[KnownDifference]:
    """Read one file; every problem is a KnownFileError naming the file."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise KnownFileError(f"{path}: {exc}") from exc
    unknown_keys = set(data) - {"known"}
    if unknown_keys:
        raise KnownFileError(f"{path}: unknown top-level keys {sorted(unknown_keys)}")
    entries = data.get("known", [])
    if not isinstance(entries, list):
        raise KnownFileError(f"{path}: 'known' must be an array of tables ([[known]])")
    out = []
    allowed = {"rule", "op", "field", "reason", "link"}
    for i, entry in enumerate(entries, 1):
        where = f"{path}: entry {i}"
        if not isinstance(entry, dict):
            raise KnownFileError(f"{where}: not a table")
        extra = set(entry) - allowed
        if extra:
            raise KnownFileError(
                f"{where}: unknown keys {sorted(extra)}; allowed: {sorted(allowed)}"
            )
        for key in ("rule", "reason"):
            if not isinstance(entry.get(key), str) or not entry[key].strip():
                raise KnownFileError(f"{where}: '{key}' is required (a non-empty string)")
        for key in ("op", "field", "link"):
            if key in entry and not isinstance(entry[key], str):
                raise KnownFileError(f"{where}: '{key}' must be a string")
        out.append(
            KnownDifference(
                rule=entry["rule"],
                reason=entry["reason"],
                source=str(path),
                op=entry.get("op"),
                field=entry.get("field"),
                link=entry.get("link"),
            )
        )
    return out


def load_all(paths: Iterable[Path]) -> KnownList:
    entries: list[KnownDifference] = []
    for p in paths:
        entries.extend(load(p))
    return KnownList(entries)


def default_file(adapter_name: str) -> Path:
    """The project's reviewed list for a built-in adapter (may not exist)."""
    return KNOWN_DIR / f"{adapter_name}.toml"


@dataclass
class KnownList:
    """The entries in force for a run, and which of them occurred."""

    entries: Sequence[KnownDifference] = ()
    occurred: dict[KnownDifference, int] = field(default_factory=dict)

    def match(self, diff: Difference) -> KnownDifference | None:
        for entry in self.entries:
            if entry.matches(diff):
                return entry
        return None

    def classify(
        self, diffs: Sequence[Difference]
    ) -> tuple[list[tuple[Difference, KnownDifference]], list[Difference]]:
        """Split into (known, with their entries) and unknown differences."""
        known: list[tuple[Difference, KnownDifference]] = []
        unknown: list[Difference] = []
        for d in diffs:
            entry = self.match(d)
            if entry is None:
                unknown.append(d)
            else:
                known.append((d, entry))
        return known, unknown

    def record(self, entry: KnownDifference) -> None:
        self.occurred[entry] = self.occurred.get(entry, 0) + 1

    def stale(self, exercised_rules: Iterable[str]) -> list[KnownDifference]:
        """Entries that never occurred although a passing named case exercised their rule."""
        rules = set(exercised_rules)
        return [e for e in self.entries if e.rule in rules and not self.occurred.get(e)]
