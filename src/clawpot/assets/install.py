"""Install the assets into ``<data>/assets``: reuse what is there, take the rest from the cache, build
what the cache lacks. Also the read-only side: ``status`` and ``installed``.

Per asset: compute its cache key (cheap: hashes of small inputs), then fully verify the installed files
(sha256; ~0.1 s per 100 MB here). If both match the manifest, nothing is done. Otherwise the cache entry is
verified (or built) and copied in atomically, and the manifest updated after each file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from clawpot import paths
from clawpot.assets.atomic import atomic_copy, remove_stale_temps
from clawpot.assets.cache import BuildCache, CacheEntry, Staging
from clawpot.assets.errors import AssetError, VerifyError
from clawpot.assets.firecracker import FirecrackerRecipe
from clawpot.assets.kernel import KernelRecipe
from clawpot.assets.manifest import AssetRecord, FileCheck, Manifest, State, check_file
from clawpot.assets.progress import Reporter
from clawpot.assets.rootfs import BaseRecipe, ImageRecipe

KERNEL = "vmlinux"
ROOTFS = "rootfs.ext4"
FIRECRACKER = "firecracker"
JAILER = "jailer"
ASSET_FILES = (KERNEL, ROOTFS, FIRECRACKER, JAILER)
_EXECUTABLES = {FIRECRACKER, JAILER}
_LOCK = ".install.lock"


class Recipe(Protocol):
    @property
    def kind(self) -> str: ...
    @property
    def outputs(self) -> tuple[str, ...]: ...
    def key(self) -> str: ...
    def describe(self) -> str: ...
    def build(self, staging: Staging, log: Path, reporter: Reporter) -> None: ...


@dataclass(frozen=True)
class InstalledAssets:
    kernel: Path
    rootfs: Path
    firecracker: Path
    jailer: Path
    manifest: Manifest


@dataclass(frozen=True)
class Action:
    name: str
    what: str  # "up to date", "installed", "repaired", "updated"
    how: str = ""  # "built in 412.0 s", "from cache"


@dataclass(frozen=True)
class InstallReport:
    actions: list[Action]
    seconds: float

    @property
    def changed(self) -> bool:
        return any(a.what != "up to date" for a in self.actions)


def status(data_dir: Path | None = None) -> list[FileCheck]:
    """Full verification of every installed asset against the manifest."""
    assets_dir = paths.assets_dir(data_dir)
    manifest = Manifest.load(assets_dir)
    return [check_file(assets_dir, name, manifest.assets.get(name)) for name in ASSET_FILES]


def installed(data_dir: Path | None = None) -> InstalledAssets:
    """Paths of the installed assets (checked for presence, not hashed); AssetError if any is missing."""
    assets_dir = paths.assets_dir(data_dir)
    manifest = Manifest.load(assets_dir)
    missing = [n for n in ASSET_FILES if n not in manifest.assets or not (assets_dir / n).is_file()]
    if missing:
        raise AssetError(
            f"assets not installed in {assets_dir}: {', '.join(missing)} (run: clawpot assets install)"
        )
    return InstalledAssets(
        assets_dir / KERNEL, assets_dir / ROOTFS, assets_dir / FIRECRACKER, assets_dir / JAILER, manifest
    )


class Installer:
    def __init__(
        self,
        data_dir: Path | None = None,
        cache_dir: Path | None = None,
        reporter: Reporter | None = None,
        agent_dir: Path | None = None,
        jobs: int = 0,
        recipes: list[Recipe] | None = None,
    ) -> None:
        self.assets_dir = paths.assets_dir(paths.data_dir(data_dir))
        self.cache = BuildCache(paths.cache_dir(cache_dir))
        self.reporter = reporter or Reporter()
        self.agent_dir = agent_dir
        self.jobs = jobs
        self._recipes = recipes

    def recipes(self) -> list[Recipe]:
        """In install order: quick and likely-to-fail first, the long kernel build last."""
        if self._recipes is not None:
            return self._recipes
        base = BaseRecipe()
        image = ImageRecipe.from_host(base, lambda: self.ensure_entry(base)[0], self.agent_dir)
        kernel = KernelRecipe.from_host()
        if self.jobs:
            kernel = KernelRecipe(kernel.source_version, kernel.fragment, self.jobs)
        return [FirecrackerRecipe.from_host(), image, kernel]

    def ensure_entry(self, recipe: Recipe) -> tuple[CacheEntry, bool]:
        """The verified entry of ``recipe`` (built first if absent or damaged) and whether it was built."""
        key = recipe.key()
        entry = self.cache.lookup_verified(recipe.kind, key)
        if entry is not None:
            return entry, False
        log = self.cache.log_path(recipe.kind, key)
        log.parent.mkdir(parents=True, exist_ok=True)
        log.unlink(missing_ok=True)
        self.reporter.info(f"building {recipe.kind} ({recipe.describe()}); log: {log}")
        with self.cache.building(recipe.kind, key) as staging:
            recipe.build(staging, log, self.reporter)
        entry = self.cache.lookup(recipe.kind, key)
        if entry is None:
            raise AssetError(f"the {recipe.kind} build left no cache entry in {self.cache.root}")
        return entry, True

    def install(self) -> InstallReport:
        started = time.monotonic()
        self.assets_dir.mkdir(parents=True, exist_ok=True)
        actions: list[Action] = []
        with self._locked():
            remove_stale_temps(self.assets_dir)
            manifest = Manifest.load(self.assets_dir)
            for recipe in self.recipes():
                actions += self._install_one(recipe, manifest)
        return InstallReport(actions, time.monotonic() - started)

    def _install_one(self, recipe: Recipe, manifest: Manifest) -> list[Action]:
        key = recipe.key()
        checks = [check_file(self.assets_dir, n, manifest.assets.get(n)) for n in recipe.outputs]
        current = [
            c for c in checks if c.state is State.OK and c.record is not None and c.record.inputs == key
        ]
        actions = [Action(c.name, "up to date") for c in current]
        if len(current) == len(checks):
            return actions
        t0 = time.monotonic()
        entry, built = self.ensure_entry(recipe)
        how = f"built in {time.monotonic() - t0:.1f} s" if built else "from cache"
        for check in checks:
            if check in current:
                continue
            name = check.name
            mode = 0o755 if name in _EXECUTABLES else 0o644
            digest = atomic_copy(entry.file(name), self.assets_dir / name, mode)
            if digest != entry.files[name]:
                self.cache.discard(recipe.kind, key)
                raise VerifyError(f"{entry.file(name)} changed while being copied; run the install again")
            manifest.assets[name] = AssetRecord(
                name=name,
                version=entry.meta.get("version", "?"),
                source=entry.meta.get("source", recipe.describe()),
                size=(self.assets_dir / name).stat().st_size,
                sha256=digest,
                inputs=key,
            )
            manifest.save(self.assets_dir)
            if check.record is None:
                what = "installed"
            elif check.record.inputs != key:
                what = "updated"
            else:
                what = f"repaired ({check.state.value}: {check.detail})"
            actions.append(Action(name, what, how))
        return actions

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.assets_dir / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.reporter.info(f"waiting for another install into {self.assets_dir} to finish")
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
