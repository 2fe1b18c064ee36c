"""Comparing what an implementation did with what the model predicts, as data.

Every function here is pure: it takes the model's prediction and the adapter's observation
and returns a list of ``Difference`` records (empty when they agree). ``None`` in a model
``StatResult`` field means "not predicted" and is never compared; every other field is compared
exactly. Nothing else may weaken a comparison: known differences are matched afterwards
(``conformance.known``), never here.

Inode identity: model inode numbers and observed ``st_ino`` are different numbering spaces, so
``InodeMap`` keeps a bijection between them for a whole run. A model inode must keep its
``st_ino`` (across copy-up and remount alike), names sharing a model inode must share a
``st_ino``, and names with different model inodes must not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from model.features import BOOL_VALUES, REDIRECT_DIR_VALUES, XINO_VALUES, Features
from model.ops import Node, Op, Outcome, StatResult, View

#: StatResult fields compared as plain values (``ino`` goes through the InodeMap).
STAT_FIELDS: tuple[str, ...] = ("kind", "mode", "uid", "gid", "size", "nlink", "mtime", "rdev")


@dataclass(frozen=True)
class Difference:
    """One way the implementation disagreed with the model.

    ``field`` names what differed: ``errno`` / ``value`` / ``stat.<field>`` for a step's
    outcome, or ``present`` / ``lookup`` / ``<stat field>`` / ``data`` / ``target`` /
    ``xattr:<key>`` / ``ino`` for a path of the merged view after a step; ``fingerprint`` for
    a lower layer that changed on disk.
    """

    field: str
    expected: str
    observed: str
    step: int | None = None  # 1-based index of the step after which it was seen
    op: str | None = None  # the step's operation, as text
    op_name: str | None = None  # the system call name, for known-difference matching
    path: str | None = None  # a merged-view path, or a layer name for fingerprints
    rules: tuple[str, ...] = ()  # rule IDs of the step's Transition
    detail: str = ""

    @property
    def where(self) -> str:
        parts = []
        if self.step is not None:
            parts.append(f"step {self.step} {self.op}")
        if self.path is not None:
            parts.append(f"path {self.path!r}" if self.field != "fingerprint" else self.path)
        return ", ".join(parts) or "initial state"

    def message(self) -> str:
        rules = f" [rules: {', '.join(self.rules)}]" if self.rules else ""
        extra = f" ({self.detail})" if self.detail else ""
        return (
            f"{self.where}: {self.field}: expected {self.expected}, "
            f"observed {self.observed}{extra}{rules}"
        )

    def to_json(self) -> dict[str, object]:
        return {
            "field": self.field,
            "expected": self.expected,
            "observed": self.observed,
            "step": self.step,
            "op": self.op,
            "op_name": self.op_name,
            "path": self.path,
            "rules": list(self.rules),
            "detail": self.detail,
        }


def show(value: object) -> str:
    """A value as reports print it: octal modes are shown by the callers that know a mode."""
    if isinstance(value, frozenset):
        return "{" + ", ".join(repr(v) for v in sorted(value)) + "}"
    return repr(value)


def show_errno(errno: int) -> str:
    import errno as E  # local: only for names

    return "0 (success)" if errno == 0 else f"{E.errorcode.get(errno, '?')} ({errno})"


def _show_field(name: str, value: object) -> str:
    if name == "mode" and isinstance(value, int):
        return oct(value)
    return repr(value)


@dataclass
class InodeMap:
    """The bijection model inode ↔ observed st_ino, kept across a whole run."""

    to_obs: dict[int, int] = field(default_factory=dict)
    to_model: dict[int, int] = field(default_factory=dict)
    where: dict[int, str] = field(default_factory=dict)  # model ino → a path that showed it

    def check(self, model_ino: int, st_ino: int, path: str) -> str | None:
        """Record the pair, or say why it breaks the bijection."""
        known_obs = self.to_obs.get(model_ino)
        if known_obs is not None and known_obs != st_ino:
            return (
                f"model inode {model_ino} was st_ino {known_obs} "
                f"(at {self.where.get(model_ino, '?')!r}) and is now st_ino {st_ino}"
            )
        known_model = self.to_model.get(st_ino)
        if known_model is not None and known_model != model_ino:
            return (
                f"st_ino {st_ino} already belongs to model inode {known_model} "
                f"(at {self.where.get(known_model, '?')!r}), not model inode {model_ino}"
            )
        self.to_obs[model_ino] = st_ino
        self.to_model[st_ino] = model_ino
        self.where.setdefault(model_ino, path)
        return None

    def expect_obs(self, model_ino: int) -> int | None:
        return self.to_obs.get(model_ino)

    def forget_except(self, live: Iterable[int]) -> None:
        """Drop model inodes no longer visible: their st_ino may be reused by new objects."""
        keep = set(live)
        for m in [m for m in self.to_obs if m not in keep]:
            o = self.to_obs.pop(m)
            self.to_model.pop(o, None)
            self.where.pop(m, None)

    def copy(self) -> InodeMap:
        return InodeMap(dict(self.to_obs), dict(self.to_model), dict(self.where))


#: The rules that govern each field of the merged view, added to a difference in that field
#: so that it names them whatever the step was (and a known difference can name them).
FIELD_RULES: dict[str, tuple[str, ...]] = {
    "nlink": ("inode.nlink",),
    "ino": ("inode.st-ino",),
    "mtime": ("attr.mtime", "copy-up.preserves"),
    "mode": ("copy-up.preserves", "attr.chmod-chown-utimes"),
    "uid": ("copy-up.preserves", "attr.chmod-chown-utimes"),
    "gid": ("copy-up.preserves", "attr.chmod-chown-utimes"),
    "size": ("read.from-top", "write.data"),
    "data": ("read.from-top", "write.data"),
    "target": ("copy-up.preserves",),
    "kind": ("lookup.upper-hides-lower",),
    "present": ("lookup.whiteout", "readdir.union"),
    "lookup": ("readdir.pass-through", "readdir.lowest-xattr-whiteout"),
    "xattr": ("xattr.private-hidden", "copy-up.preserves"),
    "fingerprint": ("copy-up.lower-unchanged",),
    "observe": ("readdir.union", "read.from-top"),  # the walk of the view itself failed
}

#: Fields that only describe objects: a known difference there leaves model and implementation
#: in step, so the example goes on (with the same difference tolerated) instead of stopping.
OBSERVATIONAL_FIELDS: frozenset[str] = frozenset({"nlink", "ino", "mtime"})


def base_field(name: str) -> str:
    """``stat.nlink`` -> ``nlink``, ``xattr:user.a`` -> ``xattr``."""
    return name.removeprefix("stat.").split(":", 1)[0]


@dataclass(frozen=True)
class StepContext:
    """Where a comparison happens, copied into every Difference it yields."""

    step: int | None = None
    op: Op | None = None
    rules: tuple[str, ...] = ()
    #: The model's rules that decide what a path shows (``model.lookup.explain``).
    explain: Callable[[str], tuple[str, ...]] | None = None

    def diff(
        self, field: str, expected: str, observed: str, path: str | None = None, detail: str = ""
    ) -> Difference:
        return Difference(
            field=field,
            expected=expected,
            observed=observed,
            step=self.step,
            op=None if self.op is None else str(self.op),
            op_name=None if self.op is None else self.op.name,
            path=path,
            rules=tuple(
                dict.fromkeys(
                    (
                        *self.rules,
                        *FIELD_RULES.get(base_field(field), ()),
                        *(self.explain(path) if self.explain and path is not None else ()),
                    )
                )
            ),
            detail=detail,
        )


def compare_stat(
    expected: StatResult,
    observed: StatResult,
    inodes: InodeMap,
    ctx: StepContext,
    *,
    prefix: str,
    path: str | None,
) -> list[Difference]:
    """Compare every predicted field of a stat; identity through ``inodes``."""
    out: list[Difference] = []
    for name in STAT_FIELDS:
        want = getattr(expected, name)
        if want is None:  # not predicted by the model
            continue
        got = getattr(observed, name)
        if want != got:
            out.append(
                ctx.diff(f"{prefix}{name}", _show_field(name, want), _show_field(name, got), path)
            )
    problem = inodes.check(expected.ino, observed.ino, path or "")
    if problem is not None:
        out.append(
            ctx.diff(
                f"{prefix}ino",
                f"model inode {expected.ino}",
                f"st_ino {observed.ino}",
                path,
                detail=problem,
            )
        )
    return out


def compare_outcome(
    expected: Outcome, observed: Outcome, inodes: InodeMap, ctx: StepContext
) -> list[Difference]:
    """The errno, then the value (a StatResult field by field)."""
    if expected.errno != observed.errno:
        return [ctx.diff("errno", show_errno(expected.errno), show_errno(observed.errno))]
    want, got = expected.value, observed.value
    if isinstance(want, StatResult) and isinstance(got, StatResult):
        return compare_stat(want, got, inodes, ctx, prefix="stat.", path=None)
    if want != got:
        return [ctx.diff("value", show(want), show(got))]
    return []


def _kind(node: Node) -> str:
    if node.stat is None:
        return f"listed name whose lstat fails with {show_errno(node.errno)}"
    return f"a {node.stat.kind}"


def compare_node(
    path: str, expected: Node, observed: Node, inodes: InodeMap, ctx: StepContext
) -> list[Difference]:
    if expected.stat is None or observed.stat is None:
        # A listed name that cannot be looked up: only its errno is predicted.
        if expected.stat is None and observed.stat is None:
            if expected.errno == observed.errno:
                return []
            return [ctx.diff("errno", show_errno(expected.errno), show_errno(observed.errno), path)]
        return [ctx.diff("lookup", _kind(expected), _kind(observed), path)]
    out = compare_stat(expected.stat, observed.stat, inodes, ctx, prefix="", path=path)
    if expected.stat.kind != observed.stat.kind:
        return out  # contents of different kinds are not comparable
    if expected.data != observed.data:
        out.append(ctx.diff("data", repr(expected.data), repr(observed.data), path))
    if expected.target != observed.target:
        out.append(ctx.diff("target", repr(expected.target), repr(observed.target), path))
    out.extend(_compare_xattrs(path, expected.xattrs, observed.xattrs, ctx))
    return out


def _compare_xattrs(
    path: str, expected: Mapping[str, bytes], observed: Mapping[str, bytes], ctx: StepContext
) -> list[Difference]:
    out = []
    for key in sorted(set(expected) | set(observed)):
        want = repr(expected[key]) if key in expected else "absent"
        got = repr(observed[key]) if key in observed else "absent"
        if want != got:
            out.append(ctx.diff(f"xattr:{key}", want, got, path))
    return out


def compare_views(
    expected: View, observed: View, inodes: InodeMap, ctx: StepContext
) -> list[Difference]:
    """The whole merged view: which names exist, then every node, in path order."""
    inodes.forget_except(node.stat.ino for node in expected.values() if node.stat is not None)
    out: list[Difference] = []
    for path in sorted(set(expected) | set(observed)):
        want, got = expected.get(path), observed.get(path)
        if want is None and got is not None:
            out.append(ctx.diff("present", "absent", _kind(got), path))
        elif want is not None and got is None:
            out.append(ctx.diff("present", _kind(want), "absent", path))
        elif want is not None and got is not None:
            out.extend(compare_node(path, want, got, inodes, ctx))
    return out


def compare_fingerprints(
    before: Mapping[str, str], after: Mapping[str, str], ctx: StepContext
) -> list[Difference]:
    """Lower layers must never change on disk."""
    return [
        ctx.diff("fingerprint", before[name], after.get(name, "missing"), path=name,
                 detail="a lower layer was modified on disk")
        for name in sorted(before)
        if after.get(name) != before[name]
    ]  # fmt: skip


def compare_options(
    declared: Features, in_effect: Mapping[str, str], rules: tuple[str, ...] = ()
) -> list[Difference]:
    """The semantic options the implementation reports as in effect must be the declared ones.
    Options it does not report (or reports in a form we do not know) are not judged."""
    ctx = StepContext(rules=rules)
    wanted = dict(opt.partition("=")[::2] for opt in declared.mount_options())
    wanted["userxattr"] = "on" if declared.userxattr else "off"
    out = []
    for key, want in wanted.items():
        got = in_effect.get(key)
        if got is None or got not in _OPTION_VALUES.get(key, ()):
            continue
        if got != want:
            out.append(ctx.diff(f"option:{key}", want, got, detail="mount option in effect"))
    return out


_OPTION_VALUES: dict[str, tuple[str, ...]] = {
    "redirect_dir": REDIRECT_DIR_VALUES,
    "index": BOOL_VALUES,
    "metacopy": BOOL_VALUES,
    "xino": XINO_VALUES,
    "nfs_export": BOOL_VALUES,
    "userxattr": BOOL_VALUES,
}
