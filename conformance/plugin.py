"""The pytest plugin (entry point ``overlay_conformance``): options, validation, fixtures.

The plugin is inert unless conformance tests are collected or ``--adapter`` is given: a plain
``pytest tests`` never resolves an adapter nor mounts anything. When it is active, a bad option
or an adapter that cannot run here is a usage error with the reason and a non-zero exit, never
a silent skip.

    pytest --pyargs conformance --adapter=kernel --features=redirect_dir=nofollow,index=off
    pytest conformance --adapter=mypkg.adapters:MyAdapter --known-differences=mine.toml
"""

from __future__ import annotations

import platform
import random
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path

import pytest

from adapters.base import Adapter, AdapterError, AdapterOptions, Unavailable
from conformance import known as known_mod
from conformance.machine import PROFILES, ConformanceFailure, Context, Run, close_all
from conformance.report import Recorder
from model.features import FeatureError, Features
from model.state import Overlay

ADAPTER = "--adapter"
FEATURES = "--features"
MOUNT_CMD = "--mount-cmd"
UMOUNT_CMD = "--umount-cmd"
KNOWN = "--known-differences"
PROFILE = "--conformance-profile"
REPORT_DIR = "--report-dir"

DEFAULT_ADAPTER = "python"
DEFAULT_PROFILE = "default"
DEFAULT_REPORT_DIR = "conformance-report"
MARKER = "conformance"

_STATE = pytest.StashKey["_Session"]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("overlay-conformance", "overlay conformance suite")
    group.addoption(
        ADAPTER,
        action="store",
        default=None,
        metavar="NAME",
        help=f"implementation to check: a registered adapter name or 'module:Factory' "
        f"(default: {DEFAULT_ADAPTER})",
    )
    group.addoption(
        FEATURES,
        action="store",
        default="",
        metavar="SPEC",
        help="mount features, e.g. 'redirect_dir=nofollow,index=off' (default: the plain overlay)",
    )
    group.addoption(MOUNT_CMD, action="store", default=None, metavar="CMD",
                    help="mount command template (command adapter)")  # fmt: skip
    group.addoption(UMOUNT_CMD, action="store", default=None, metavar="CMD",
                    help="unmount command template (command adapter)")  # fmt: skip
    group.addoption(
        KNOWN,
        action="append",
        default=[],
        metavar="FILE",
        help="TOML list of reviewed known differences (for third-party adapters; repeatable)",
    )
    group.addoption(
        PROFILE,
        action="store",
        default=DEFAULT_PROFILE,
        metavar="NAME",
        help=f"example budget: {'|'.join(PROFILES)} (default: {DEFAULT_PROFILE})",
    )
    group.addoption(
        REPORT_DIR,
        action="store",
        default=DEFAULT_REPORT_DIR,
        metavar="DIR",
        help=f"where difference reports and reproducers go (default: ./{DEFAULT_REPORT_DIR})",
    )


