"""``AttachedFirecracker``: a firecracker left running by an earlier server, taken back with its serial
console (``AttachedProcess``) and its metrics FIFO, read again so the VM's own metrics go on (the
totals start again from zero: a counter reset) and firecracker's flushes find a reader."""

from __future__ import annotations

import logging

from clawpot.vmm.adopted import AttachedProcess
from clawpot.vmm.base import AttachRecord
from clawpot.vmm.console import ConsoleWriter
from clawpot.vmm.firecracker.metrics import METRICS_FIFO_NAME, MetricsReader
from clawpot.vmm.spec import BackendKind

log = logging.getLogger(__name__)


class AttachedFirecracker(AttachedProcess):
    def __init__(
        self, record: AttachRecord, kind: BackendKind, *, console: ConsoleWriter | None = None
    ) -> None:
        super().__init__(record, kind, console=console)
        self.metrics: MetricsReader | None = None
        fifo = record.vm_dir / METRICS_FIFO_NAME
        if fifo.exists():  # none: started by a Clawpot that configured no metrics
            try:
                self.metrics = MetricsReader.from_fifo(fifo)
            except OSError as exc:
                log.warning("VM in %s: cannot reopen firecracker's metrics FIFO: %s", record.vm_dir, exc)

    def _on_exit(self) -> None:
        super()._on_exit()
        self._close_metrics(drain=True)

    def detach(self) -> None:
        super().detach()
        self._close_metrics(drain=False)

    def _close_metrics(self, *, drain: bool) -> None:
        if self.metrics is not None:
            if drain:
                self.metrics.drain()
            self.metrics.close()
