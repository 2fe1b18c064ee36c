"""Running an implementation next to the model: one stack at a time, step by step.

``Run`` builds a layer stack on scratch disk, mounts it with the adapter, and performs each
operation on both the implementation and ``model.apply``; after every step it compares the
outcome, then the whole merged view, then the lower layers' fingerprints. The Hypothesis state
machine and the named cases both drive a ``Run``, so they judge in exactly the same way (as
Hypothesis's ``test_database_agreement`` applies each rule to every implementation and asserts
they agree; here there are two: the model and the adapter).

Teardown always runs: ``Run.close`` unmounts and removes the scratch directory, and is called
from the machine's ``teardown`` (which Hypothesis runs in a ``finally``) and, for anything still
open at interpreter or session end, from ``close_all``.
"""

from __future__ import annotations

import errno
import hashlib
import os
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.control import current_build_context
from hypothesis.errors import InvalidArgument
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
)

import model
from adapters.base import Adapter, AdapterError, LayerDirs, Mounted
from conformance import reproducer, strategies
from conformance.compare import (
    OBSERVATIONAL_FIELDS,
    Difference,
    InodeMap,
    StepContext,
    base_field,
    compare_fingerprints,
    compare_options,
    compare_outcome,
    compare_views,
)
from conformance.known import KnownDifference, KnownList
from conformance.report import FailureRecord, Recorder
from conformance.reproducer import MountSpec, ReproducerInput, StepRecord
from model import ops
from model.features import Features
from model.lookup import explain
from model.ops import Op, View
from model.paths import Errno, Escape, resolve
from model.state import Overlay

# --- profiles -----------------------------------------------------------------------------

_COMMON: dict[str, Any] = {
    "deadline": None,  # mounts and remounts take as long as they take
    "print_blob": True,
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
}


@dataclass(frozen=True)
class Profile:
    name: str
    settings: settings
    max_lowers: int


PROFILES: dict[str, Profile] = {
    "ci": Profile(
        "ci",
        settings(derandomize=True, max_examples=400, stateful_step_count=25, **_COMMON),
        max_lowers=3,
    ),
    "default": Profile(
        "default",
        settings(derandomize=False, max_examples=100, stateful_step_count=30, **_COMMON),
        max_lowers=3,
    ),
    "thorough": Profile(
        "thorough",
        settings(derandomize=False, max_examples=1000, stateful_step_count=50, **_COMMON),
        max_lowers=6,
    ),
}
for _p in PROFILES.values():
    # Registered under our own names so they never clash with a project's Hypothesis profiles;
    # the suite passes its settings explicitly and never loads a profile globally.
    settings.register_profile(f"overlay-conformance-{_p.name}", _p.settings)


# --- the context a run needs ----------------------------------------------------------------


@dataclass
class Context:
    """What the plugin resolved for the session: shared by every run."""

    adapter: Adapter
    features: Features
    profile: Profile
    known: KnownList
    recorder: Recorder
    report_dir: Path
    env: strategies.Environment = field(default_factory=strategies.Environment.here)
    seed: int | None = None
    replay_args: str = ""
    on_first_mount: Callable[[Mapping[str, str]], None] | None = None
    #: What the run exercised: "runs", "steps", "op:<name>", "errno:<name>".
    stats: Counter[str] = field(default_factory=Counter)
    _mounted_once: bool = False

    def note_mount(self, mounted: Mounted) -> None:
        if self._mounted_once:
            return
        self._mounted_once = True
        try:
            opts = dict(mounted.options_in_effect())
        except (AdapterError, OSError) as exc:
            opts = {"<unreadable>": str(exc)}
        self.recorder.options_in_effect = opts
        if self.on_first_mount is not None:
            self.on_first_mount(opts)


class ConformanceFailure(AssertionError):
    """The implementation differs from the model in a way no known difference covers."""


# --- the layout helpers (written concurrently; imported late) ----------------------------------


def _layout() -> Any:
    from adapters import layout

    return layout


def _scratch_path(obj: object) -> Path:
    if isinstance(obj, str | os.PathLike):
        return Path(os.fspath(obj))
    return Path(os.fspath(obj.path))  # type: ignore[attr-defined]


_LIVE: set[Run] = set()


def close_all() -> None:
    """Close every run still open (interrupts, crashes in between): no mount is left behind."""
    for run in list(_LIVE):
        run.close()


# --- one run ----------------------------------------------------------------------------------


