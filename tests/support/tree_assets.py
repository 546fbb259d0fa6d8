"""The root image THIS working tree's recipe builds (its agent, its accounts), from the asset cache.

The installed image (/var/lib/clawpot/assets) is shared: another tree's ``clawpot assets install`` may
replace it at any time. A test or benchmark that needs this tree's guest side takes its image from the
build cache instead (keyed by content: built there in ~15 s when absent, instant otherwise), copied so
the VM's writes never touch the cache.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from clawpot.assets.install import Installer
from clawpot.assets.rootfs import IMAGE_OUTPUT, BaseRecipe, ImageRecipe


@dataclass(frozen=True)
class TreeAssets:
    kernel: Path
    rootfs: Path


def tree_assets(directory: Path, kernel: Path) -> TreeAssets:
    """``kernel`` (linked) and a copy of this tree's root image, in ``directory``."""
    installer = Installer()
    base = BaseRecipe()
    image = ImageRecipe.from_host(base, lambda: installer.ensure_entry(base)[0])
    entry, _ = installer.ensure_entry(image)
    rootfs = directory / "rootfs.ext4"
    subprocess.run(["cp", "--sparse=always", str(entry.file(IMAGE_OUTPUT)), str(rootfs)], check=True)
    linked = directory / "vmlinux"
    linked.symlink_to(kernel)
    return TreeAssets(linked, rootfs)
