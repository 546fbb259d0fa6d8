"""``<data>/assets/manifest.json``: what is installed, with versions, sha256 and input hashes.

The manifest only ever describes files that were completely put in place: it is rewritten (atomically)
after each file lands. ``check`` compares the files on disk with it.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from clawpot.assets.atomic import atomic_write_bytes
from clawpot.assets.hashing import sha256_file

MANIFEST = "manifest.json"
FORMAT = 1


class State(enum.StrEnum):
    OK = "ok"
    MISSING = "missing"
    CORRUPT = "corrupt"


@dataclass(frozen=True)
class AssetRecord:
    name: str  # file name under <data>/assets
    version: str
    source: str  # where it came from: build recipe, PATH, release, wheel
    size: int
    sha256: str
    inputs: str  # cache key: hash of everything it was built from


@dataclass
class Manifest:
    assets: dict[str, AssetRecord] = field(default_factory=dict)

    @classmethod
    def load(cls, assets_dir: Path) -> Manifest:
        """The manifest, or an empty one if it is absent or unreadable (then everything is reinstalled)."""
        try:
            raw = json.loads((assets_dir / MANIFEST).read_text())
            if raw.get("format") != FORMAT:
                return cls()
            return cls({name: AssetRecord(**rec) for name, rec in raw["assets"].items()})
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return cls()

    def save(self, assets_dir: Path) -> None:
        data = {"format": FORMAT, "assets": {n: asdict(r) for n, r in sorted(self.assets.items())}}
        atomic_write_bytes(assets_dir / MANIFEST, (json.dumps(data, indent=2) + "\n").encode())


@dataclass(frozen=True)
class FileCheck:
    name: str
    path: Path
    state: State
    record: AssetRecord | None
    detail: str = ""


def check_file(assets_dir: Path, name: str, record: AssetRecord | None) -> FileCheck:
    """Full check of one installed file against its manifest record (size, then sha256)."""
    path = assets_dir / name
    if record is None:
        return FileCheck(name, path, State.MISSING, None, "not in the manifest")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return FileCheck(name, path, State.MISSING, record, "file absent")
    if size != record.size:
        return FileCheck(name, path, State.CORRUPT, record, f"size {size}, expected {record.size}")
    digest = sha256_file(path)
    if digest != record.sha256:
        return FileCheck(
            name, path, State.CORRUPT, record, f"sha256 {digest[:12]}…, expected {record.sha256[:12]}…"
        )
    return FileCheck(name, path, State.OK, record)
