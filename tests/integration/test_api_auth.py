"""The API is locked to its owner: a real server, a real VM, and the CLI run as another local user.

The server listens on its unix socket (the harness's) and on 127.0.0.1:50051 inside its own network
namespace; the CLI runs there as ``nobody`` (uid 65534, via ``setpriv``), the local user the issue
found driving every VM. Without the token, or with a wrong one, every call is UNAUTHENTICATED; with
``CLAWPOT_TOKEN`` the same user can list and exec. A second server (no VM) proves TLS off loopback,
client certificates and ``--socket-group``; servers that must refuse to start are run directly.
"""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import CLAWPOT_SERVER, InstalledAssets, ServerProcess, parse_table, server_in_namespace

NOBODY = 65534
TCP = "127.0.0.1:50051"
EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3
OFF_LOOPBACK = "10.250.0.1"  # an address on the namespace's own lo: traffic never leaves the namespace

# Run inside the namespace with the server's token as argv[1] ("" for none): health over TCP, then
# reflection. Prints the two outcomes.
PROBE = """
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
md = (("authorization", "Bearer " + sys.argv[1]),) if sys.argv[1] else ()
with grpc.insecure_channel("127.0.0.1:50051") as ch:
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(
        health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status))
    try:
        replies = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), metadata=md, timeout=10)
        print(sorted(s.name for r in replies for s in r.list_services_response.service))
    except grpc.RpcError as exc:
        print(exc.code().name, exc.details())
"""


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, installed_assets: InstalledAssets
) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("auth")
    with server_in_namespace(workdir, installed_assets, "--no-network", "--listen", TCP) as srv:
        yield srv


@pytest.fixture(scope="module")
def vm(server: ServerProcess) -> str:
    return server.create()


@pytest.fixture(scope="module")
def token(server: ServerProcess) -> str:
    return (server.data_dir / "api-token").read_text().strip()


