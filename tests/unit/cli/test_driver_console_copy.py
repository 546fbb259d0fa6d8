"""`clawpot-driver start --console` follows the console file across a rotation (pure file handling)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from clawpot.cli.driver import _ConsoleCopy
from clawpot.vmm.console import CappedLog


async def test_copy_follows_a_rotation(tmp_path: Path, capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    log = CappedLog(tmp_path / "console.log", cap=1000)
    copy = _ConsoleCopy(log.path)
    copy.task.cancel()  # driven by hand here, not by its polling task
    with pytest.raises(asyncio.CancelledError):
        await copy.task
    written = b""
    for n in range(6):
        chunk = bytes([65 + n]) * 450
        log.write(chunk)  # rotates every 1000 bytes: at most one rotation between two polls
        written += chunk
        while copy.copy_new():
            pass
    copy.finish()
    log.close()
    assert capfdbinary.readouterr().out == written