class _Session:
    """The plugin's per-session state: validated options, then the resolved adapter."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        opt = config.getoption
        self.explicit_adapter: str | None = opt(ADAPTER)
        self.adapter_name: str = self.explicit_adapter or DEFAULT_ADAPTER
        try:
            self.features = Features.parse(opt(FEATURES))
        except FeatureError as exc:
            raise pytest.UsageError(f"{FEATURES}: {exc}") from exc
        if unspecified := self.features.unspecified():
            raise pytest.UsageError(
                f"{FEATURES}: the model cannot predict this mount yet: {'; '.join(unspecified)}"
            )
        profile = opt(PROFILE)
        if profile not in PROFILES:
            raise pytest.UsageError(
                f"{PROFILE}={profile!r} is not a profile; allowed: {', '.join(PROFILES)}"
            )
        self.profile = PROFILES[profile]
        self.report_dir = Path(opt(REPORT_DIR)).absolute()
        if self.report_dir.exists() and not self.report_dir.is_dir():
            raise pytest.UsageError(f"{REPORT_DIR}={self.report_dir} exists and is not a directory")
        self.known_files = [Path(p) for p in opt(KNOWN)]
        for path in self.known_files:
            if not path.is_file():
                raise pytest.UsageError(f"{KNOWN}={path}: no such file")
        self.options = AdapterOptions(mount_cmd=opt(MOUNT_CMD), umount_cmd=opt(UMOUNT_CMD))
        self.seed = _seed(config)
        self.adapter: Adapter | None = None
        self.context: Context | None = None
        self.options_in_effect: Mapping[str, str] | None = None
        self.stale: list[known_mod.KnownDifference] = []
        self.known = known_mod.KnownList()

    def resolve(self) -> Adapter:
        """Find the adapter and check that it can run here; UsageError otherwise."""
        if self.adapter is not None:
            return self.adapter
        adapter = _load_adapter(self.adapter_name, self.options)
        reason = adapter.unavailable()
        if reason:
            raise pytest.UsageError(f"{ADAPTER}={self.adapter_name} cannot run here: {reason}")
        paths = [known_mod.default_file(adapter.name or self.adapter_name)]
        own = adapter.known_differences()
        if own is not None and own not in paths:
            paths.append(own)
        paths = [p for p in paths if p.is_file()] + self.known_files
        try:
            self.known = known_mod.load_all(paths)
        except known_mod.KnownFileError as exc:
            raise pytest.UsageError(f"known differences: {exc}") from exc
        self.adapter = adapter
        return adapter

    def build_context(self) -> Context:
        if self.context is not None:
            return self.context
        adapter = self.resolve()
        recorder = Recorder(
            adapter=adapter.name or self.adapter_name,
            version=_version(adapter),
            features=self.features.describe(),
            profile=self.profile.name,
            seed="derandomized"
            if self.profile.settings.derandomize or self.seed is None
            else str(self.seed),
            report_dir=self.report_dir,
            # xdist gives each worker's config its id; the environment variable would also
            # leak into pytester runs made inside a worker.
            worker=getattr(self.config, "workerinput", {}).get("workerid"),
        )
        self.context = Context(
            adapter=adapter,
            features=self.features,
            profile=self.profile,
            known=self.known,
            recorder=recorder,
            report_dir=self.report_dir,
            seed=self.seed,
            replay_args=self.replay_args(),
            on_first_mount=self._first_mount,
        )
        return self.context

    def replay_args(self) -> str:
        parts = [
            f"{ADAPTER}={self.adapter_name}",
            f"{FEATURES}={self.features.describe()}",
            f"{PROFILE}={self.profile.name}",
        ]
        if self.seed is not None and not self.profile.settings.derandomize:
            parts.append(f"--hypothesis-seed={self.seed}")
        return " ".join(parts) + " (failing examples are also replayed from .hypothesis/)"

    def _first_mount(self, opts: Mapping[str, str]) -> None:
        self.options_in_effect = opts
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"overlay options in effect: {_opts(opts)}")


def _seed(config: pytest.Config) -> int | None:
    """The seed for the stateful test: Hypothesis's --hypothesis-seed if given, else a fresh
    one that the header and every failure print, so any run can be replayed."""
    given = config.getoption("hypothesis_seed", default=None)
    if given is not None:
        try:
            return int(given)
        except ValueError:
            return None
    return random.SystemRandom().randrange(2**32)


def _load_adapter(name: str, options: AdapterOptions) -> Adapter:
    """A registered name, an entry point, or ``package.module:Factory`` (adapters.registry)."""
    from adapters import registry

    try:
        return registry.get_adapter(name, options)
    except Unavailable as exc:
        raise pytest.UsageError(f"{ADAPTER}={name} cannot run here: {exc}") from exc
    except (KeyError, ValueError, AdapterError) as exc:
        raise pytest.UsageError(
            f"{ADAPTER}={name}: {_reason(exc)}; allowed: {_allowed(registry)} "
            "or package.module:Factory"
        ) from exc


def _reason(exc: BaseException) -> str:
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def _allowed(registry: object) -> str:
    names = getattr(registry, "known_names", None)
    try:
        return ", ".join(names()) if callable(names) else "(see adapters.registry)"
    except Exception:  # a broken registry must not hide the usage error
        return "(see adapters.registry)"


def _version(adapter: Adapter) -> str:
    try:
        return adapter.version()
    except (AdapterError, OSError) as exc:
        return f"unknown ({exc})"


def _opts(opts: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" if v else k for k, v in opts.items()) or "(none reported)"


def _mentions_conformance(config: pytest.Config) -> bool:
    """Whether a positional argument names the suite (``--pyargs conformance``, a path):
    then the adapter is resolved early, so that the header can name it."""
    return any(
        "conformance" in str(a) and not str(a).startswith("-")
        for a in config.invocation_params.args
    )


# --- hooks ------------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}: an overlay conformance test (model vs adapter)")
    session = _Session(config)
    config.stash[_STATE] = session
    if session.explicit_adapter is not None or _mentions_conformance(config):
        session.resolve()


def pytest_report_header(config: pytest.Config) -> list[str]:
    session = config.stash.get(_STATE, None)
    if session is None or session.adapter is None:
        return []
    adapter = session.adapter
    lines = [
        f"overlay conformance: adapter {adapter.name or session.adapter_name} "
        f"{_version(adapter)}; kernel {platform.release()}",
        f"  features: {session.features.describe()}",
        f"  profile: {session.profile.name}; "
        + (
            "derandomized"
            if session.profile.settings.derandomize
            else f"seed {session.seed} (replay: --hypothesis-seed={session.seed})"
        ),
        f"  reports: {session.report_dir}",
    ]
    if session.options_in_effect is not None:
        lines.append(f"  options in effect: {_opts(session.options_in_effect)}")
    return lines


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    state = config.stash.get(_STATE, None)
    if state is not None and any(item.get_closest_marker(MARKER) for item in items):
        state.resolve()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    close_all()
    state = session.config.stash.get(_STATE, None)
    if state is None or state.context is None:
        return
    ctx = state.context
    ctx.recorder.known_occurred = dict(ctx.known.occurred)
    # Staleness is judged only on a whole, clean run: a failure cuts exploration short, and an
    # xdist worker sees only its share of the examples.
    whole_run = session.testsfailed == 0 and not hasattr(session.config, "workerinput")
    state.stale = ctx.known.stale(ctx.recorder.passed_case_rules) if whole_run else []
    ctx.recorder.stale = state.stale
    try:
        ctx.recorder.write()
    except OSError as exc:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"could not write the conformance summary: {exc}", red=True)
    if state.stale:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    state = terminalreporter.config.stash.get(_STATE, None)
    if state is None or state.context is None:
        return
    ctx = state.context
    tr = terminalreporter
    tr.section("overlay conformance")
    tr.write_line(
        f"adapter {ctx.recorder.adapter}; features {ctx.recorder.features}; "
        f"options in effect: {_opts(ctx.recorder.options_in_effect)}"
    )
    stats = ctx.stats
    if stats:
        ops_seen = ", ".join(
            f"{k[3:]}={n}" for k, n in sorted(stats.items()) if k.startswith("op:")
        )
        errnos = ", ".join(
            f"{k[6:]}={n}" for k, n in sorted(stats.items()) if k.startswith("errno:")
        )
        tr.write_line(f"{stats['runs']} stacks mounted, {stats['steps']} steps")
        tr.write_line(f"  operations: {ops_seen}")
        tr.write_line(f"  model outcomes: {errnos}")
    for entry, n in ctx.known.occurred.items():
        tr.write_line(f"known difference occurred {n}x: {entry.describe()} -- {entry.reason}")
    for f in ctx.recorder.failures:
        where = f.reproducer if f.reproducer is not None else "(no reproducer written)"
        tr.write_line(f"DIFFERENCE in {f.test}: rules {', '.join(f.rules)}; reproducer {where}")
    for entry in state.stale:
        tr.write_line(
            f"KNOWN DIFFERENCE NO LONGER OCCURS (remove it): {entry.describe()} -- {entry.reason}",
            red=True,
        )
    tr.write_line(f"summary: {ctx.recorder.report_dir}")


def pytest_unconfigure(config: pytest.Config) -> None:
    close_all()  # belt and braces: nothing stays mounted, whatever happened


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def conformance(request: pytest.FixtureRequest) -> Context:
    """The session's resolved adapter, features, profile, known differences and recorder."""
    state = request.config.stash[_STATE]
    return state.build_context()


@pytest.fixture(scope="session")
def adapter(conformance: Context) -> Adapter:
    """The implementation under test."""
    return conformance.adapter


@pytest.fixture(scope="session")
def features(conformance: Context) -> Features:
    """The declared mount features."""
    return conformance.features


@pytest.fixture
def overlay(
    conformance: Context, request: pytest.FixtureRequest
) -> Iterator[Callable[[Overlay], Run]]:
    """A factory: ``overlay(stack)`` builds ``stack`` in a fresh scratch dir, mounts it and
    returns the ``Run``; every run it made is unmounted and removed after the test."""
    runs: list[Run] = []

    def make(stack: Overlay) -> Run:
        run = Run(conformance, stack, request.node.nodeid).start()
        runs.append(run)
        return run

    try:
        yield make
    finally:
        for run in reversed(runs):
            run.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A difference is reported as the difference report itself (with Hypothesis's notes on
    how to replay it), not as a traceback through the suite's own code."""
    report = yield
    excinfo = call.excinfo
    if report.failed and excinfo is not None and excinfo.errisinstance(ConformanceFailure):
        notes = getattr(excinfo.value, "__notes__", [])
        report.longrepr = "\n".join([str(excinfo.value), *notes])
    return report
