"""The suite must catch broken implementations: run it (pytester, ci profile) against adapters
with deliberate faults and check that it FAILS, names the difference, and writes a reproducer.

The broken adapters are written into the pytester directory as a module (``broken.py``) and
named with ``--adapter=broken:Factory``, exactly as a third-party adapter would be.
"""

from __future__ import annotations

import json
import subprocess
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest

from adapters import registry

pytest_plugins = ["pytester"]

BROKEN = '''
"""Deliberately broken adapters: each wraps a working one and injects one fault."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from adapters import registry
from adapters.base import Adapter, LayerDirs, Mounted, AdapterOptions
from adapters.kernel import KernelAdapter
from model import ops
from model.features import Features


class _Faulty(Mounted):
    def __init__(self, inner: Mounted, fault: str) -> None:
        self.inner = inner
        self.fault = fault

    def perform(self, op):
        if self.fault == "unlink-ignored" and isinstance(op, ops.Unlink):
            return ops.Outcome()  # claims success; the name stays visible
        outcome = self.inner.perform(op)
        if (
            self.fault == "copy-up-drops-mode"
            and outcome.ok
            and isinstance(op, (ops.Write, ops.Truncate))
        ):
            self.inner.perform(ops.Chmod(op.path, 0o600))  # the copy loses its mode
        return outcome

    def observe(self):
        return self.inner.observe()

    def remount(self):
        self.inner.remount()

    def close(self):
        self.inner.close()

    def options_in_effect(self):
        return self.inner.options_in_effect()


class _Wrapper(Adapter):
    base = "python"
    fault = ""
    needs_root = False

    def __init__(self, options: AdapterOptions | None = None) -> None:
        super().__init__(options)
        self.inner = registry.get_adapter(self.base, options)

    @classmethod
    def unavailable(cls):
        return registry.unavailable(cls.base)

    def mount(self, layers: LayerDirs, features: Features, scratch: Path) -> Mounted:
        return _Faulty(self.inner.mount(layers, features, scratch), self.fault)


class UnlinkIgnored(_Wrapper):
    name = "broken-unlink"
    fault = "unlink-ignored"


class CopyUpDropsMode(_Wrapper):
    name = "broken-copy-up"
    fault = "copy-up-drops-mode"


class KernelUnlinkIgnored(UnlinkIgnored):
    base = "kernel"
    name = "broken-kernel-unlink"


class MisconfiguredKernel(KernelAdapter):
    """Declared features say redirect_dir=nofollow; the mount uses redirect_dir=on."""

    name = "misconfigured-kernel"

    def mount(self, layers: LayerDirs, features: Features, scratch: Path) -> Mounted:
        return super().mount(layers, replace(features, redirect_dir="on"), scratch)
'''


def plugin_args() -> list[str]:
    """Load the plugin in the inner run: via its entry point when installed, else by name
    (never both: that would register it twice)."""
    installed = any(ep.name == "overlay_conformance" for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "conformance.plugin"]


def run_suite(
    pytester: pytest.Pytester, adapter: str, *extra: str, tests: str = "conformance"
) -> tuple[pytest.RunResult, Path]:
    pytester.makepyfile(broken=BROKEN)
    report = pytester.path / "report"
    result = pytester.runpytest_subprocess(
        *plugin_args(),
        "-p",
        "no:cacheprovider",
        "--pyargs",
        tests,
        f"--adapter={adapter}",
        "--conformance-profile=ci",
        f"--report-dir={report}",
        *extra,
        timeout=900,
    )
    return result, report


def assert_failed_with_reproducer(result: pytest.RunResult, report: Path) -> Any:
    assert result.ret == pytest.ExitCode.TESTS_FAILED, result.stdout.str()[-3000:]
    result.stdout.fnmatch_lines(["*difference(s) between the*adapter and the model*"])
    scripts = sorted(report.glob("*.sh"))
    assert scripts, f"no reproducer in {report}"
    for script in scripts:
        text = script.read_text()
        assert text.startswith("#!/bin/bash")
        assert "trap cleanup EXIT" in text
        check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
    summaries = list(report.glob("summary-*.json"))
    assert len(summaries) == 1
    summary = json.loads(summaries[0].read_text())
    assert summary["failures"]
    return summary


def _needs(name: str) -> pytest.MarkDecorator:
    reason = registry.unavailable(name)
    return pytest.mark.skipif(reason is not None, reason=f"{name} adapter: {reason}")


@_needs("python")
def test_python_adapter_ignoring_unlink_fails_the_suite(pytester: pytest.Pytester) -> None:
    result, report = run_suite(pytester, "broken:UnlinkIgnored", tests="conformance.test_stateful")
    summary = assert_failed_with_reproducer(result, report)
    fields = {d["field"] for f in summary["failures"] for d in f["differences"]}
    assert fields & {"present", "errno", "kind", "nlink"}, fields


@_needs("python")
def test_python_adapter_dropping_mode_on_copy_up_fails_the_suite(
    pytester: pytest.Pytester,
) -> None:
    # The named cases catch it deterministically (and much faster than shrinking would).
    result, report = run_suite(
        pytester, "broken:CopyUpDropsMode", tests="conformance.test_named_cases"
    )
    summary = assert_failed_with_reproducer(result, report)
    fields = {d["field"] for f in summary["failures"] for d in f["differences"]}
    assert "mode" in fields or "stat.mode" in fields, fields


@pytest.mark.root
@pytest.mark.kernel
@_needs("kernel")
def test_kernel_mounted_with_undeclared_options_fails_the_suite(
    pytester: pytest.Pytester,
) -> None:
    result, report = run_suite(
        pytester,
        "broken:MisconfiguredKernel",
        "--features=redirect_dir=nofollow",
        tests="conformance.test_stateful",
    )
    summary = assert_failed_with_reproducer(result, report)
    fields = {d["field"] for f in summary["failures"] for d in f["differences"]}
    assert "option:redirect_dir" in fields, fields


@pytest.mark.root
@pytest.mark.kernel
@_needs("kernel")
def test_kernel_reproducer_shows_the_fault_it_was_written_for(
    pytester: pytest.Pytester,
) -> None:
    """A reproducer for the kernel (no fault of its own) runs cleanly and leaves nothing."""
    result, report = run_suite(
        pytester,
        "broken:KernelUnlinkIgnored",
        "-k",
        "unlink and whiteout and not dir",
        tests="conformance.test_named_cases",
    )
    assert_failed_with_reproducer(result, report)
    script = sorted(report.glob("*.sh"))[0]
    before = set(Path("/tmp").glob("overlay-repro.*"))
    run = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "step 1:" in run.stdout or "the whole merged view now" in run.stdout
    assert set(Path("/tmp").glob("overlay-repro.*")) == before, "the reproducer left its dir"
    with open("/proc/self/mountinfo") as f:
        assert "overlay-repro." not in f.read()
