"""The API token file: made once 0600, kept across restarts, refused when it is not private."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from clawpot import limits
from clawpot.server.apitoken import TokenError, ensure_token, read_token


def test_first_start_makes_a_private_random_token_and_later_starts_keep_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    token = ensure_token(data)
    path = data / "api-token"
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and stat.S_ISREG(st.st_mode)
    assert len(token) >= 43 and path.read_text() == token + "\n"  # 32 random bytes, urlsafe base64
    assert ensure_token(data) == token == read_token(path)
    assert ensure_token(tmp_path / "other") != token
    assert [p.name for p in data.iterdir()] == ["api-token"]  # no temporary file left behind


def test_a_token_open_to_others_is_refused(tmp_path: Path) -> None:
    ensure_token(tmp_path)
    (tmp_path / "api-token").chmod(0o644)
    with pytest.raises(TokenError, match=r"open to other users .*0644"):
        ensure_token(tmp_path)


@pytest.mark.parametrize(
    "content", ["", "short\n", "has spaces in it " * 4, "x" * (limits.API_TOKEN_MAX_CHARS + 1)]
)
def test_a_malformed_token_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "api-token"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(TokenError, match="valid API token"):
        ensure_token(tmp_path)


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("A" * 43)
    os.symlink(elsewhere, tmp_path / "api-token")
    with pytest.raises(TokenError, match="symbolic link"):
        ensure_token(tmp_path)
