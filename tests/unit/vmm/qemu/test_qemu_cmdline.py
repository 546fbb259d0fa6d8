"""The QEMU argv for a spec, and the validation that runs before anything is spawned."""

from __future__ import annotations

from pathlib import Path

import pytest

from clawpot.agent.protocol import SERIAL_PORT_NAME
from clawpot.vmm.base import VmmConfigError
from clawpot.vmm.qemu.cmdline import (
    TCG_BOOT_ARGS,
    Accel,
    QemuFiles,
    RamBacking,
    build_command,
    kernel_cmdline,
    validate,
)
from clawpot.vmm.spec import Drive, NetworkInterface, VmSpec


@pytest.fixture
def spec(tmp_path: Path) -> VmSpec:
    for name in ("vmlinux", "rootfs.ext4", "scratch.ext4"):
        (tmp_path / name).write_bytes(b"\0")
    return VmSpec(
        kernel=tmp_path / "vmlinux",
        boot_args="console=ttyS0 root=/dev/vda ro",
        drives=(
            Drive("root", tmp_path / "rootfs.ext4", read_only=True),
            Drive("scratch", tmp_path / "scratch.ext4", read_only=False),
        ),
        vcpus=2,
        memory_mib=512,
    )


def _options(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_tcg_adds_timer_options_once() -> None:
    assert kernel_cmdline("console=ttyS0", Accel.TCG) == "console=ttyS0 " + " ".join(TCG_BOOT_ARGS)
    given = "console=ttyS0 lpj=1234 no_timer_check"
    assert kernel_cmdline(given, Accel.TCG) == given + " tsc_early_khz=2000000"
    assert kernel_cmdline("console=ttyS0", Accel.KVM) == "console=ttyS0"


def test_tcg_options_stay_before_init_arguments() -> None:
    # Words after "--" are init's argv: the timer options must not end up there.
    assert kernel_cmdline("console=ttyS0 init=/bin/echo -- hello", Accel.TCG) == (
        "console=ttyS0 init=/bin/echo tsc_early_khz=2000000 lpj=4000000 no_timer_check -- hello"
    )


def test_microvm_basics(spec: VmSpec, tmp_path: Path) -> None:
    files = QemuFiles.in_dir(tmp_path)
    argv = build_command(spec, files, Accel.TCG)
    assert argv[0] == "qemu-system-x86_64"
    # Guest RAM is always a shared memfd: snapshots read it, x-ignore-shared leaves it out of the stream.
    assert _options(argv, "-M") == ["microvm,memory-backend=mem"]
    assert "memory-backend-memfd,id=mem,size=512M,share=on" in _options(argv, "-object")
    assert "-incoming" not in argv and "-S" not in argv
    assert _options(argv, "-accel") == ["tcg,tb-size=96"]  # the cap the cgroup counts on
    assert _options(argv, "-smp") == ["2"]
    assert _options(argv, "-m") == ["512M"]
    for flag in ("-nodefaults", "-no-user-config", "-no-reboot"):
        assert flag in argv
    assert _options(argv, "-kernel") == [str(spec.kernel)]
    assert _options(argv, "-append") == [kernel_cmdline(spec.boot_args, Accel.TCG)]
    # The console goes to FIFOs the launcher reads (it writes the capped file), never to a file.
    assert _options(argv, "-serial") == ["chardev:console"]
    assert f"pipe,id=console,path={files.console_pipe}" in _options(argv, "-chardev")
    assert files.console_fifos == (tmp_path / "console.out", tmp_path / "console.in")
    assert _options(argv, "-qmp") == [f"unix:{files.qmp_socket},server=on,wait=off"]


def test_kvm_uses_host_cpu_and_plain_cmdline(spec: VmSpec, tmp_path: Path) -> None:
    argv = build_command(spec, QemuFiles.in_dir(tmp_path), Accel.KVM)
    assert _options(argv, "-accel") == ["kvm"]
    assert _options(argv, "-cpu") == ["host"]
    assert _options(argv, "-append") == [spec.boot_args]


def test_drives_in_spec_order_base_read_only(spec: VmSpec, tmp_path: Path) -> None:
    argv = build_command(spec, QemuFiles.in_dir(tmp_path), Accel.TCG)
    drives = _options(argv, "-drive")
    assert drives == [
        f"if=none,id=root,file={tmp_path / 'rootfs.ext4'},format=raw,readonly=on",
        f"if=none,id=scratch,file={tmp_path / 'scratch.ext4'},format=raw,discard=unmap",
    ]
    blk = [d for d in _options(argv, "-device") if d.startswith("virtio-blk-device")]
    assert blk == ["virtio-blk-device,drive=root", "virtio-blk-device,drive=scratch"]


def test_nic_on_tap(spec: VmSpec, tmp_path: Path) -> None:
    nic = NetworkInterface(tap_name="cp-tap0", mac="06:00:ac:10:00:02")
    with_nic = VmSpec(spec.kernel, spec.boot_args, spec.drives, network_interfaces=(nic,))
    argv = build_command(with_nic, QemuFiles.in_dir(tmp_path), Accel.TCG)
    assert _options(argv, "-netdev") == ["tap,id=net0,ifname=cp-tap0,script=no,downscript=no"]
    assert "virtio-net-device,netdev=net0,mac=06:00:ac:10:00:02" in _options(argv, "-device")
    assert "-netdev" not in build_command(spec, QemuFiles.in_dir(tmp_path), Accel.TCG)


def test_agent_channel_serial_vsock_or_none(spec: VmSpec, tmp_path: Path) -> None:
    files = QemuFiles.in_dir(tmp_path)
    serial = build_command(spec, files, Accel.TCG)
    assert f"socket,id=agent,path={files.agent_socket},server=on,wait=off" in _options(serial, "-chardev")
    assert f"virtserialport,chardev=agent,name={SERIAL_PORT_NAME}" in _options(serial, "-device")

    vsock = build_command(spec, files, Accel.KVM, vsock_cid=1234)
    assert "vhost-vsock-device,guest-cid=1234" in _options(vsock, "-device")
    assert not [c for c in _options(vsock, "-chardev") if "id=agent" in c]

    silent = VmSpec(spec.kernel, spec.boot_args, spec.drives, agent_channel=False)
    argv = build_command(silent, files, Accel.TCG, vsock_cid=1234)
    assert not [d for d in _options(argv, "-device") if "vsock" in d or "serial" in d]


def test_pinned_qmp_socket(tmp_path: Path) -> None:
    files = QemuFiles.in_dir(tmp_path / "vm", qmp_socket=tmp_path / "ctl.sock")
    assert files.qmp_socket == tmp_path / "ctl.sock"
    assert files.agent_socket.parent == tmp_path / "vm"


def test_valid_spec_passes(spec: VmSpec, tmp_path: Path) -> None:
    validate(spec, QemuFiles.in_dir(tmp_path))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kernel": Path("/nonexistent/vmlinux")}, "kernel not found"),
        ({"vcpus": 0}, "vcpus must be at least 1"),
        ({"memory_mib": 8}, "memory_mib must be at least 32"),
        ({"drives": (Drive("1root", Path("/x"), True),)}, "drive id '1root'"),
        ({"drives": (Drive("root", Path("/nonexistent.img"), True),)}, "image not found"),
        ({"network_interfaces": (NetworkInterface("a-name-much-too-long", "06:00:00:00:00:01"),)}, "TAP"),
        ({"network_interfaces": (NetworkInterface("tap0", "06:00:00:00:00"),)}, "invalid MAC"),
    ],
)
def test_bad_spec_one_clear_line(
    spec: VmSpec, tmp_path: Path, change: dict[str, object], message: str
) -> None:
    fields = {
        "kernel": spec.kernel,
        "boot_args": spec.boot_args,
        "drives": spec.drives,
        "vcpus": spec.vcpus,
        "memory_mib": spec.memory_mib,
        "network_interfaces": spec.network_interfaces,
    }
    fields.update(change)
    bad = VmSpec(**fields)  # type: ignore[arg-type]
    with pytest.raises(VmmConfigError, match=message) as caught:
        validate(bad, QemuFiles.in_dir(tmp_path))
    assert "\n" not in str(caught.value)