class Run:
    """One initial stack, mounted, driven step by step next to the model."""

    def __init__(
        self, ctx: Context, initial: Overlay, test_id: str, rules: tuple[str, ...] = ()
    ) -> None:
        self.ctx = ctx
        self.rules = rules  # a named case's rules: named by differences seen before any step
        self.initial = initial
        self.state = initial
        self.test_id = test_id
        self.steps: list[StepRecord] = []
        self.inodes = InodeMap()
        self.diverged = False
        # The rules of the step that last changed each path of the model's view: a
        # difference that persists there is still about those rules.
        self.path_rules: dict[str, tuple[str, ...]] = {}
        # Known differences accepted so far, by (path, field): the same difference seen again
        # at a later step is the same known difference, whatever that step was.
        self.accepted: dict[tuple[str | None, str], KnownDifference] = {}
        self._stat_path: str | None = None
        self.mounted: Mounted | None = None
        self.layers: LayerDirs | None = None
        self.snapshots: list[reproducer.LayerSnapshot] = []
        self.fingerprints: dict[str, str] = {}
        self.mount_spec: MountSpec | None = None
        self._view: View | None = None
        self._exit = ExitStack()

    # lifecycle

    def start(self) -> Run:
        from adapters.scratch import Scratch

        _LIVE.add(self)
        # The model applies no umask (modes are exactly as passed), and the process's umask
        # would reach every create: clear it while a run is open, restore it afterwards.
        old_umask = os.umask(0)
        self._exit.callback(os.umask, old_umask)
        try:
            scratch = _scratch_path(self._exit.enter_context(Scratch()))
            layout = _layout()
            layers_root = scratch / "layers"
            layers_root.mkdir()
            self.layers = layout.write_stack(self.initial, layers_root)
            assert self.layers is not None
            for i, lower in enumerate(self.layers.lowers):
                self.snapshots.append(reproducer.snapshot(f"lower{i}", lower))
                self.fingerprints[f"lower{i}"] = layout.fingerprint(lower)
            if self.layers.upper is not None:
                self.snapshots.append(reproducer.snapshot("upper", self.layers.upper))
            adapter_scratch = scratch / "adapter"
            adapter_scratch.mkdir()
            self.mounted = self.ctx.adapter.mount(self.layers, self.ctx.features, adapter_scratch)
            self._exit.callback(self.mounted.close)
            self.mount_spec = _mount_spec(self.mounted, adapter_scratch)
            self.ctx.note_mount(self.mounted)
            self.ctx.stats["runs"] += 1
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        _LIVE.discard(self)
        self.mounted = None
        self._exit.close()

    def __enter__(self) -> Run:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # comparing

    @property
    def expected_view(self) -> View:
        if self._view is None:
            self._view = model.view(self.state)
        return self._view

    def _observe(self, ctx: StepContext) -> tuple[View | None, list[Difference]]:
        assert self.mounted is not None
        try:
            return self.mounted.observe(), []
        except OSError as exc:  # e.g. readdir lists a name that lstat cannot find
            where = f" at {exc.filename}" if exc.filename else ""
            return None, [ctx.diff("observe", "a readable merged view", f"{exc!r}{where}")]

    def _check_view(self, ctx: StepContext) -> list[Difference]:
        observed, problems = self._observe(ctx)
        if observed is not None:
            problems = compare_views(self.expected_view, observed, self.inodes, ctx)
        assert self.layers is not None
        layout = _layout()
        now = {f"lower{i}": layout.fingerprint(p) for i, p in enumerate(self.layers.lowers)}
        return problems + compare_fingerprints(self.fingerprints, now, ctx)

    def check_initial(self) -> None:
        """The options in effect and the merged view right after mounting, before any step."""
        assert self.mounted is not None
        try:
            options = compare_options(
                self.ctx.features, self.mounted.options_in_effect(), self.rules
            )
        except (AdapterError, OSError):
            options = []  # unreadable options are reported once by note_mount
        initial = StepContext(rules=self.rules, explain=self._explain)
        self._judge(options + self._check_view(initial), [])

    def _key(self, diff: Difference) -> tuple[str | None, str]:
        # A stat's outcome has no path: it is about the object the stat named.
        path = diff.path if diff.path is not None or diff.step is None else self._stat_path
        return path, base_field(diff.field)

    def _explain(self, path: str) -> tuple[str, ...]:
        """The rules behind what ``path`` shows in the model's current state: the lookup
        rules met on the way to it, and those of the step that last changed it."""
        lookup_rules = explain(self.state, tuple(path.split("/")) if path else ())
        return (*self.path_rules.get(path, ()), *lookup_rules)

    def _note_changes(self, before: View, rules: tuple[str, ...]) -> None:
        """A changed path is about this step's rules now; its parent directory, whose
        entries changed, is about them too (in addition to what it was about before)."""
        after = self.expected_view
        for path in set(before) | set(after):
            if before.get(path) != after.get(path):
                self.path_rules[path] = rules
                if path:
                    parent = path.rpartition("/")[0]
                    merged = (*self.path_rules.get(parent, ()), *rules)
                    self.path_rules[parent] = tuple(dict.fromkeys(merged))

    def _object_rules(self, op: Op) -> tuple[str, ...]:
        """For a stat, the rules behind the object it names (its outcome has no path)."""
        self._stat_path = None
        if not isinstance(op, ops.Stat | ops.Lstat):
            return ()
        try:
            obj = resolve(self.state, op.path, follow=isinstance(op, ops.Stat))
        except (Errno, Escape):
            return ()
        self._stat_path = "/".join(obj.path)
        return self._explain(self._stat_path)

    def step(self, op: Op) -> None:
        """Perform ``op`` on the model and the implementation and judge the result."""
        assert self.mounted is not None and not self.diverged
        index = len(self.steps) + 1
        transition = model.apply(self.state, op)
        observed = self.mounted.perform(op)
        self.steps.append(StepRecord(index, op, transition.outcome, observed, transition.rules))
        self.ctx.stats["steps"] += 1
        self.ctx.stats[f"op:{op.name}"] += 1
        self.ctx.stats[f"errno:{errno.errorcode.get(transition.outcome.errno, 'ok')}"] += 1
        rules = (*transition.rules, *self._object_rules(op))
        ctx = StepContext(index, op, tuple(dict.fromkeys(rules)), explain=self._explain)
        before = self.expected_view
        outcome = compare_outcome(transition.outcome, observed, self.inodes, ctx)
        self.state = transition.state
        self._view = None
        self._note_changes(before, tuple(transition.rules))
        after = self._check_view(ctx)
        if outcome:
            # The states have diverged: judge the outcome; the view is shown as context.
            fingerprints = [d for d in after if d.field == "fingerprint"]
            self._judge(outcome + fingerprints, [d for d in after if d not in fingerprints])
        else:
            self._judge(after, [])

    def _judge(self, diffs: list[Difference], context: list[Difference]) -> None:
        if not diffs:
            return
        persisting = [(d, self.accepted.get(self._key(d))) for d in diffs]
        again = [(d, entry) for d, entry in persisting if entry is not None]
        known, unknown = self.ctx.known.classify([d for d, entry in persisting if entry is None])
        for d, entry in known:
            self.ctx.known.record(entry)
            self.accepted[self._key(d)] = entry
        known = again + known
        if not unknown:
            # A known difference in what happened (an outcome, a name, contents) means the
            # states have parted: this example stops. One in a descriptive field only (link
            # counts, inode numbers, times) leaves them in step: go on exploring.
            if any(base_field(d.field) not in OBSERVATIONAL_FIELDS for d, _ in known):
                self.diverged = True
            return
        self.fail(unknown, context, known)

    def fail(
        self,
        unknown: list[Difference],
        context: list[Difference],
        known: list[tuple[Difference, KnownDifference]],
    ) -> None:
        record = FailureRecord(
            test=self.test_id,
            adapter=self.ctx.adapter.name,
            initial=self.initial,
            steps=list(self.steps),
            differences=unknown,
            context=context,
            known=known,
            replay=self.ctx.replay_args,
        )
        if _is_final():
            record.reproducer = self.write_reproducer(record)
            self.ctx.recorder.add(record)
        raise ConformanceFailure(record.message())

    def write_reproducer(self, record: FailureRecord) -> Path | None:
        shown = sorted({d.path for d in record.differences if d.path and d.field != "fingerprint"})
        inp = ReproducerInput(
            title=f"{self.test_id} ({self.ctx.adapter.name})",
            adapter=self.ctx.adapter.name,
            features=self.ctx.features,
            layers=self.snapshots,
            work=None if self.layers is None or self.layers.work is None
            else os.fspath(self.layers.work),
            steps=self.steps,
            differences=[d.message() for d in record.differences],
            paths_to_show=shown,
            mount=self.mount_spec,
        )  # fmt: skip
        digest = hashlib.sha1(self.test_id.encode()).hexdigest()[:8]
        name = f"{self.ctx.adapter.name}-{self.test_id.rpartition('::')[2]}-{digest}"
        try:
            return reproducer.write(inp, self.ctx.report_dir, name)
        except OSError:  # a report that cannot be written must not hide the difference
            return None


