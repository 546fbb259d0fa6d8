"""The rootfs recipe's `user` account (E2B's default user): passwd/group/shadow entries and a home."""

from __future__ import annotations

import os
from pathlib import Path

from clawpot.assets.rootfs import GUEST_UID, GUEST_USER, add_guest_user


def test_adds_the_user_once(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "skel").mkdir(parents=True)
    (etc / "skel" / ".bashrc").write_text("# bashrc\n")
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (etc / "group").write_text("root:x:0:")  # no final newline
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    add_guest_user(tmp_path)
    add_guest_user(tmp_path)  # idempotent
    passwd = (etc / "passwd").read_text().splitlines()
    assert passwd == ["root:x:0:0:root:/root:/bin/bash", f"{GUEST_USER}:x:1000:1000::/home/user:/bin/bash"]
    assert (etc / "group").read_text().splitlines() == ["root:x:0:", f"{GUEST_USER}:x:1000:"]
    assert (etc / "shadow").read_text().count(GUEST_USER) == 1
    assert not (etc / "gshadow").exists()
    home = tmp_path / "home" / GUEST_USER
    assert (home / ".bashrc").read_text() == "# bashrc\n"
    assert os.stat(home).st_uid == GUEST_UID and os.stat(home / ".bashrc").st_gid == GUEST_UID
