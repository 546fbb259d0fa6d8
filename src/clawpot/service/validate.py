"""Check what a client sent before anything is done with it: every field has a bound (``limits``).

Pure functions, no I/O. Each violation is ``InvalidArgument`` with one line that quotes at most a short
prefix of the bad value (``errors.quote``): a huge or hostile value never comes back whole.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence

from clawpot import limits
from clawpot.agent.protocol import encode_json
from clawpot.errors import InvalidArgument, one_line, quote
from clawpot.network.policy import EgressPolicy, PolicyError, parse_ports
from clawpot.network.policydb import VmNetworkPolicy

_VM_ID_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_-]{{0,{limits.MAX_VM_ID_CHARS - 1}}}")
# Label keys: Kubernetes-like names, so they print and parse everywhere (`--label k=v`, tables, JSON).
_LABEL_KEY_RE = re.compile(rf"[A-Za-z0-9]([A-Za-z0-9._/-]{{0,{limits.MAX_LABEL_KEY_CHARS - 1}}})?")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A directory name under <data>/snapshots: no '/', never hidden (partial snapshots are) nor '..'.
_SNAPSHOT_NAME_RE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{limits.MAX_SNAPSHOT_NAME_CHARS - 1}}}")


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def vm_id(value: str) -> None:
    if not _VM_ID_RE.fullmatch(value):
        raise InvalidArgument(
            f"invalid VM id {quote(value)}: 1-{limits.MAX_VM_ID_CHARS} letters, digits, '-' or '_'"
        )


def snapshot_name(value: str) -> None:
    if not _SNAPSHOT_NAME_RE.fullmatch(value):
        raise InvalidArgument(
            f"invalid snapshot name {quote(value)}: 1-{limits.MAX_SNAPSHOT_NAME_CHARS} letters, digits, "
            "'.', '-' or '_', starting with a letter or digit"
        )


def vcpus(value: int) -> None:
    if not limits.MIN_VCPUS <= value <= limits.MAX_VCPUS:
        raise InvalidArgument(f"vcpus must be between {limits.MIN_VCPUS} and {limits.MAX_VCPUS}, got {value}")


def memory_mib(value: int) -> None:
    if not limits.MIN_MEMORY_MIB <= value <= limits.MAX_MEMORY_MIB:
        raise InvalidArgument(
            f"memory_mib must be between {limits.MIN_MEMORY_MIB} and {limits.MAX_MEMORY_MIB}, got {value}"
        )


def disk_mib(value: int) -> None:
    if not limits.MIN_DISK_MIB <= value <= limits.MAX_DISK_MIB:
        raise InvalidArgument(
            f"disk_mib must be between {limits.MIN_DISK_MIB} and {limits.MAX_DISK_MIB}, got {value}"
        )


def ip_address(value: str) -> None:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise InvalidArgument(f"invalid IPv4 address {quote(value)}") from None


def labels(values: Mapping[str, str]) -> None:
    if len(values) > limits.MAX_LABELS:
        raise InvalidArgument(f"{len(values)} labels: at most {limits.MAX_LABELS}")
    total = 0
    for key, value in values.items():
        if not _LABEL_KEY_RE.fullmatch(key):
            raise InvalidArgument(
                f"invalid label key {quote(key)}: 1-{limits.MAX_LABEL_KEY_CHARS} characters of "
                "letters, digits, '.', '_', '-', '/', starting with a letter or digit"
            )
        if len(value) > limits.MAX_LABEL_VALUE_CHARS:
            raise InvalidArgument(
                f"label {key!r}: value {quote(value)} is longer than {limits.MAX_LABEL_VALUE_CHARS} chars"
            )
        if not value.isprintable():
            raise InvalidArgument(f"label {key!r}: value {quote(value)} has control characters")
        total += _utf8_len(key) + _utf8_len(value)
    if total > limits.MAX_LABELS_TOTAL_BYTES:
        raise InvalidArgument(f"labels take {total} bytes: at most {limits.MAX_LABELS_TOTAL_BYTES} in all")


def guest_path(path: str, what: str = "guest path") -> None:
    if not path.startswith("/"):
        raise InvalidArgument(f"{what} must be absolute, got {quote(path)}")
    if "\0" in path:
        raise InvalidArgument(f"{what} contains a NUL byte")
    if (size := _utf8_len(path)) > limits.MAX_GUEST_PATH_BYTES:
        raise InvalidArgument(f"{what} of {size} bytes: at most {limits.MAX_GUEST_PATH_BYTES}")


def exec_request(argv: Sequence[str], env: Mapping[str, str], cwd: str | None, timeout: float | None) -> None:
    if not argv:
        raise InvalidArgument("exec needs a command (argv is empty)")
    if not argv[0]:
        raise InvalidArgument("exec: argv[0] (the program) is empty")
    if len(argv) > limits.MAX_ARGV_ITEMS:
        raise InvalidArgument(f"argv has {len(argv)} items: at most {limits.MAX_ARGV_ITEMS}")
    if any("\0" in arg for arg in argv):
        raise InvalidArgument("argv contains a NUL byte")
    if (size := sum(_utf8_len(arg) for arg in argv)) > limits.MAX_ARGV_BYTES:
        raise InvalidArgument(f"argv takes {size} bytes: at most {limits.MAX_ARGV_BYTES}")
    environment(env)
    if cwd is not None:
        guest_path(cwd, "cwd")
    if timeout is not None and not 0 <= timeout <= limits.MAX_EXEC_TIMEOUT:
        raise InvalidArgument(f"timeout must be between 0 and {limits.MAX_EXEC_TIMEOUT:g} s, got {timeout:g}")
    # What really travels: one JSON frame. Escapes can make it several times the sizes checked above.
    encoded = len(encode_json({"argv": list(argv), "env": dict(env), "cwd": cwd}))
    if encoded > limits.MAX_EXEC_REQUEST_BYTES:
        raise InvalidArgument(
            f"argv, env and cwd take {encoded} bytes encoded for the agent: at most "
            f"{limits.MAX_EXEC_REQUEST_BYTES}"
        )


def network_policy(
    allow_out: Sequence[str], deny_out: Sequence[str], no_internet: bool, publish: Sequence[str] = ()
) -> VmNetworkPolicy:
    """--allow-out, --deny-out, --no-internet and --publish parsed (network/policy.py says what each
    means); a malformed entry is INVALID_ARGUMENT naming it."""
    try:
        return VmNetworkPolicy(EgressPolicy.parse(allow_out, deny_out, no_internet), parse_ports(publish))
    except PolicyError as exc:
        raise InvalidArgument(one_line(str(exc), 200)) from None


def environment(env: Mapping[str, str]) -> None:
    """Environment variables: names a shell accepts, no NUL, bounded in count and size."""
    if len(env) > limits.MAX_ENV_ITEMS:
        raise InvalidArgument(f"env has {len(env)} variables: at most {limits.MAX_ENV_ITEMS}")
    for name, value in env.items():
        if not _ENV_NAME_RE.fullmatch(name):
            raise InvalidArgument(f"invalid environment variable name {quote(name)}")
        if "\0" in value:
            raise InvalidArgument(f"environment variable {quote(name)} contains a NUL byte")
    if (size := sum(_utf8_len(k) + _utf8_len(v) for k, v in env.items())) > limits.MAX_ENV_BYTES:
        raise InvalidArgument(f"env takes {size} bytes: at most {limits.MAX_ENV_BYTES}")


def vm_timeout(seconds: int) -> None:
    if not limits.MIN_VM_TIMEOUT <= seconds <= limits.MAX_VM_TIMEOUT:
        raise InvalidArgument(
            f"timeout {seconds} s out of range: {limits.MIN_VM_TIMEOUT}-{limits.MAX_VM_TIMEOUT} s (30 days)"
        )
