"""Injecting the init and agent into ext4 images with debugfs, and the same payload in a directory tree.

Real e2fsprogs on small images made here (a few MiB, ~50 ms each).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from clawpot.assets.errors import InjectError
from clawpot.assets.inject import has_python, inject, resolve
from clawpot.assets.payload import INIT_PATH, build_payload, init_script, write_into_tree
from clawpot.assets.scratch import make_scratch_disk


def _debugfs(image: Path, request: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True
    ).stdout


def _merged_usr_image(tmp_path: Path, size: str = "16M") -> Path:
    """A tiny Debian-like tree: /sbin -> usr/sbin, /usr/bin/python3."""
    tree = tmp_path / "tree"
    (tree / "usr" / "sbin").mkdir(parents=True)
    (tree / "usr" / "bin").mkdir()
    (tree / "sbin").symlink_to("usr/sbin")
    (tree / "usr" / "bin" / "python3").write_bytes(b"#!/bin/false\n")
    image = tmp_path / "image.ext4"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image), size], check=True, capture_output=True
    )
    return image


@pytest.fixture
def agent_dir(tmp_path: Path) -> Path:
    agent = tmp_path / "agent"
    (agent / "sub").mkdir(parents=True)
    (agent / "__init__.py").write_text("")
    (agent / "__main__.py").write_text("print('agent')\n")
    (agent / "sub" / "mod.py").write_text("X = 1\n")
    return agent


def test_inject_writes_every_file_through_the_sbin_symlink(tmp_path: Path, agent_dir: Path) -> None:
    image = _merged_usr_image(tmp_path)
    written = inject(image, build_payload(agent_dir))
    assert PurePosixPath("/usr/sbin/clawpot-init") in written
    assert resolve(image, INIT_PATH) == PurePosixPath("/usr/sbin/clawpot-init")
    assert _debugfs(image, "cat /usr/sbin/clawpot-init").encode() == init_script()
    assert "Mode:  0755" in _debugfs(image, "stat /usr/sbin/clawpot-init")
    assert _debugfs(image, "cat /opt/clawpot/agent/clawpot_agent/sub/mod.py") == "X = 1\n"
    assert "Type: directory" in _debugfs(image, "stat /opt/clawpot/stage")
    assert has_python(image)
    fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout


def test_inject_is_idempotent_and_drops_files_of_an_older_agent(tmp_path: Path, agent_dir: Path) -> None:
    image = _merged_usr_image(tmp_path)
    inject(image, build_payload(agent_dir))
    (agent_dir / "sub" / "mod.py").write_text("X = 2\n")
    (agent_dir / "__main__.py").unlink()
    inject(image, build_payload(agent_dir))
    inject(image, build_payload(agent_dir))
    assert _debugfs(image, "cat /opt/clawpot/agent/clawpot_agent/sub/mod.py") == "X = 2\n"
    listing = _debugfs(image, "ls /opt/clawpot/agent/clawpot_agent")
    assert "__init__.py" in listing and "__main__.py" not in listing
    assert subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True).returncode == 0


def test_inject_refuses_what_is_not_ext4(tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(1 << 16))
    with pytest.raises(InjectError, match="not an ext4 image"):
        inject(junk)
    with pytest.raises(InjectError, match="no such file"):
        inject(tmp_path / "absent.ext4")


def test_inject_into_a_full_image_fails_clearly(tmp_path: Path, agent_dir: Path) -> None:
    image = _merged_usr_image(tmp_path, size="1M")
    (agent_dir / "big.py").write_bytes(b"#" * (2 << 20))
    with pytest.raises(InjectError, match="image full"):
        inject(image, build_payload(agent_dir))


def test_image_without_python_is_reported(tmp_path: Path) -> None:
    image = tmp_path / "empty.ext4"
    make_scratch_disk(image, size_mib=8)
    assert not has_python(image)


def test_write_into_tree_follows_the_trees_own_symlinks(tmp_path: Path, agent_dir: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "sbin").mkdir(parents=True)
    (root / "sbin").symlink_to("usr/sbin")
    write_into_tree(build_payload(agent_dir), root)
    assert (root / "usr" / "sbin" / "clawpot-init").read_bytes() == init_script()
    assert os.access(root / "usr" / "sbin" / "clawpot-init", os.X_OK)
    assert (root / "opt/clawpot/agent/clawpot_agent/sub/mod.py").read_text() == "X = 1\n"
    assert (root / "opt/clawpot/stage").is_dir()


def test_scratch_disk_is_sparse_ext4_and_never_overwrites(tmp_path: Path) -> None:
    disk = make_scratch_disk(tmp_path / "layer.ext4", size_mib=1024)
    st = disk.stat()
    assert st.st_size == 1 << 30 and st.st_blocks * 512 < 64 << 20
    with open(disk, "rb") as f:
        f.seek(0x438)
        assert f.read(2) == b"\x53\xef"
    with pytest.raises(FileExistsError):
        make_scratch_disk(disk)
