"""Request bodies are exactly Firecracker's wire format; responses parse what Firecracker sends."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from clawpot.vmm.firecracker import models


def test_bodies_use_firecracker_field_names_and_omit_unset_fields() -> None:
    assert models.BootSource(kernel_image_path=Path("/k"), boot_args="console=ttyS0").body() == {
        "kernel_image_path": "/k",
        "boot_args": "console=ttyS0",
    }
    assert models.Drive(
        drive_id="rootfs", path_on_host=Path("/r"), is_root_device=False, is_read_only=True
    ).body() == {
        "drive_id": "rootfs",
        "path_on_host": "/r",
        "is_root_device": False,
        "is_read_only": True,
    }
    assert models.MachineConfiguration(vcpu_count=2, mem_size_mib=512).body() == {
        "vcpu_count": 2,
        "mem_size_mib": 512,
    }
    assert models.NetworkInterface(
        iface_id="eth0", host_dev_name="tap0", guest_mac="06:00:00:00:00:01"
    ).body() == {
        "iface_id": "eth0",
        "host_dev_name": "tap0",
        "guest_mac": "06:00:00:00:00:01",
    }
    assert models.Vsock(guest_cid=3, uds_path=Path("/v.sock")).body() == {
        "guest_cid": 3,
        "uds_path": "/v.sock",
    }
    assert models.Logger(log_path=Path("/l"), level=models.LogLevel.INFO, show_level=True).body() == {
        "log_path": "/l",
        "level": "Info",
        "show_level": True,
    }
    assert models.Metrics(metrics_path=Path("/m")).body() == {"metrics_path": "/m"}
    for action in models.ActionType:
        assert models.InstanceAction(action_type=action).body() == {"action_type": action.value}


def test_requests_reject_typos_and_out_of_range_values() -> None:
    with pytest.raises(ValidationError):
        models.BootSource(kernel_image_path=Path("/k"), boot_arg="x")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        models.MachineConfiguration(vcpu_count=0, mem_size_mib=128)
    with pytest.raises(ValidationError):
        models.MachineConfiguration(vcpu_count=33, mem_size_mib=128)
    with pytest.raises(ValidationError):
        models.Vsock(guest_cid=2, uds_path=Path("/v"))  # CIDs 0-2 are reserved


def test_responses_parse_firecracker_answers_and_ignore_new_fields() -> None:
    # Verbatim answers of Firecracker v1.12.1.
    info = models.InstanceInfo.model_validate_json(
        '{"id":"anonymous-instance","state":"Not started","vmm_version":"1.12.1","app_name":"Firecracker"}'
    )
    assert info.state is models.InstanceState.NOT_STARTED and info.vmm_version == "1.12.1"
    assert (
        models.FirecrackerVersion.model_validate_json('{"firecracker_version":"1.12.1"}').firecracker_version
        == "1.12.1"
    )
    machine = models.MachineConfigurationInfo.model_validate_json(
        '{"vcpu_count":1,"mem_size_mib":128,"smt":false,"track_dirty_pages":false,"huge_pages":"None","new":1}'
    )
    assert (machine.vcpu_count, machine.mem_size_mib, machine.huge_pages) == (1, 128, models.HugePages.NONE)


def test_config_file_uses_the_dashed_section_names() -> None:
    config = models.ConfigFile(
        boot_source=models.BootSource(kernel_image_path=Path("/k"), boot_args="a"),
        drives=(
            models.Drive(drive_id="rootfs", path_on_host=Path("/r"), is_root_device=True, is_read_only=True),
        ),
        machine_config=models.MachineConfiguration(vcpu_count=1, mem_size_mib=128),
    )
    body = config.body()
    assert set(body) == {"boot-source", "drives", "machine-config", "network-interfaces"}
    assert body["boot-source"] == {"kernel_image_path": "/k", "boot_args": "a"}


def test_vm_config_parses_firecrackers_answer() -> None:
    # GET /vm/config of Firecracker v1.12.1 after a --config-file start (verbatim).
    answer = (
        '{"balloon":null,"drives":[{"drive_id":"rootfs","partuuid":null,"is_root_device":false,'
        '"cache_type":"Unsafe","is_read_only":true,"path_on_host":"/tmp/fcx/run/r.img","rate_limiter":null,'
        '"io_engine":"Sync","socket":null}],"boot-source":{"kernel_image_path":"/tmp/fcx/run/k.elf",'
        '"initrd_path":null,"boot_args":"console=ttyS0"},"cpu-config":null,"logger":null,"machine-config":'
        '{"vcpu_count":1,"mem_size_mib":64,"smt":false,"track_dirty_pages":false,"huge_pages":"None"},'
        '"metrics":null,"mmds-config":null,"network-interfaces":[],"vsock":{"guest_cid":3,'
        '"uds_path":"/tmp/fcx/run/v.sock"},"entropy":null}'
    )
    config = models.VmConfigInfo.model_validate_json(answer)
    assert config.boot_source is not None and config.boot_source.boot_args == "console=ttyS0"
    assert [(d.drive_id, d.path_on_host, d.is_read_only) for d in config.drives] == [
        ("rootfs", Path("/tmp/fcx/run/r.img"), True)
    ]
    assert config.machine_config is not None and config.machine_config.mem_size_mib == 64
    assert config.vsock == models.VsockInfo(guest_cid=3, uds_path=Path("/tmp/fcx/run/v.sock"))
    assert config.network_interfaces == ()
