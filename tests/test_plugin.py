"""conformance.plugin: options, validation errors, the header, inertness, known differences.

Every usage error must exit non-zero with a message saying what is allowed; an adapter that
cannot run here is an error, never a silent skip.
"""

from __future__ import annotations

import json
from importlib.metadata import entry_points

import pytest

from adapters import registry
from conformance import plugin

pytest_plugins = ["pytester"]

UNAVAILABLE = """
from adapters.base import Adapter

class NoUnicorn(Adapter):
    name = "unicorn"

    @classmethod
    def unavailable(cls):
        return "needs a unicorn in /dev/unicorn"

    def mount(self, layers, features, scratch):
        raise AssertionError("never mounted")
"""


def plugin_args() -> list[str]:
    """The plugin is loaded by its entry point when installed, else by name (never both)."""
    installed = any(ep.name == "overlay_conformance" for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "conformance.plugin"]


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*plugin_args(), "-p", "no:cacheprovider", *args)


NAMED = ("--pyargs", "conformance.test_named_cases")


def test_bad_adapter_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = run(pytester, *NAMED, "--adapter=nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--adapter=nope*unknown adapter*allowed: kernel, fuse*"])


def test_bad_features_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--features=redirect_dir=sideways")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--features*redirect_dir*allowed: on, follow, nofollow, off*"])
    result = run(pytester, "--features=colour=blue")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unknown feature 'colour'*known features*"])


def test_features_the_model_does_not_specify_are_a_usage_error(pytester: pytest.Pytester) -> None:
    # Predicting the plain overlay for a redirect_dir=on mount would report false differences.
    result = run(pytester, "--features=redirect_dir=on,metacopy=on")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--features*cannot predict*redirect_dir=on (the model specifies nofollow*metacopy=on*"]
    )


def test_bad_profile_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--conformance-profile=quick")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--conformance-profile='quick'*allowed: ci, default, thorough*"])


def test_missing_known_differences_file_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = run(pytester, "--known-differences=nothere.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--known-differences=nothere.toml: no such file*"])


def test_malformed_known_differences_file_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makefile(".toml", bad='[[known]]\nrule = "x"\n')  # no reason
    result = run(pytester, *NAMED, "--adapter=python", "--known-differences=bad.toml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*bad.toml: entry 1: 'reason' is required*"])


def test_unavailable_adapter_is_an_error_with_its_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(unicorn=UNAVAILABLE)
    pytester.syspathinsert()
    result = run(pytester, *NAMED, "--adapter=unicorn:NoUnicorn")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--adapter=unicorn:NoUnicorn cannot run here: needs a unicorn in /dev/unicorn*"]
    )
    result.stdout.no_fnmatch_line("*skipped*")