@pytest.fixture(scope="module")
def public_dir() -> Iterator[Path]:
    """A directory other users can reach (pytest's tmp dirs are root-only): certificates, sockets."""
    path = Path(tempfile.mkdtemp(prefix="clawpot-auth-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _as_nobody(server: ServerProcess, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return server.cli_as(NOBODY, TCP, *args, env={"CLAWPOT_DATA_DIR": str(server.data_dir), **env})


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_the_token_file_is_private_and_the_server_user_can_print_it(
    server: ServerProcess, token: str
) -> None:
    st = (server.data_dir / "api-token").stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0 and len(token) >= 43
    assert server.cli_ok("token", "--data-dir", str(server.data_dir)).strip() == token
    denied = server.cli_as(NOBODY, TCP, "token", env={"CLAWPOT_DATA_DIR": str(server.data_dir)})
    assert denied.returncode == EXIT_FAILED and "permission denied" in _one_line(denied), denied.stderr
    assert token not in denied.stdout + denied.stderr
    missing = server.cli("token", "--data-dir", str(server.data_dir / "nowhere"))
    assert missing.returncode == EXIT_FAILED and "no API token" in _one_line(missing)


def test_another_user_without_the_token_is_refused(server: ServerProcess, vm: str) -> None:
    for args in (("list",), ("get", vm), ("exec", vm, "--", "id"), ("delete", vm)):
        result = _as_nobody(server, *args)
        assert result.returncode == EXIT_FAILED, (args, result.stdout, result.stderr)
        line = _one_line(result)
        assert line.startswith("clawpot: UNAUTHENTICATED: ") and "clawpot token" in line, line
        assert "CLAWPOT_TOKEN" in line and "not readable by this user" in line, line
    print(f"\nnobody, no token, `clawpot delete`: exit {result.returncode}: {line}")
    assert set(server.vms()) == {vm}  # and the VM is untouched


def test_another_user_with_a_wrong_token_is_refused(server: ServerProcess, vm: str, token: str) -> None:
    wrong = "W" * len(token)
    result = _as_nobody(server, "exec", vm, "--", "id", CLAWPOT_TOKEN=wrong)
    assert result.returncode == EXIT_FAILED
    line = _one_line(result)
    assert line.startswith("clawpot: UNAUTHENTICATED: wrong API token") and wrong not in line, line
    print(f"\nnobody, wrong token, `clawpot exec`: exit {result.returncode}: {line}")
    garbage = _as_nobody(server, "list", CLAWPOT_TOKEN="not a token")
    assert garbage.returncode == EXIT_USAGE and "CLAWPOT_TOKEN" in _one_line(garbage)


def test_another_user_with_the_token_can_list_and_exec(server: ServerProcess, vm: str, token: str) -> None:
    listed = _as_nobody(server, "list", CLAWPOT_TOKEN=token)
    assert listed.returncode == 0, listed.stderr
    assert [row["ID"] for row in parse_table(listed.stdout)] == [vm]
    ran = _as_nobody(server, "exec", vm, "--", "sh", "-c", "id -u; echo hi >&2; exit 5", CLAWPOT_TOKEN=token)
    assert (ran.returncode, ran.stdout, ran.stderr) == (5, "0\n", "hi\n")  # root in the guest
    print(f"\nnobody, CLAWPOT_TOKEN set: list exit 0, exec `id -u` exit 5, stdout {ran.stdout!r}")
    # An explicit --token-file wins over $CLAWPOT_TOKEN (nobody may read this copy).
    copy = Path(tempfile.mkdtemp(prefix="clawpot-token-")) / "token"
    try:
        copy.write_text(token + "\n")
        os.chown(copy.parent, NOBODY, NOBODY)
        os.chown(copy, NOBODY, NOBODY)
        by_file = _as_nobody(server, "--token-file", str(copy), "list", CLAWPOT_TOKEN="W" * len(token))
        assert by_file.returncode == 0, by_file.stderr
    finally:
        shutil.rmtree(copy.parent)


def test_unix_socket_needs_no_token_and_stays_owner_only(server: ServerProcess, vm: str) -> None:
    assert stat.S_IMODE(server.socket.stat().st_mode) == 0o600
    assert [row["ID"] for row in parse_table(server.cli_ok("list"))] == [vm]  # the harness sends no token


def test_health_is_open_over_tcp_and_reflection_needs_the_token(server: ServerProcess, token: str) -> None:
    without = server.ns.run([sys.executable, "-c", PROBE, ""]).stdout.splitlines()
    assert without[0] == "SERVING"
    assert without[1].startswith("UNAUTHENTICATED ") and "API token" in without[1], without
    with_token = server.ns.run([sys.executable, "-c", PROBE, token]).stdout.splitlines()
    assert with_token[0] == "SERVING" and "clawpot.v1.VmService" in with_token[1], with_token


def test_the_token_survives_a_restart(server: ServerProcess, vm: str, token: str) -> None:
    assert server.terminate() == 0
    server.start()
    assert (server.data_dir / "api-token").read_text().strip() == token
    again = _as_nobody(server, "exec", vm, "--", "true", CLAWPOT_TOKEN=token)
    assert again.returncode == 0, again.stderr


# -- servers that must refuse to start ----------------------------------------------------------------


def _refused_start(tmp_path: Path, *args: str) -> str:
    """Run clawpot-server with ARGS (it must exit at once); its one-line reason."""
    data = tmp_path / "data"
    result = subprocess.run(
        [str(CLAWPOT_SERVER), "--data-dir", str(data), "--no-network", "--vmm", "qemu", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clawpot-server: "), result.stderr
    assert not data.exists()  # refused before touching anything
    return lines[0]


@pytest.mark.parametrize("address", [f"{OFF_LOOPBACK}:50052", "0.0.0.0:50052", "[::]:50052"])
def test_off_loopback_without_tls_refuses_to_start(tmp_path: Path, address: str) -> None:
    assert "needs TLS" in _refused_start(tmp_path, "--listen", address)


def test_unknown_socket_group_refuses_to_start(tmp_path: Path) -> None:
    sock = f"unix:{tmp_path / 's.sock'}"
    assert "no such group" in _refused_start(tmp_path, "--listen", sock, "--socket-group", "no-such-group-cp")


# -- TLS off loopback, client certificates, the socket group ------------------------------------------


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def pki(public_dir: Path) -> dict[str, Path]:
    """A self-signed server certificate for OFF_LOOPBACK, and a client CA with one client certificate."""
    files = {name: public_dir / name for name in ("server.crt", "server.key", "ca.crt", "ca.key")}
    files |= {name: public_dir / name for name in ("client.crt", "client.key", "client.csr")}
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=clawpot-test",
             "-addext", f"subjectAltName=IP:{OFF_LOOPBACK}",
             "-keyout", str(files["server.key"]), "-out", str(files["server.crt"]))  # fmt: skip
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=clawpot-test-ca",
             "-keyout", str(files["ca.key"]), "-out", str(files["ca.crt"]))  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=operator",
             "-keyout", str(files["client.key"]), "-out", str(files["client.csr"]))  # fmt: skip
    _openssl("x509", "-req", "-in", str(files["client.csr"]), "-CA", str(files["ca.crt"]),
             "-CAkey", str(files["ca.key"]), "-CAcreateserial", "-days", "1",
             "-out", str(files["client.crt"]))  # fmt: skip
    for name in ("client.key", "client.crt"):  # the operator's (here: nobody's) own credentials
        os.chown(files[name], NOBODY, NOBODY)
    files["server.key"].chmod(0o600)
    files["ca.key"].chmod(0o600)
    files["client.key"].chmod(0o600)
    return files


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory,
    installed_assets: InstalledAssets,
    pki: dict[str, Path],
    public_dir: Path,
) -> Iterator[ServerProcess]:
    """No VMs: TLS on OFF_LOOPBACK:50052, TLS with client certificates on :50053, a group socket."""
    group = grp.getgrgid(1).gr_name  # "daemon" on Debian: an existing group nobody is not in
    with server_in_namespace(
        tmp_path_factory.mktemp("tls"), installed_assets, "--no-network", start=False
    ) as srv:
        srv.ns.run(["ip", "addr", "add", f"{OFF_LOOPBACK}/32", "dev", "lo"])
        srv.start(
            "--listen", f"{OFF_LOOPBACK}:50052",
            "--listen", f"unix:{public_dir / 'group.sock'}",
            "--tls-cert", str(pki["server.crt"]),
            "--tls-key", str(pki["server.key"]),
            "--socket-group", group,
        )  # fmt: skip
        yield srv


