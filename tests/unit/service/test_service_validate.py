"""Every request field has a bound; a violation is INVALID_ARGUMENT with one short line."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from clawpot import errors, limits
from clawpot.service import validate


def rejected(call: Callable[[], None]) -> str:
    with pytest.raises(errors.InvalidArgument) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and len(message) < 300, message
    return message


def test_a_huge_id_is_quoted_by_a_short_prefix() -> None:
    message = rejected(lambda: validate.vm_id("x" * 10_000))
    assert "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (10000 chars)" in message


@pytest.mark.parametrize("vm_id", ["", "../etc", "a/b", "-x", "x" * (limits.MAX_VM_ID_CHARS + 1), "a\nb"])
def test_bad_ids(vm_id: str) -> None:
    rejected(lambda: validate.vm_id(vm_id))


def test_good_ids() -> None:
    validate.vm_id("0123456789abcdef")
    validate.vm_id("a" * limits.MAX_VM_ID_CHARS)


def test_shape_bounds_come_from_limits() -> None:
    for good in (limits.MIN_VCPUS, limits.MAX_VCPUS):
        validate.vcpus(good)
    for bad in (limits.MIN_VCPUS - 1, limits.MAX_VCPUS + 1):
        assert "vcpus" in rejected(lambda: validate.vcpus(bad))  # noqa: B023 - called at once
    validate.memory_mib(limits.MIN_MEMORY_MIB)
    assert "memory_mib" in rejected(lambda: validate.memory_mib(limits.MIN_MEMORY_MIB - 1))
    assert "memory_mib" in rejected(lambda: validate.memory_mib(limits.MAX_MEMORY_MIB + 1))


def test_disk_bounds_come_from_limits() -> None:
    for good in (limits.MIN_DISK_MIB, limits.DEFAULT_DISK_MIB, limits.MAX_DISK_MIB):
        validate.disk_mib(good)
    assert rejected(lambda: validate.disk_mib(limits.MIN_DISK_MIB - 1)) == (
        f"disk_mib must be between 32 and 262144, got {limits.MIN_DISK_MIB - 1}"
    )
    assert "disk_mib" in rejected(lambda: validate.disk_mib(limits.MAX_DISK_MIB + 1))


def test_labels_at_their_limits_pass() -> None:
    validate.labels({f"k{i}": "v" * 100 for i in range(limits.MAX_LABELS)})
    validate.labels({"app.example.com/name": "web-1", "k": ""})


def test_a_3_mb_label_value() -> None:
    message = rejected(lambda: validate.labels({"big": "v" * 3_000_000}))
    assert "(3000000 chars)" in message and f"longer than {limits.MAX_LABEL_VALUE_CHARS}" in message


@pytest.mark.parametrize(
    ("labels", "says"),
    [
        ({f"k{i}": "" for i in range(limits.MAX_LABELS + 1)}, "at most"),
        ({"": "x"}, "invalid label key"),
        ({"k" * (limits.MAX_LABEL_KEY_CHARS + 1): "x"}, "invalid label key"),
        ({"with space": "x"}, "invalid label key"),
        ({"k": "\x1b]0;owned\x07"}, "control characters"),
        ({f"k{i}": "v" * limits.MAX_LABEL_VALUE_CHARS for i in range(20)}, "bytes: at most"),
    ],
)
def test_bad_labels(labels: dict[str, str], says: str) -> None:
    assert says in rejected(lambda: validate.labels(labels))


def test_a_3_mb_argv() -> None:
    message = rejected(lambda: validate.exec_request(["echo", "a" * 3_000_000], {}, None, None))
    assert f"argv takes 3000004 bytes: at most {limits.MAX_ARGV_BYTES}" in message
    rejected(lambda: validate.exec_request(["true"] * (limits.MAX_ARGV_ITEMS + 1), {}, None, None))


def test_exec_bounds() -> None:
    validate.exec_request(["sh", "-c", "x" * 1000], {"A": "b"}, "/root", 5.0)
    assert "empty" in rejected(lambda: validate.exec_request([], {}, None, None))
    rejected(lambda: validate.exec_request([""], {}, None, None))
    rejected(lambda: validate.exec_request(["a\0b"], {}, None, None))
    rejected(lambda: validate.exec_request(["true"], {"A=B": "x"}, None, None))
    rejected(lambda: validate.exec_request(["true"], {"A": "x" * limits.MAX_ENV_BYTES}, None, None))
    many = {f"V{i}": "" for i in range(limits.MAX_ENV_ITEMS + 1)}
    rejected(lambda: validate.exec_request(["true"], many, None, None))
    rejected(lambda: validate.exec_request(["true"], {}, "relative", None))
    rejected(lambda: validate.exec_request(["true"], {}, "/" + "d" * limits.MAX_GUEST_PATH_BYTES, None))
    for bad in (-1.0, math.nan, math.inf, limits.MAX_EXEC_TIMEOUT + 1):
        assert "timeout" in rejected(lambda: validate.exec_request(["true"], {}, None, bad))  # noqa: B023


def test_the_encoded_request_must_fit_one_agent_frame() -> None:
    # Within the per-field byte bounds, but control characters grow 6x once JSON-encoded.
    argv = ["printf", "\x01" * (limits.MAX_ARGV_BYTES - 16)]
    assert "encoded for the agent" in rejected(lambda: validate.exec_request(argv, {}, None, None))


def test_guest_paths() -> None:
    validate.guest_path("/etc/hostname")
    assert "absolute" in rejected(lambda: validate.guest_path("etc/hostname"))
    assert "NUL" in rejected(lambda: validate.guest_path("/etc/\0"))
    rejected(lambda: validate.guest_path("/" + "p" * 5000))
