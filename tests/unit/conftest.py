"""Unit-test fixtures: a node on the fake VMM backend (tests/support/fake_vmm.py): real store, real
agent process, no root, no VM."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support import fake_vmm
from support.fake_vmm import FakeVmmBackend, node_config

from clawpot.node.node import Node
from clawpot.vmm.spec import BackendKind


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Short: the agent's unix socket lives in the VM's directory (sun_path holds 108 bytes).
    path = Path(tempfile.mkdtemp(prefix="cpn-", dir="/tmp"))
    fake_vmm.fake_assets(path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def backend() -> Iterator[FakeVmmBackend]:
    fake = FakeVmmBackend(BackendKind.QEMU)
    fake_vmm.install(fake)
    yield fake
    fake_vmm.uninstall(BackendKind.QEMU)
    for process in fake.started:  # whatever a failing test left running
        if process.pid is not None:
            fake_vmm.crash(process.pid)


@pytest.fixture
async def node(data_dir: Path, backend: FakeVmmBackend) -> AsyncIterator[Node]:
    opened = await Node.open(node_config(data_dir))
    yield opened
    await opened.close(stop_vms=True)
