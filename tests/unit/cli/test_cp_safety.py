"""What `clawpot cp VM:/path DEST` lets a guest decide on the host: nothing dangerous (pure parts).

The whole copy, against a real server and VM, is in tests/integration/test_disk_bounds.py.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from clawpot.cli.files import current_umask, download_target, parse_size, safe_mode


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1),
        ("1048576", 1024**2),
        ("512K", 512 * 1024),
        ("10M", 10 * 1024**2),
        ("10m", 10 * 1024**2),
        ("2G", 2 * 1024**3),
        ("2GiB", 2 * 1024**3),
        ("1T", 1024**4),
        (" 3 MB ", 3 * 1024**2),
    ],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "0", "-1", "1.5G", "ten", "10X", "G"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("guest", "umask", "expected"),
    [
        (0o6777, 0o022, 0o755),  # the case: no setuid, setgid, world-write
        (0o6777, 0o000, 0o775),  # not world-writable even with an empty umask
        (0o1777, 0o000, 0o775),  # no sticky bit
        (0o4755, 0o022, 0o755),
        (0o600, 0o022, 0o600),
        (0o644, 0o077, 0o600),  # the umask applies
        (0o170777, 0o000, 0o775),  # file-type bits from a guest are ignored
        (0, 0o022, 0o644),  # no mode at all: the default
    ],
)
def test_safe_mode(guest: int, umask: int, expected: int) -> None:
    mode = safe_mode(guest, umask)
    assert mode == expected
    assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWOTH)


def test_current_umask_reads_without_changing() -> None:
    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert current_umask() == 0o027
    finally:
        os.umask(old)


def test_target_new_file_or_inside_a_directory(tmp_path: Path) -> None:
    assert download_target(str(tmp_path / "new"), "/etc/hosts") == tmp_path / "new"
    assert download_target(str(tmp_path), "/etc/hosts") == tmp_path / "hosts"
    (tmp_path / "old").write_text("x")
    assert download_target(str(tmp_path / "old"), "/etc/hosts") == tmp_path / "old"  # replaced by rename


def _refused(tmp_path: Path, dst: Path, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        download_target(str(dst), "/x")
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_target_refuses_symlinks_and_special_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "link").symlink_to(victim)
    assert "is a symlink" in _refused(tmp_path, tmp_path / "link", capsys)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert "is a symlink" in _refused(tmp_path, tmp_path / "dangling", capsys)
    os.mkfifo(tmp_path / "fifo")
    assert "not a regular file" in _refused(tmp_path, tmp_path / "fifo", capsys)
    # Inside a directory, the name the file would get is checked the same way.
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x").symlink_to(victim)
    assert "is a symlink" in _refused(tmp_path, tmp_path / "dir", capsys)
    assert victim.read_text() == "keep"