def test_tls_off_loopback_works_with_the_token(tls_server: ServerProcess, pki: dict[str, Path]) -> None:
    token = (tls_server.data_dir / "api-token").read_text().strip()
    url = f"https://{OFF_LOOPBACK}:50052"
    ca = {"CLAWPOT_TLS_CA": str(pki["server.crt"])}
    ok = tls_server.cli_as(NOBODY, url, "list", env={**ca, "CLAWPOT_TOKEN": token})
    assert ok.returncode == 0 and parse_table(ok.stdout) == [], ok.stderr
    no_token = tls_server.cli_as(NOBODY, url, "list", env=ca)
    assert no_token.returncode == EXIT_FAILED and "UNAUTHENTICATED" in _one_line(no_token)
    # The CLI will not send a token in clear to a non-loopback address.
    plain = tls_server.cli_as(NOBODY, f"{OFF_LOOPBACK}:50052", "list", env={"CLAWPOT_TOKEN": token})
    assert plain.returncode == EXIT_USAGE and "not a loopback address" in _one_line(plain)
    # Without the CA the self-signed certificate is not trusted: no connection, nothing sent.
    untrusted = tls_server.cli_as(NOBODY, url, "list", env={"CLAWPOT_TOKEN": token})
    assert untrusted.returncode == EXIT_UNREACHABLE and "not trusted" in _one_line(untrusted)


def test_tls_client_certificates(
    tmp_path: Path, installed_assets: InstalledAssets, pki: dict[str, Path]
) -> None:
    with server_in_namespace(tmp_path, installed_assets, "--no-network", start=False) as srv:
        srv.ns.run(["ip", "addr", "add", f"{OFF_LOOPBACK}/32", "dev", "lo"])
        srv.start(
            "--listen", f"{OFF_LOOPBACK}:50053",
            "--tls-cert", str(pki["server.crt"]),
            "--tls-key", str(pki["server.key"]),
            "--tls-client-ca", str(pki["ca.crt"]),
        )  # fmt: skip
        env = {
            "CLAWPOT_TLS_CA": str(pki["server.crt"]),
            "CLAWPOT_TOKEN": (srv.data_dir / "api-token").read_text().strip(),
        }
        url = f"https://{OFF_LOOPBACK}:50053"
        anonymous = srv.cli_as(NOBODY, url, "list", env=env)
        assert anonymous.returncode != 0, anonymous.stdout
        client = {"CLAWPOT_TLS_CERT": str(pki["client.crt"]), "CLAWPOT_TLS_KEY": str(pki["client.key"])}
        known = srv.cli_as(NOBODY, url, "list", env={**env, **client})
        assert known.returncode == 0, known.stderr


def test_socket_group_lets_that_group_in(tls_server: ServerProcess, public_dir: Path) -> None:
    sock = public_dir / "group.sock"
    st = sock.stat()
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == 1 and st.st_uid == 0
    assert stat.S_IMODE(tls_server.socket.stat().st_mode) == 0o660  # every unix listener gets the group
    url = f"unix:{sock}"
    member = tls_server.cli_as(NOBODY, url, "list", groups=[1])  # no token: the socket's mode decides
    assert member.returncode == 0 and parse_table(member.stdout) == [], member.stderr
    outsider = tls_server.cli_as(NOBODY, url, "list")
    assert outsider.returncode == EXIT_UNREACHABLE, outsider.stderr
