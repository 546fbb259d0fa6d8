"""Errors raised while building, installing or verifying assets.

AssetError                  root: every failure of clawpot.assets
├── MissingToolError        a host program or Debian package the step needs is absent
├── BuildError              a build step failed (carries the log path and its tail)
├── VerifyError             a file does not have the sha256 it must have
├── FetchError              no source could provide a download (Firecracker)
└── InjectError             an ext4 image could not be given the agent and init
"""

from __future__ import annotations

from pathlib import Path


class AssetError(Exception):
    """Root of every error raised by clawpot.assets."""


class MissingToolError(AssetError):
    pass


class BuildError(AssetError):
    def __init__(self, message: str, log: Path | None = None, tail: str = "") -> None:
        super().__init__(message)
        self.log = log
        self.tail = tail


class VerifyError(AssetError):
    pass


class FetchError(AssetError):
    pass


class InjectError(AssetError):
    pass
