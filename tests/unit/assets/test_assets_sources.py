"""Where the Firecracker binaries and the Debian packages come from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clawpot.assets.errors import BuildError, VerifyError
from clawpot.assets.firecracker import FirecrackerRecipe, _check_pinned, find_on_path
from clawpot.assets.progress import Step, run_logged
from clawpot.assets.rootfs import image_size_mib, mirrors_from_indextargets


def _fake_binary(directory: Path, name: str, version: str) -> Path:
    path = directory / name
    path.write_text(f"#!/bin/sh\necho 'Firecracker v{version}'\n")
    path.chmod(0o755)
    return path


def test_firecracker_on_path_is_preferred_when_new_enough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_binary(tmp_path, "firecracker", "1.10.0")
    _fake_binary(tmp_path, "jailer", "1.10.0")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    found = find_on_path()
    assert found is not None and found.version == (1, 10, 0) and found.jailer == tmp_path / "jailer"
    recipe = FirecrackerRecipe(found)
    assert recipe.key() != FirecrackerRecipe(None).key()
    _fake_binary(tmp_path, "firecracker", "1.9.0")  # older than 1.9.1
    assert find_on_path() is None


def test_firecracker_on_path_without_jailer_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_binary(tmp_path, "firecracker", "1.12.1")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_on_path() is None


def test_pinned_hash_mismatch_is_refused(tmp_path: Path) -> None:
    for name in ("firecracker", "jailer"):
        (tmp_path / name).write_bytes(b"not the release")
    with pytest.raises(VerifyError, match="firecracker: sha256"):
        _check_pinned(tmp_path)
    assert not (tmp_path / "firecracker").exists()  # a bad download is not left behind


def test_host_mirrors_keep_only_the_suite_family() -> None:
    text = (
        "http://mirror.test/debian/\tbookworm\tmain\tdeb\n"
        "http://mirror.test/debian/\tbookworm\tcontrib\tdeb\n"
        "http://mirror.test/debian/\tbookworm\tmain\tdeb-src\n"
        "http://security.test/\tbookworm-security\tmain\tdeb\n"
        "http://other.test/\tnodistro\tmain\tdeb\n"
        "http://mirror.test/debian/\ttrixie\tmain\tdeb\n"
    )
    assert mirrors_from_indextargets(text, "bookworm") == [
        "deb http://mirror.test/debian/ bookworm contrib main",
        "deb http://security.test/ bookworm-security main",
    ]
    assert mirrors_from_indextargets("", "bookworm") == []


def test_image_size_leaves_headroom() -> None:
    assert image_size_mib(100 << 20) == 115 + 48


def test_failed_command_raises_with_the_log_tail(tmp_path: Path) -> None:
    log = tmp_path / "build.log"
    with pytest.raises(BuildError) as info:
        run_logged(
            ["sh", "-c", "echo compiling; echo 'error: boom' >&2; exit 3"],
            log=log,
            step=Step(None, None),
            what="fake make",
        )
    assert "exit 3" in str(info.value) and str(log) in str(info.value)
    assert "error: boom" in info.value.tail
    assert "compiling" in log.read_text()


def test_plain_progress_prints_heartbeats_with_an_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    from clawpot.assets import progress

    out = io.StringIO()
    reporter = progress.Reporter(Console(file=out, width=200))
    monkeypatch.setattr(progress, "_HEARTBEAT_S", 0.0)
    with reporter.step("building vmlinux") as step:
        step.expect(4)
        run_logged(["sh", "-c", "echo CC a; echo CC b"], log=Path(os.devnull), step=step, what="make")
    lines = out.getvalue().splitlines()
    assert lines[0] == "  building vmlinux ..."
    assert "~25% CC a" in lines[1] and "~50% CC b" in lines[2]
    assert lines[-1].startswith("  building vmlinux: done in")
