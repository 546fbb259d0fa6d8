"""ListVms pages: stable under concurrent creates/deletes, bad tokens refused, and a full page of the
largest VMs the API lets a client make stays far under gRPC's 4 MiB message limit."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from clawpot import errors, limits
from clawpot.node.health import AgentHealth, HealthStatus
from clawpot.node.store import VmRecord
from clawpot.node.vms import VmView
from clawpot.server.servicer import vm_to_pb
from clawpot.service import paging
from clawpot.v1 import vm_pb2
from clawpot.vm.state import VmState
from clawpot.vmm.spec import BackendKind

GRPC_MAX_MESSAGE = 4 * 1024 * 1024


def _key(item: tuple[float, str]) -> tuple[float, str]:
    return item


def test_pages_follow_each_other_to_the_end() -> None:
    items = [(float(i), f"vm{i:03}") for i in range(25)]
    seen, token = [], ""
    for _ in range(10):
        page, token = paging.page(items, _key, 10, token)
        seen += page
        if not token:
            break
    assert seen == items


def test_changes_between_pages_neither_repeat_nor_skip() -> None:
    items = [(float(i), f"vm{i}") for i in range(6)]
    first, token = paging.page(items, _key, 3, "")
    items.remove(first[0])  # deleted after the first page
    items.append((99.0, "late"))  # created after it
    rest, end = paging.page(items, _key, 10, token)
    assert rest == [(3.0, "vm3"), (4.0, "vm4"), (5.0, "vm5"), (99.0, "late")] and end == ""


def test_page_size_default_and_cap() -> None:
    assert paging.page_size(0) == limits.DEFAULT_PAGE_SIZE
    assert paging.page_size(10**6) == limits.MAX_PAGE_SIZE


@pytest.mark.parametrize("token", ["garbage", "x" * 10_000, "W10=", "WzEsIDJd"])
def test_bad_tokens(token: str) -> None:
    with pytest.raises(errors.InvalidArgument) as info:
        paging.page([], _key, 10, token)
    assert len(str(info.value)) < 100


def _largest_vm(i: int) -> VmView:
    """A VM carrying as much as the API lets it: every label bound at its maximum, a long error."""
    labels: dict[str, str] = {}
    budget = limits.MAX_LABELS_TOTAL_BYTES
    for n in range(limits.MAX_LABELS):
        key = f"{n:02}".ljust(limits.MAX_LABEL_KEY_CHARS, "k")
        value = "\u00e9" * min(limits.MAX_LABEL_VALUE_CHARS, max(0, (budget - len(key)) // 2))
        budget -= len(key) + 2 * len(value)
        if budget < 0:
            break
        labels[key] = value
    record = VmRecord(
        id=f"{i:016x}" * 4,
        state=VmState.ERROR,
        backend=BackendKind.QEMU,
        vcpus=limits.MAX_VCPUS,
        memory_mib=limits.MAX_MEMORY_MIB,
        vm_dir=Path("/x"),
        ip_address="192.168.100.254",
        labels=labels,
        error="\u00e9" * 100_000,  # the VMM's last words are cut to MAX_VM_ERROR_CHARS
    )
    return VmView(record, HealthStatus(AgentHealth.DEGRADED, time.time(), "d" * 10_000))


def test_a_full_page_of_the_largest_vms_fits_a_message() -> None:
    response = vm_pb2.ListVmsResponse(
        vms=[vm_to_pb(_largest_vm(i)) for i in range(limits.MAX_PAGE_SIZE)], next_page_token="x" * 100
    )
    size = response.ByteSize()
    print(f"\nworst-case ListVms page: {size} bytes ({limits.MAX_PAGE_SIZE} VMs)")
    assert size < GRPC_MAX_MESSAGE // 2
