"""The installer's decisions: build once, reuse, rebuild only what changed, detect and repair damage.

The recipes here are small fakes that write a few bytes: the real ones take ~10 minutes (kernel) and
need the network (mmdebstrap), and the installer's logic does not depend on what a recipe builds. The
real recipes run in tests/integration (the suite installs the real assets before running).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from clawpot.assets.cache import Staging
from clawpot.assets.errors import BuildError
from clawpot.assets.hashing import inputs_key
from clawpot.assets.install import ASSET_FILES, Action, Installer, installed, status
from clawpot.assets.manifest import State
from clawpot.assets.progress import Reporter
from clawpot.cli.assets import assets as assets_cli


@dataclass
class FakeRecipe:
    kind: str
    outputs: tuple[str, ...]
    content: bytes
    builds: int = 0
    fail: bool = False
    log: list[str] = field(default_factory=list)

    def key(self) -> str:
        return inputs_key([("content", self.content)])

    def describe(self) -> str:
        return f"fake {self.kind}"

    def build(self, staging: Staging, log: Path, reporter: Reporter) -> None:
        self.builds += 1
        for name in self.outputs:
            (staging.out / name).write_bytes(self.content * 1000 + name.encode())
        if self.fail:
            raise BuildError("fake build failed", log=log)
        staging.meta["version"] = self.content.decode()


@pytest.fixture
def recipes() -> list[FakeRecipe]:
    return [
        FakeRecipe("firecracker", ("firecracker", "jailer"), b"fc-1"),
        FakeRecipe("rootfs", ("rootfs.ext4",), b"rootfs-1"),
        FakeRecipe("kernel", ("vmlinux",), b"kernel-1"),
    ]


def _installer(tmp_path: Path, recipes: list[FakeRecipe]) -> Installer:
    return Installer(tmp_path / "data", tmp_path / "cache", Reporter(quiet=True), recipes=list(recipes))


def _flip_byte(path: Path, offset: int = 100) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def _whats(actions: list[Action]) -> dict[str, str]:
    return {a.name: a.what for a in actions}


def test_first_install_builds_everything_second_rebuilds_nothing(
    tmp_path: Path, recipes: list[FakeRecipe]
) -> None:
    first = _installer(tmp_path, recipes).install()
    assert _whats(first.actions) == dict.fromkeys(ASSET_FILES, "installed")
    assert [r.builds for r in recipes] == [1, 1, 1]
    assert all(c.state is State.OK for c in status(tmp_path / "data"))

    second = _installer(tmp_path, recipes).install()
    assert _whats(second.actions) == dict.fromkeys(ASSET_FILES, "up to date")
    assert not second.changed
    assert [r.builds for r in recipes] == [1, 1, 1]
    paths = installed(tmp_path / "data")
    assert paths.kernel.read_bytes().startswith(b"kernel-1")
    assert paths.jailer.stat().st_mode & 0o777 == 0o755


def test_changed_input_rebuilds_only_what_depends_on_it(tmp_path: Path, recipes: list[FakeRecipe]) -> None:
    _installer(tmp_path, recipes).install()
    recipes[2].content = b"kernel-2"  # e.g. the kernel fragment changed
    report = _installer(tmp_path, recipes).install()
    assert _whats(report.actions) == {
        "firecracker": "up to date",
        "jailer": "up to date",
        "rootfs.ext4": "up to date",
        "vmlinux": "updated",
    }
    assert [r.builds for r in recipes] == [1, 1, 2]
    # Going back to the old input takes the old build from the cache.
    recipes[2].content = b"kernel-1"
    report = _installer(tmp_path, recipes).install()
    assert [a.how for a in report.actions if a.name == "vmlinux"] == ["from cache"]
    assert [r.builds for r in recipes] == [1, 1, 2]


def test_flipped_byte_is_detected_and_repaired_from_the_cache(
    tmp_path: Path, recipes: list[FakeRecipe]
) -> None:
    _installer(tmp_path, recipes).install()
    kernel = tmp_path / "data" / "assets" / "vmlinux"
    good = kernel.read_bytes()
    _flip_byte(kernel)
    states = {c.name: c.state for c in status(tmp_path / "data")}
    assert states["vmlinux"] is State.CORRUPT
    assert {s for n, s in states.items() if n != "vmlinux"} == {State.OK}

    report = _installer(tmp_path, recipes).install()
    assert _whats(report.actions)["vmlinux"].startswith("repaired (corrupt")
    assert [a.how for a in report.actions if a.name == "vmlinux"] == ["from cache"]
    assert recipes[2].builds == 1
    assert kernel.read_bytes() == good


def test_damaged_cache_and_installed_file_are_rebuilt(tmp_path: Path, recipes: list[FakeRecipe]) -> None:
    _installer(tmp_path, recipes).install()
    (tmp_path / "data" / "assets" / "jailer").unlink()
    for cached in (tmp_path / "cache" / "firecracker").glob("*/jailer"):
        _flip_byte(cached)
    report = _installer(tmp_path, recipes).install()
    assert _whats(report.actions) == {
        "firecracker": "up to date",
        "jailer": "repaired (missing: file absent)",
        "rootfs.ext4": "up to date",
        "vmlinux": "up to date",
    }
    assert recipes[0].builds == 2
    assert all(c.state is State.OK for c in status(tmp_path / "data"))


def test_failed_build_leaves_installed_files_and_cache_clean(
    tmp_path: Path, recipes: list[FakeRecipe]
) -> None:
    _installer(tmp_path, recipes).install()
    before = (tmp_path / "data" / "assets" / "rootfs.ext4").read_bytes()
    recipes[1].content, recipes[1].fail = b"rootfs-2", True
    with pytest.raises(BuildError):
        _installer(tmp_path, recipes).install()
    assert (tmp_path / "data" / "assets" / "rootfs.ext4").read_bytes() == before
    assert all(c.state is State.OK for c in status(tmp_path / "data"))
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []
    assert len(list((tmp_path / "cache" / "rootfs").iterdir())) == 1  # only the old, good entry
    assert not [p for p in (tmp_path / "data" / "assets").iterdir() if ".tmp." in p.name]


def test_installed_raises_when_nothing_is_installed(tmp_path: Path) -> None:
    from clawpot.assets.errors import AssetError

    with pytest.raises(AssetError, match="clawpot assets install"):
        installed(tmp_path)


def test_status_cli_table_json_and_exit_codes(tmp_path: Path, recipes: list[FakeRecipe]) -> None:
    runner = CliRunner()
    data = tmp_path / "data"
    result = runner.invoke(assets_cli, ["--data-dir", str(data), "status"])
    assert result.exit_code == 1 and "missing" in result.output

    _installer(tmp_path, recipes).install()
    result = runner.invoke(assets_cli, ["--data-dir", str(data), "status", "--output", "json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)["assets"]}
    assert set(rows) == set(ASSET_FILES) and {r["state"] for r in rows.values()} == {"ok"}
    assert rows["vmlinux"]["version"] == "kernel-1" and len(rows["vmlinux"]["sha256"]) == 64

    _flip_byte(data / "assets" / "rootfs.ext4")
    result = runner.invoke(assets_cli, ["--data-dir", str(data), "status"])
    assert result.exit_code == 1 and "corrupt" in result.output
