"""What Clawpot puts into a guest root filesystem: the init and the agent.

The same list serves the image build (files written into a directory tree before ``mkfs.ext4 -d``) and
``clawpot assets inject`` (files written into an existing image with debugfs).

    /sbin/clawpot-init                          the guest init (guest/clawpot-init)
    /opt/clawpot/stage/                         empty: the init mounts its staging tmpfs here
    /opt/clawpot/agent/clawpot_agent/...        the agent package (a copy of clawpot.agent), run as
                                                ``PYTHONPATH=/opt/clawpot/agent python3 -m clawpot_agent``
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath

INIT_PATH = PurePosixPath("/sbin/clawpot-init")
STAGE_DIR = PurePosixPath("/opt/clawpot/stage")
AGENT_ROOT = PurePosixPath("/opt/clawpot/agent")
AGENT_PACKAGE = "clawpot_agent"


@dataclass(frozen=True)
class GuestFile:
    path: PurePosixPath
    data: bytes
    mode: int


@dataclass(frozen=True)
class Payload:
    dirs: tuple[PurePosixPath, ...]
    files: tuple[GuestFile, ...]

    def key_parts(self) -> list[tuple[str, bytes]]:
        return [(f"{f.path}:{f.mode:o}", f.data) for f in self.files] + [(f"dir:{d}", b"") for d in self.dirs]


def init_script() -> bytes:
    return resources.files("clawpot.assets").joinpath("guest", "clawpot-init").read_bytes()


def agent_source_dir() -> Path:
    return Path(str(resources.files("clawpot.agent")))


def build_payload(agent_dir: Path | None = None) -> Payload:
    """The init plus every ``*.py`` of the agent package (``agent_dir``, default: the installed one)."""
    source = agent_dir or agent_source_dir()
    files = [GuestFile(INIT_PATH, init_script(), 0o755)]
    dirs = {STAGE_DIR, AGENT_ROOT / AGENT_PACKAGE}
    for path in sorted(source.rglob("*.py")):
        rel = path.relative_to(source)
        if "__pycache__" in rel.parts:
            continue
        dest = AGENT_ROOT / AGENT_PACKAGE / rel.as_posix()
        files.append(GuestFile(dest, path.read_bytes(), 0o644))
        dirs.add(dest.parent)
    return Payload(tuple(sorted(dirs)), tuple(files))


def all_dirs(payload: Payload) -> list[PurePosixPath]:
    """Every directory the payload needs, parents first (``/opt`` before ``/opt/clawpot``)."""
    needed: set[PurePosixPath] = set()
    for d in [*payload.dirs, *(f.path.parent for f in payload.files)]:
        needed.update(p for p in [d, *d.parents] if p != PurePosixPath("/"))
    return sorted(needed, key=lambda p: (len(p.parts), str(p)))


def write_into_tree(payload: Payload, root: Path) -> None:
    """Write the payload into an unpacked root filesystem (follows the tree's own symlinks, like /sbin)."""
    for d in all_dirs(payload):
        target = _inside(root, d)
        if not target.is_dir():
            target.mkdir(mode=0o755)
    for f in payload.files:
        target = _inside(root, f.path)
        target.unlink(missing_ok=True)
        target.write_bytes(f.data)
        target.chmod(f.mode)


def _inside(root: Path, guest_path: PurePosixPath) -> Path:
    """``guest_path`` under ``root``, resolving symlinks as the guest would (absolute ones inside root)."""
    current = root
    for part in guest_path.parts[1:]:
        if part == ".":
            continue
        if part == "..":
            current = current.parent if current != root else root
            continue
        candidate = current / part
        hops = 0
        while candidate.is_symlink():
            hops += 1
            if hops > 16:
                raise OSError(f"too many symlinks at {guest_path}")
            link = PurePosixPath(str(candidate.readlink()))
            candidate = (
                _inside(root, link)
                if link.is_absolute()
                else _inside(root, PurePosixPath("/", *candidate.parent.relative_to(root).parts, *link.parts))
            )
        current = candidate
    return current
