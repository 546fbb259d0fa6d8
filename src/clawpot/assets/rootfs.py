"""The guest root filesystem, in two cached layers.

- base (``rootfs-base``): a Debian tarball from mmdebstrap (essential variant + python3 and a few tools,
  no docs/man/locales). Slow (network, ~1 min); depends only on the package list and this recipe.
- image (``rootfs``): the base unpacked, the payload (init + agent) added, Python bytecode compiled
  ahead (python3 cannot write __pycache__ to the read-only base, and compiling at every boot under TCG
  costs seconds), then ``mkfs.ext4 -d`` (no mount). Fast; depends on the base and the payload.
"""

from __future__ import annotations

import os
import platform
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clawpot.assets.cache import CacheEntry, Staging
from clawpot.assets.errors import MissingToolError
from clawpot.assets.hashing import inputs_key, require_tool
from clawpot.assets.payload import AGENT_ROOT, Payload, build_payload, write_into_tree
from clawpot.assets.progress import Reporter, run_logged

SUITE = "bookworm"
PACKAGES = (
    "python3-minimal",
    "libpython3.11-stdlib",  # json, asyncio, ...: python3-minimal alone has neither
    "tini",  # PID 1 under the agent: reaps orphans, forwards signals
    "mount",
    "util-linux",  # switch_root
    "iproute2",
    "iputils-ping",
    "procps",
)
# Nothing in the guest reads documentation or translations.
DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
)
BASE_RECIPE_VERSION = "2"
IMAGE_RECIPE_VERSION = "2"  # 2: the unprivileged `user` account (E2B's default user)
BASE_KIND = "rootfs-base"
BASE_OUTPUT = "base.tar"
IMAGE_KIND = "rootfs"
IMAGE_OUTPUT = "rootfs.ext4"
# Free space left in the image beyond its content: room for `clawpot assets inject` of a newer agent,
# and for writes when a VM boots the image read-write without an overlay disk.
HEADROOM_MIB = 48
HEADROOM_PERCENT = 15


def host_mirrors(suite: str = SUITE) -> list[str]:
    """apt lines for ``suite`` (and its -updates/-security) taken from the host's apt sources.

    Empty when the host has none (e.g. an Ubuntu host): mmdebstrap then uses its default mirror.
    """
    try:
        out = subprocess.run(
            ["apt-get", "indextargets", "--format", _INDEXTARGETS_FORMAT, "Created-By: Packages"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    except FileNotFoundError:
        return []
    return mirrors_from_indextargets(out, suite)


_INDEXTARGETS_FORMAT = "$(REPO_URI)\t$(RELEASE)\t$(COMPONENT)\t$(TARGET_OF)"


def mirrors_from_indextargets(text: str, suite: str) -> list[str]:
    wanted = {suite, f"{suite}-updates", f"{suite}-security"}
    components: dict[tuple[str, str], set[str]] = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) == 4 and fields[3] == "deb" and fields[1] in wanted:
            components.setdefault((fields[0], fields[1]), set()).add(fields[2])
    return [
        f"deb {uri} {release} {' '.join(sorted(comps))}"
        for (uri, release), comps in sorted(components.items())
    ]


@dataclass(frozen=True)
class BaseRecipe:
    kind = BASE_KIND
    outputs = (BASE_OUTPUT,)

    def key(self) -> str:
        return inputs_key(
            [
                ("recipe", f"rootfs-base/{BASE_RECIPE_VERSION}"),
                ("suite", SUITE),
                ("arch", platform.machine()),
                ("packages", ",".join(PACKAGES)),
                ("dpkg", "\n".join(DPKG_OPTIONS)),
            ]
        )

    def describe(self) -> str:
        return f"debian {SUITE}"

    def build(self, staging: Staging, log: Path, reporter: Reporter) -> None:
        mmdebstrap = require_tool("mmdebstrap", "mmdebstrap")
        if os.geteuid() != 0:
            raise MissingToolError("building the root filesystem needs root (mmdebstrap --mode=root)")
        mirrors = host_mirrors()
        argv: list[str | Path] = [
            mmdebstrap,
            "--variant=essential",
            "--mode=root",
            "--format=tar",
            "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
            f"--include={','.join(PACKAGES)}",
            *(f"--dpkgopt={opt}" for opt in DPKG_OPTIONS),
            SUITE,
            staging.out / BASE_OUTPUT,
            *mirrors,
        ]
        with reporter.step(f"building the Debian {SUITE} base with mmdebstrap (about a minute)") as step:
            # Its chroot lives in our build directory, so a killed build's leftovers are cleaned with it.
            env = {**os.environ, "TMPDIR": str(staging.work)}
            run_logged(argv, log=log, pass_fds=staging.hold, step=step, what="mmdebstrap", env=env)
        python = _package_version(staging.out / BASE_OUTPUT)
        staging.meta.update(version=f"{SUITE}, python3 {python}", source=self.describe())


def _package_version(tarball: Path, package: str = "python3-minimal") -> str:
    status = subprocess.run(
        ["tar", "-xOf", str(tarball), "./var/lib/dpkg/status"], capture_output=True, text=True, check=False
    ).stdout
    for stanza in status.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line)
        if fields.get("Package") == package:
            return fields.get("Version", "?")
    return "?"