def test_unavailable_adapter_given_explicitly_fails_even_without_conformance_tests(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(unicorn=UNAVAILABLE, test_plain="def test_x():\n    pass\n")
    pytester.syspathinsert()
    result = run(pytester, "test_plain.py", "--adapter=unicorn:NoUnicorn")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_inert_without_conformance_tests(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plain run never resolves an adapter: even an unusable default does not matter."""
    monkeypatch.setattr(plugin, "DEFAULT_ADAPTER", "no.such.module:Adapter")
    pytester.makepyfile(test_plain="def test_x():\n    pass\n")
    result = pytester.runpytest_inprocess(*plugin_args(), "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*overlay conformance*")
    # ...but collecting conformance tests resolves it, and fails loudly.
    result = pytester.runpytest_inprocess(*plugin_args(), "-p", "no:cacheprovider", *NAMED)
    assert result.ret == pytest.ExitCode.USAGE_ERROR


@pytest.mark.skipif(registry.unavailable("python") is not None, reason="python adapter missing")
def test_header_names_adapter_kernel_features_and_seed(pytester: pytest.Pytester) -> None:
    result = run(pytester, *NAMED, "--adapter=python", "--features=index=off", "-k", "nothing")
    result.stdout.fnmatch_lines(
        [
            "overlay conformance: adapter python *; kernel *",
            "  features: redirect_dir=nofollow,index=off,*",
            "  profile: default; seed * (replay: --hypothesis-seed=*)",
            "  reports: *conformance-report",
        ]
    )


@pytest.mark.skipif(registry.unavailable("python") is not None, reason="python adapter missing")
def test_ci_profile_is_derandomized_in_header(pytester: pytest.Pytester) -> None:
    result = run(pytester, *NAMED, "--adapter=python", "--conformance-profile=ci", "-k", "x")
    result.stdout.fnmatch_lines(["  profile: ci; derandomized"])


BROKEN_UNLINK = """
from adapters import registry
from adapters.base import Adapter, Mounted
from model import ops


class _Faulty(Mounted):
    def __init__(self, inner):
        self.inner = inner

    def perform(self, op):
        if isinstance(op, ops.Unlink):
            return ops.Outcome()  # claims success; the name stays visible
        return self.inner.perform(op)

    def observe(self):
        return self.inner.observe()

    def remount(self):
        self.inner.remount()

    def close(self):
        self.inner.close()


class UnlinkIgnored(Adapter):
    name = "broken-unlink"
    needs_root = False

    def __init__(self, options=None):
        super().__init__(options)
        self.inner = registry.get_adapter("python", options)

    def mount(self, layers, features, scratch):
        return _Faulty(self.inner.mount(layers, features, scratch))
"""

KNOWN_UNLINK = """
[[known]]
rule = "unlink.whiteout"
op = "unlink"
reason = "this test adapter ignores unlink on purpose"
link = "https://example.invalid/known"
"""

ONE_CASE = ("-k", "unlink and whiteout and not dir")


@pytest.mark.skipif(registry.unavailable("python") is not None, reason="python adapter missing")
def test_known_difference_is_reported_not_failed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(broken=BROKEN_UNLINK)
    pytester.syspathinsert()
    pytester.makefile(".toml", known=KNOWN_UNLINK)
    report = pytester.path / "report"
    args = (*NAMED, *ONE_CASE, "--adapter=broken:UnlinkIgnored", f"--report-dir={report}")
    # Without the entry the case fails...
    assert run(pytester, *args).ret == pytest.ExitCode.TESTS_FAILED
    # ...with it, the difference is known: reported, not a failure.
    result = run(pytester, *args, "--known-differences=known.toml")
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["*known difference occurred*unlink.whiteout*ignores unlink*"])
    summary = json.loads((report / "summary-broken-unlink.json").read_text())
    assert summary["known"][0]["occurrences"] >= 1
    assert summary["failures"] == []


@pytest.mark.skipif(registry.unavailable("python") is not None, reason="python adapter missing")
def test_known_difference_that_no_longer_occurs_fails_the_session(
    pytester: pytest.Pytester,
) -> None:
    pytester.makefile(".toml", known=KNOWN_UNLINK)
    report = pytester.path / "report"
    result = run(
        pytester, *NAMED, *ONE_CASE, "--adapter=python", "--known-differences=known.toml",
        f"--report-dir={report}",
    )  # fmt: skip
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["*KNOWN DIFFERENCE NO LONGER OCCURS*unlink.whiteout*"])
    summary = json.loads((report / "summary-python.json").read_text())
    assert summary["stale_known"]


def test_report_dir_must_be_a_directory(pytester: pytest.Pytester) -> None:
    pytester.makefile(".txt", afile="x")
    result = run(pytester, "--report-dir=afile.txt")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--report-dir=*afile.txt exists and is not a directory*"])


def test_plugin_registered_once(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="""
        def test_once(pytestconfig):
            import conformance.plugin as p
            names = [n for n, x in pytestconfig.pluginmanager.list_name_plugin() if x is p]
            assert len(names) == 1, names
        """
    )
    result = run(pytester, "test_plain.py")
    result.assert_outcomes(passed=1)


FIXTURE_USER = """
from model import ops
from model.frozen import FrozenMap
from model.state import Inode, Layer, Overlay, empty_layer


def test_overlay_factory(overlay, adapter, features):
    lower = Layer(
        FrozenMap({(): 1, ("a",): 2}),
        FrozenMap({1: Inode("dir", mode=0o755), 2: Inode("file", data=b"hi")}),
    )
    run = overlay(Overlay((lower,), empty_layer(3), features))
    run.check_initial()
    run.step(ops.Read("a"))
    run.step(ops.Write("a", b"yo"))
    assert run.steps[-1].observed.ok
    assert adapter.name == "python"
    test_overlay_factory.run = run


def test_closed_afterwards():
    from conformance import machine
    assert test_overlay_factory.run.mounted is None
    assert not machine._LIVE
"""


@pytest.mark.skipif(registry.unavailable("python") is not None, reason="python adapter missing")
def test_fixtures_adapter_features_and_overlay_factory(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_fixture_user=FIXTURE_USER)
    result = run(pytester, "--adapter=python", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
