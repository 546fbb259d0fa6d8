"""Admission arithmetic: committed guest memory + per-VM overhead against MemTotal x overcommit."""

from __future__ import annotations

import pytest

from clawpot import errors, limits
from clawpot.service import admission

HOST = admission.HostMemory(total_mib=24_000, available_mib=23_000)


def test_the_issue_case_two_16000_mib_vms_on_a_24_gib_host() -> None:
    admission.check(16_000, [], HOST, overhead_mib=64)
    with pytest.raises(errors.ResourceExhausted) as info:
        admission.check(16_000, [16_000], HOST, overhead_mib=64)
    assert str(info.value) == (
        "not enough host memory: 16000 MiB asked (+64 MiB VM overhead), 7936 MiB of 24000 MiB left "
        "(committed 16000 + overhead 64 for 1 VM)"
    )


def test_the_overhead_counts_per_vm() -> None:
    committed = [256] * 10
    left = 24_000 - 10 * (256 + 100)
    admission.check(left - 100, committed, HOST, overhead_mib=100)
    with pytest.raises(errors.ResourceExhausted, match="for 10 VMs"):
        admission.check(left - 99, committed, HOST, overhead_mib=100)


def test_overcommit_ratio() -> None:
    with pytest.raises(errors.ResourceExhausted):
        admission.check(16_000, [16_000], HOST, overhead_mib=0)
    admission.check(16_000, [16_000], HOST, overhead_mib=0, overcommit=2.0)
    with pytest.raises(errors.ResourceExhausted, match=r"of 12000 MiB left.*overcommit 0\.5"):
        admission.check(16_000, [], HOST, overhead_mib=0, overcommit=0.5)


def test_mem_available_is_still_checked() -> None:
    tight = admission.HostMemory(total_mib=24_000, available_mib=1_000)
    with pytest.raises(errors.ResourceExhausted, match="1000 MiB available now"):
        admission.check(2_000, [], tight, overhead_mib=0)
    admission.check(2_000, [], admission.HostMemory(24_000, None), overhead_mib=0)


def test_the_default_overhead_is_the_measured_one() -> None:
    assert 0 < limits.VM_OVERHEAD_MIB < limits.DEFAULT_MEMORY_MIB


def test_clones_are_charged_their_own_figure_not_memory_plus_overhead() -> None:
    small = admission.HostMemory(total_mib=1_000, available_mib=1_000)
    # Three 256 MiB VMs + 192 MiB overhead would need 1344 MiB; as clones of 64 MiB they need 192.
    admission.check(256, [], small, count=3, clone=True, clone_mib=64)
    with pytest.raises(errors.ResourceExhausted, match=r"256 MiB asked \(\+192 MiB VM overhead\) x 3"):
        admission.check(256, [], small, count=3, clone=False, overhead_mib=192)
    with pytest.raises(errors.ResourceExhausted, match=r"16 clones of 256 MiB asked \(64 MiB each\)"):
        admission.check(256, [], small, count=16, clone=True, clone_mib=64)
    # Clones already running count: 15 x 64 = 960 leaves 40, not enough for one more.
    with pytest.raises(errors.ResourceExhausted, match="for 15 VMs"):
        admission.check(256, [], small, clone=True, clone_mib=64, committed_clones=15)
    admission.check(256, [], small, clone=True, clone_mib=64, committed_clones=14)
    # And they leave less room for a cold VM.
    with pytest.raises(errors.ResourceExhausted):
        admission.check(256, [], small, overhead_mib=192, committed_clones=10, clone_mib=64)