@dataclass(frozen=True)
class ImageRecipe:
    base_key: str
    payload: Payload
    # Gives the verified base entry, building it first if needed.
    resolve_base: Callable[[], CacheEntry]

    kind = IMAGE_KIND
    outputs = (IMAGE_OUTPUT,)

    @classmethod
    def from_host(
        cls, base: BaseRecipe, resolve_base: Callable[[], CacheEntry], agent_dir: Path | None = None
    ) -> ImageRecipe:
        return cls(base.key(), build_payload(agent_dir), resolve_base)

    def key(self) -> str:
        return inputs_key(
            [("recipe", f"rootfs/{IMAGE_RECIPE_VERSION}"), ("base", self.base_key), *self.payload.key_parts()]
        )

    def describe(self) -> str:
        return f"debian {SUITE} + clawpot init and agent"

    def build(self, staging: Staging, log: Path, reporter: Reporter) -> None:
        mkfs = require_tool("mkfs.ext4", "e2fsprogs")
        e2fsck = require_tool("e2fsck", "e2fsprogs")
        base = self.resolve_base()
        tree = staging.work / "tree"
        tree.mkdir()
        with reporter.step("assembling the root filesystem image") as step:
            run_logged(
                [
                    "tar",
                    "--numeric-owner",
                    "--xattrs",
                    "--xattrs-include=*",
                    "-xpf",
                    base.file(BASE_OUTPUT),
                    "-C",
                    tree,
                ],
                log=log,
                pass_fds=staging.hold,
                step=step,
                what="unpacking the base",
            )
            write_into_tree(self.payload, tree)
            add_guest_user(tree)
            # The guest's own python compiles, so the bytecode matches its version whatever the host runs.
            run_logged(
                [
                    "chroot",
                    tree,
                    "/usr/bin/python3",
                    "-m",
                    "compileall",
                    "-q",
                    "-x",
                    "/test/",
                    "/usr/lib",
                    str(AGENT_ROOT),
                ],
                log=log,
                pass_fds=staging.hold,
                step=step,
                what="compiling Python bytecode",
            )
            size_mib = image_size_mib(tree_bytes(tree))
            image = staging.out / IMAGE_OUTPUT
            run_logged(
                [
                    mkfs,
                    "-q",
                    "-F",
                    "-t",
                    "ext4",
                    "-m",
                    "0",
                    "-L",
                    "clawpot-root",
                    "-E",
                    "root_owner=0:0",
                    "-d",
                    tree,
                    image,
                    f"{size_mib}M",
                ],
                log=log,
                pass_fds=staging.hold,
                step=step,
                what="mkfs.ext4 -d",
            )
            run_logged(
                [e2fsck, "-fn", image],
                log=log,
                pass_fds=staging.hold,
                step=step,
                what="checking the new image",
            )
        staging.meta.update(
            version=f"{base.meta.get('version', SUITE)}, agent {self.key()[:8]}",
            source=self.describe(),
            size_mib=str(size_mib),
        )


# The unprivileged account E2B's SDK runs commands as by default (``limits.E2B_DEFAULT_USER``): uid/gid
# 1000 as in E2B's templates, a home with the skeleton files, bash as its shell.
GUEST_USER = "user"
GUEST_UID = 1000


def add_guest_user(tree: Path) -> None:
    """Add ``GUEST_USER`` to the tree's passwd, group and shadow files and give it a home (no password:
    it only runs what the agent starts as it). Idempotent."""
    etc = tree / "etc"
    home = tree / "home" / GUEST_USER
    entries = {
        "passwd": f"{GUEST_USER}:x:{GUEST_UID}:{GUEST_UID}::/home/{GUEST_USER}:/bin/bash\n",
        "group": f"{GUEST_USER}:x:{GUEST_UID}:\n",
        "shadow": f"{GUEST_USER}:!:19000:0:99999:7:::\n",
        "gshadow": f"{GUEST_USER}:!::\n",
    }
    for name, line in entries.items():
        path = etc / name
        if not path.exists():
            continue
        text = path.read_text()
        if not any(row.split(":", 1)[0] == GUEST_USER for row in text.splitlines()):
            path.write_text(text + ("" if text.endswith("\n") or not text else "\n") + line)
    home.mkdir(parents=True, exist_ok=True)
    skel = etc / "skel"
    if skel.is_dir():
        for item in skel.iterdir():
            if item.is_file() and not (home / item.name).exists():
                shutil.copy2(item, home / item.name)
                os.chown(home / item.name, GUEST_UID, GUEST_UID)
    home.chmod(0o750)
    os.chown(home, GUEST_UID, GUEST_UID)


def tree_bytes(root: Path) -> int:
    """Bytes the tree occupies, counting each file in whole 4 KiB blocks and each inode's 256 bytes."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            st = os.lstat(os.path.join(dirpath, name))
            blocks = 0 if stat.S_ISLNK(st.st_mode) else -(-st.st_size // 4096)
            total += 256 + blocks * 4096
    return total


def image_size_mib(content_bytes: int) -> int:
    """Image size for a tree of ``content_bytes``: content plus HEADROOM_PERCENT, plus HEADROOM_MIB."""
    return -(-content_bytes * (100 + HEADROOM_PERCENT) // (100 << 20)) + HEADROOM_MIB
