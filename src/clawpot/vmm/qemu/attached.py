"""``AttachedQemu``: a QEMU left running by an earlier server, taken back with its QMP socket, so a VM
paused before a restart can be resumed after it (and a running one paused).

Snapshots of an attached VM are not offered: the snapshot records the VM's spec (kernel, drives,
boot arguments), which the process alone does not give back (``VmmUnsupported``, the default).
"""

from __future__ import annotations

from clawpot.vmm.adopted import AttachedProcess
from clawpot.vmm.base import VmmUnsupported
from clawpot.vmm.qemu.qmp import QmpControl


class AttachedQemu(AttachedProcess):
    _qmp_control: QmpControl | None = None
    persistent_qmp = False

    def _qmp(self) -> QmpControl:
        """The one QMP connection to this QEMU (kept open: its socket serves one client at a time)."""
        if self.control_socket is None:
            raise VmmUnsupported(f"QEMU {self.pid}: its QMP socket is not recorded; cannot pause or resume")
        if self._qmp_control is None:
            self._qmp_control = QmpControl(self.control_socket, persistent=self.persistent_qmp)
        return self._qmp_control

    def detach(self) -> None:
        super().detach()
        if self._qmp_control is not None:
            self._qmp_control.close()

    async def status(self) -> str:
        """QEMU's run state ("running", "paused", ...): a paused VM stays paused across a restart."""
        return await self._qmp().status()

    async def pause(self) -> None:
        await self._qmp().execute_quick("stop")

    async def resume(self) -> None:
        await self._qmp().execute_quick("cont")