def _is_final() -> bool:
    """Whether this is the run Hypothesis reports (the shrunk example), or no Hypothesis at all."""
    try:
        return bool(current_build_context().is_final)
    except InvalidArgument:
        return True


def _mount_spec(mounted: Mounted, scratch: Path) -> MountSpec | None:
    """The adapter's own mount command line, if it offers one (optional ``describe_mount``:
    a mapping with ``mount``, ``umount`` and ``mountpoint``, real paths in them)."""
    describe = getattr(mounted, "describe_mount", None)
    if not callable(describe):
        return None
    try:
        spec = describe()
    except (AdapterError, OSError, NotImplementedError):
        return None
    if not isinstance(spec, Mapping) or not {"mount", "umount", "mountpoint"} <= set(spec):
        return None
    return MountSpec(
        mount=str(spec["mount"]),
        umount=str(spec["umount"]),
        mountpoint=str(spec["mountpoint"]),
        scratch=os.fspath(scratch),
    )


# --- the state machine --------------------------------------------------------------------------

_FALLBACK_OP = model.ops.Lstat("")
_DRAW_ATTEMPTS = 5


def machine_class(ctx: Context, test_id: str) -> type[RuleBasedStateMachine]:
    """A state machine bound to one session's adapter, features and profile."""
    initial_stacks = strategies.stacks(ctx.features, max_lowers=ctx.profile.max_lowers, env=ctx.env)

    class OverlayMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.run: Run | None = None

        @initialize(initial=initial_stacks)
        def mount_stack(self, initial: Overlay) -> None:
            self.run = Run(ctx, initial, test_id).start()
            self.run.check_initial()

        @precondition(lambda self: self.run is not None and not self.run.diverged)
        @rule(data=st.data())
        def step(self, data: st.DataObject) -> None:
            assert self.run is not None
            view = self.run.expected_view
            op: Op = _FALLBACK_OP
            for _ in range(_DRAW_ATTEMPTS):
                # Redraw rather than assume(): a rejected step would discard the whole example.
                candidate = data.draw(strategies.operations(view, ctx.env), label="op")
                if not strategies.op_escapes(view, candidate, self.run.state):
                    op = candidate
                    break
            self.run.step(op)

        @precondition(lambda self: self.run is not None and self.run.diverged)
        @rule()
        def stopped_at_known_difference(self) -> None:
            """Nothing: model and implementation diverged in a known way."""

        def teardown(self) -> None:
            if self.run is not None:
                self.run.close()

    # Distinct names give distinct example-database keys per adapter and feature set.
    OverlayMachine.__name__ = OverlayMachine.__qualname__ = (
        f"OverlayMachine_{_ident(ctx.adapter.name)}_{_ident(ctx.features.describe())}"
    )
    return OverlayMachine