def test_duplicate_drive_ids_rejected(spec: VmSpec, tmp_path: Path) -> None:
    twice = VmSpec(spec.kernel, spec.boot_args, (spec.drives[0], spec.drives[0]))
    with pytest.raises(VmmConfigError, match="duplicate drive id"):
        validate(twice, QemuFiles.in_dir(tmp_path))


def test_comma_in_image_path_rejected(spec: VmSpec, tmp_path: Path) -> None:
    odd = tmp_path / "a,b.img"
    odd.write_bytes(b"\0")
    with pytest.raises(VmmConfigError, match="contains ','"):
        validate(VmSpec(spec.kernel, spec.boot_args, (Drive("root", odd, True),)), QemuFiles.in_dir(tmp_path))


def test_socket_path_too_long(spec: VmSpec, tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    with pytest.raises(VmmConfigError, match="socket path too long"):
        validate(spec, QemuFiles.in_dir(deep))


def test_restore_maps_the_snapshot_memory_privately_and_waits_for_the_stream(
    spec: VmSpec, tmp_path: Path
) -> None:
    memory = tmp_path / "snap" / "memory"
    argv = build_command(spec, QemuFiles.in_dir(tmp_path), Accel.TCG, ram=RamBacking(memory), incoming=True)
    # share=off: a private copy-on-write mapping; the snapshot's file is never written.
    assert f"memory-backend-file,id=mem,size=512M,mem-path={memory},share=off" in _options(argv, "-object")
    assert _options(argv, "-incoming") == ["defer"]
    assert "-S" in argv  # loaded, then stopped until the restore recipe says cont


def test_snapshot_memory_path_with_a_comma_is_refused(spec: VmSpec, tmp_path: Path) -> None:
    with pytest.raises(VmmConfigError, match="','"):
        build_command(spec, QemuFiles.in_dir(tmp_path), Accel.TCG, ram=RamBacking(tmp_path / "a,b"))
