"""Listener checks done before the server starts: TLS off loopback, socket group, PEM files."""

from __future__ import annotations

import grp
import subprocess
from pathlib import Path

import pytest

from clawpot.server.listeners import ListenError, TlsFiles, is_loopback, plan


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.1", False),
        ("example.internal", False),
    ],
)
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("address", ["0.0.0.0:50051", "[::]:50051", ":50051", "10.1.2.3:1", "myhost:50051"])
def test_off_loopback_without_tls_is_refused(address: str) -> None:
    with pytest.raises(ListenError, match="needs TLS") as info:
        plan([address], tls=None, socket_group=None)
    assert "\n" not in str(info.value)


def test_loopback_and_unix_need_nothing() -> None:
    result = plan(["127.0.0.1:50051", "[::1]:5", "unix:/run/x.sock"], tls=None, socket_group=None)
    assert result.tcp == ("127.0.0.1:50051", "[::1]:5") and result.unix == (Path("/run/x.sock"),)
    assert result.tls is None and result.socket_gid is None


def test_socket_group() -> None:
    name = grp.getgrgid(0).gr_name
    assert plan(["unix:/x"], tls=None, socket_group=name).socket_gid == 0
    with pytest.raises(ListenError, match="no such group"):
        plan(["unix:/x"], tls=None, socket_group="no-such-group-clawpot")
    with pytest.raises(ListenError, match="needs a unix"):
        plan(["127.0.0.1:1"], tls=None, socket_group=name)


def test_bad_address() -> None:
    with pytest.raises(ListenError, match="expected HOST:PORT"):
        plan(["nonsense"], tls=None, socket_group=None)


def _self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def test_tls_files_are_checked_up_front(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path, "a")
    other_cert, _ = _self_signed(tmp_path, "b")
    assert plan(["0.0.0.0:1"], tls=TlsFiles(cert, key), socket_group=None).tls is not None
    assert (
        plan(["0.0.0.0:1"], tls=TlsFiles(cert, key, client_ca=other_cert), socket_group=None).tls is not None
    )
    with pytest.raises(ListenError, match="not a matching PEM pair"):
        plan(["0.0.0.0:1"], tls=TlsFiles(other_cert, key), socket_group=None)
    with pytest.raises(ListenError, match=r"--tls-key .*No such file"):
        plan(["0.0.0.0:1"], tls=TlsFiles(cert, tmp_path / "missing"), socket_group=None)
    with pytest.raises(ListenError, match="--tls-client-ca"):
        plan(["0.0.0.0:1"], tls=TlsFiles(cert, key, client_ca=key), socket_group=None)
