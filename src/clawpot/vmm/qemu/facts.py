"""What a status report says about a running QEMU VM (``clawpot-driver status``, ``clawpot doctor``).

Asked over QMP in one connection: run state, vCPUs, memory, QEMU version and whether this QEMU really
runs on KVM or TCG; plus the host's cached accelerator probe, which explains that choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clawpot.vmm.probe import cached_probe
from clawpot.vmm.qemu.qmp import QmpControl, QmpError

_MIB = 1024 * 1024


async def qemu_facts(qmp_socket: Path, *, data: Path | None = None) -> dict[str, Any]:
    """Keys shared with the Firecracker report: vmm_state, vcpus, memory_mib, vmm_version (or vmm_error);
    QEMU adds accelerator, and accelerator_probe when the host has been probed."""
    facts: dict[str, Any] = {}
    probe = cached_probe(data)
    if probe is not None:
        facts["accelerator_probe"] = probe.summary()
    qmp = QmpControl(qmp_socket)
    try:
        status, cpus, memory, version, kvm = await qmp.query(
            "query-status", "query-cpus-fast", "query-memory-size-summary", "query-version", "query-kvm"
        )
    except QmpError as exc:
        return facts | {"vmm_error": str(exc)}
    finally:
        qmp.close()  # a one-shot query: QEMU's socket serves one client at a time
    try:
        qemu = _field(version, "qemu")
        facts |= {
            "vmm_state": _field(status, "status"),
            "vcpus": len(cpus) if isinstance(cpus, list) else None,
            "memory_mib": int(_field(memory, "base-memory")) // _MIB,
            "vmm_version": f"qemu {_field(qemu, 'major')}.{_field(qemu, 'minor')}.{_field(qemu, 'micro')}",
            "accelerator": "kvm" if _field(kvm, "enabled") else "tcg",
        }
    except (KeyError, TypeError, ValueError) as exc:
        return facts | {"vmm_error": f"unexpected QMP reply: {exc!r}"}
    return facts


def _field(reply: object, key: str) -> Any:
    if not isinstance(reply, dict):
        raise TypeError(f"expected an object with {key!r}, got {reply!r}")
    return reply[key]