def _ident(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def run_machine(ctx: Context, test_id: str) -> None:
    """Run the state machine under the session's profile (and seed, if any)."""
    from hypothesis import seed as seed_decorator
    from hypothesis.stateful import get_state_machine_test

    test: Callable[[], None] = get_state_machine_test(  # type: ignore[no-untyped-call]
        machine_class(ctx, test_id), settings=ctx.profile.settings
    )
    if ctx.seed is not None and not ctx.profile.settings.derandomize:
        test = seed_decorator(ctx.seed)(test)
    test()


# --- named cases ------------------------------------------------------------------------------


def case_features_mismatch(case_features: Features, session: Features) -> str | None:
    """Why a named case cannot run in this session, or None. A case written for the default
    features runs under any; one that names features runs only where they are declared."""
    if case_features in (Features(), session):
        return None
    return (
        f"case needs features {case_features.describe()}; this run declares "
        f"{session.describe()} (run with --features={case_features.describe()})"
    )


def run_case(
    ctx: Context, stack: Overlay, steps: tuple[Op, ...], test_id: str, rules: tuple[str, ...]
) -> bool:
    """Run one named case; True if it ran to the end (possibly stopped by a known difference,
    which still counts as exercising its rules)."""
    initial = replace(stack, features=ctx.features)
    with Run(ctx, initial, test_id, rules) as run:
        run.check_initial()
        for op in steps:
            if run.diverged:
                break
            view = run.expected_view
            if strategies.op_escapes(view, op, run.state):
                raise ConformanceFailure(
                    f"named case step {op} would resolve outside the mount; not performed"
                )
            run.step(op)
    return True
