"""The guest kernel: ``vmlinux`` built from Debian's linux-source package with our config fragment.

Recipe: unpack the source, ``make tinyconfig``, merge ``kernel.fragment``, ``make olddefconfig``, check that
every option of the fragment survived (Kconfig silently drops options whose dependencies are unmet),
then ``make vmlinux``. The cache key covers the source package version, the fragment and this recipe.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from clawpot.assets.cache import Staging
from clawpot.assets.errors import BuildError, MissingToolError
from clawpot.assets.hashing import inputs_key, require_tool
from clawpot.assets.progress import Reporter, run_logged

SOURCE_PACKAGE = "linux-source-6.12"
SOURCE_TARBALL = Path("/usr/src") / f"{SOURCE_PACKAGE}.tar.xz"
BUILD_PACKAGES = "build-essential flex bison bc libelf-dev libssl-dev cpio xz-utils"
# Bump when the build steps change in a way that changes the output.
RECIPE_VERSION = "1"
KIND = "kernel"
# Lines `make vmlinux` prints for this configuration (measured), for the progress estimate.
MAKE_OUTPUT_LINES = 1960
OUTPUT = "vmlinux"

_OPTION = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")


def fragment_bytes() -> bytes:
    return resources.files("clawpot.assets").joinpath("kernel.fragment").read_bytes()


def parse_config(text: str) -> dict[str, str]:
    """Options of a .config or fragment; ``# CONFIG_X is not set`` reads as ``n``."""
    options: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if m := _OPTION.match(line):
            options[m.group(1)] = m.group(2)
        elif m := _UNSET.match(line):
            options[m.group(1)] = "n"
    return options


def config_mismatches(wanted: dict[str, str], final: dict[str, str]) -> list[str]:
    """Human-readable lines for every wanted option the final .config does not have as asked."""
    problems = []
    for option, value in wanted.items():
        got = final.get(option, "n")
        if got != value:
            problems.append(f"{option}: asked {value}, got {'(absent)' if option not in final else got}")
    return problems


def source_version() -> str:
    """Installed version of the linux-source package (part of the cache key)."""
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Status}\t${Version}", SOURCE_PACKAGE],
            capture_output=True,
            text=True,
            check=False,
        )
    except FileNotFoundError as exc:
        raise MissingToolError("dpkg-query not found: the kernel is built from a Debian package") from exc
    status, _, version = out.stdout.partition("\t")
    if out.returncode != 0 or not status.endswith(" installed") or not SOURCE_TARBALL.is_file():
        raise MissingToolError(f"{SOURCE_PACKAGE} is not installed: apt-get install {SOURCE_PACKAGE}")
    return version


@dataclass(frozen=True)
class KernelRecipe:
    source_version: str
    fragment: bytes
    jobs: int = 0  # 0: one per CPU

    kind = KIND
    outputs = (OUTPUT,)

    @classmethod
    def from_host(cls) -> KernelRecipe:
        return cls(source_version(), fragment_bytes())

    def key(self) -> str:
        return inputs_key(
            [
                ("recipe", f"kernel/{RECIPE_VERSION}"),
                ("source", f"{SOURCE_PACKAGE}={self.source_version}"),
                ("fragment", self.fragment),
            ]
        )

    def describe(self) -> str:
        return f"{SOURCE_PACKAGE} {self.source_version}"

    def build(self, staging: Staging, log: Path, reporter: Reporter) -> None:
        for tool, package in [
            ("make", "build-essential"),
            ("gcc", "build-essential"),
            ("flex", "flex"),
            ("bison", "bison"),
            ("bc", "bc"),
            ("xz", "xz-utils"),
        ]:
            require_tool(tool, f"{package} (kernel build needs: {BUILD_PACKAGES})")
        jobs = self.jobs or os.cpu_count() or 1
        # Fixed build identity, so the banner does not name this machine.
        env = {**os.environ, "KBUILD_BUILD_USER": "clawpot", "KBUILD_BUILD_HOST": "clawpot"}
        with reporter.step(f"unpacking {SOURCE_TARBALL.name}") as step:
            run_logged(
                ["tar", "-xf", SOURCE_TARBALL, "-C", staging.work],
                log=log,
                pass_fds=staging.hold,
                step=step,
                what="unpacking the kernel source",
            )
        tree = staging.work / SOURCE_PACKAGE
        fragment = staging.work / "clawpot.fragment"
        fragment.write_bytes(self.fragment)
        with reporter.step("configuring the kernel (tinyconfig + fragment)") as step:
            run_logged(
                ["make", "tinyconfig"],
                cwd=tree,
                env=env,
                log=log,
                pass_fds=staging.hold,
                step=step,
                what="make tinyconfig",
            )
            run_logged(
                ["scripts/kconfig/merge_config.sh", "-m", ".config", fragment],
                cwd=tree,
                env=env,
                log=log,
                pass_fds=staging.hold,
                step=step,
                what="merging the config fragment",
            )
            run_logged(
                ["make", "olddefconfig"],
                cwd=tree,
                env=env,
                log=log,
                pass_fds=staging.hold,
                step=step,
                what="make olddefconfig",
            )
        final = (tree / ".config").read_text()
        problems = config_mismatches(parse_config(self.fragment.decode()), parse_config(final))
        if problems:
            raise BuildError(
                "the kernel config lost options of the fragment (unmet dependencies?):\n  "
                + "\n  ".join(problems),
                log=log,
            )
        with reporter.step(f"building vmlinux (make -j{jobs}, several minutes)") as step:
            step.expect(MAKE_OUTPUT_LINES)
            run_logged(
                ["make", f"-j{jobs}", "vmlinux"],
                cwd=tree,
                env=env,
                log=log,
                pass_fds=staging.hold,
                step=step,
                what="make vmlinux",
            )
        release = subprocess.run(
            ["make", "-s", "kernelrelease"], cwd=tree, env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        shutil.copyfile(tree / "vmlinux", staging.out / OUTPUT)
        shutil.copyfile(tree / ".config", staging.out / "config")
        staging.meta.update(version=release, source=self.describe())
