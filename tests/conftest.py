"""Shared fixtures and the rule that integration tests must not be skipped silently in CI.

Integration tests live in tests/integration and are marked ``integration`` automatically. When
``CLAWPOT_REQUIRE_INTEGRATION=1`` (set by scripts/test.sh, hence by CI), a skipped integration test
fails the run: on the machines CI runs on, every one of them can and must run.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# tests/support (harnesses shared by unit and integration tests) imports as ``support``.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.vmm_audit import VmmAuditor

from clawpot.assets.errors import AssetError
from clawpot.assets.install import InstalledAssets, installed
from clawpot.vmm.firecracker.backend import find_firecracker

REQUIRE_INTEGRATION_ENV = "CLAWPOT_REQUIRE_INTEGRATION"
_INTEGRATION_DIR = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _INTEGRATION_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


_skipped_integration: list[str] = []
_ran_integration: list[str] = []


@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "integration" not in report.keywords:
        return
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped_integration.append(f"{report.nodeid}: {reason}")
    elif report.when == "call":
        _ran_integration.append(report.nodeid)


# Every VMM this session starts is audited from /proc (tests/support/vmm_audit.py): QEMU not root,
# seccomp filter, no new privileges, chrooted; a jailed firecracker's uid, root and PID namespace; every
# VMM in its VM's cgroup. Started with the first integration test.
_vmm_auditor: VmmAuditor | None = None


@pytest.fixture(autouse=True)
def _audit_vmms(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the integration test during which a VMM was found running outside its layers."""
    global _vmm_auditor
    if request.node.get_closest_marker("integration") is None:
        yield
        return
    if _vmm_auditor is None:
        _vmm_auditor = VmmAuditor().start()
    yield
    failures = _vmm_auditor.take_failures()
    assert not failures, "unconfined VMM: " + "; ".join(failures)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _vmm_auditor is not None:
        _vmm_auditor.stop()
        late = _vmm_auditor.take_failures()
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            counts = _vmm_auditor.counts()
            reporter.write_line(
                f"VMM audit: {counts['qemu']} QEMU VM(s) (uid, Seccomp, NoNewPrivs, capabilities, root, "
                f"cgroup) and {counts['firecracker']} firecracker(s) (cgroup; jailed: uid, root, PID "
                "namespace) checked from /proc"
            )
            for line in late:
                reporter.write_line(f"  unconfined VMM: {line}", red=True)
        if late:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if os.environ.get(REQUIRE_INTEGRATION_ENV) != "1":
        return
    problems = []
    if _skipped_integration:
        problems.append(f"{len(_skipped_integration)} integration test(s) were skipped")
    if not _ran_integration and session.testscollected:
        problems.append("no integration test ran")
    if problems:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("!", f"{REQUIRE_INTEGRATION_ENV}=1: " + "; ".join(problems), red=True)
            for line in _skipped_integration:
                reporter.write_line(f"  skipped: {line}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (VMs, TAP devices, network namespaces)")


@pytest.fixture(scope="session")
def installed_assets() -> InstalledAssets:
    """The assets installed by `clawpot assets install` (scripts/test.sh runs it before pytest)."""
    try:
        return installed()
    except AssetError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def firecracker_bin() -> Path:
    """The real Firecracker binary, found the way the backend finds it (installed asset, then PATH)."""
    found = find_firecracker()
    if found is not None:
        return found
    pytest.skip("firecracker binary not found: run `clawpot assets install`")


@pytest.fixture(scope="session")
def qemu_bin() -> Path:
    found = shutil.which("qemu-system-x86_64")
    if not found:
        pytest.skip("qemu-system-x86_64 not installed (Debian package qemu-system-x86)")
    return Path(found)


@pytest.fixture
def root_required() -> Iterator[None]:
    require_root()
    yield
