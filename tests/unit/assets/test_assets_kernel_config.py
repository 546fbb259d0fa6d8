"""The kernel config fragment and the check that every option of it survives olddefconfig."""

from __future__ import annotations

from clawpot.assets.kernel import KernelRecipe, config_mismatches, fragment_bytes, parse_config

# The options the guest needs beyond tinyconfig (docs/platform-notes.md §5 and kernel.fragment).
REQUIRED = [
    "64BIT",
    "SMP",
    "PRINTK",
    "PRINTK_TIME",
    "TTY",
    "SERIAL_8250",
    "SERIAL_8250_CONSOLE",
    "BLK_DEV_INITRD",
    "HYPERVISOR_GUEST",
    "PARAVIRT",
    "KVM_GUEST",
    "PVH",
    "X86_MPPARSE",
    "ACPI",
    "PCI",
    "VIRTIO",
    "VIRTIO_MMIO",
    "VIRTIO_MMIO_CMDLINE_DEVICES",
    "VIRTIO_BLK",
    "VIRTIO_NET",
    "VIRTIO_CONSOLE",
    "VSOCKETS",
    "VIRTIO_VSOCKETS",
    "HW_RANDOM_VIRTIO",
    "NET",
    "INET",
    "UNIX",
    "PACKET",
    "IP_PNP",
    "EXT4_FS",
    "OVERLAY_FS",
    "TMPFS",
    "DEVTMPFS",
    "DEVTMPFS_MOUNT",
    "PROC_FS",
    "SYSFS",
    "FUTEX",
    "EPOLL",
    "SIGNALFD",
    "TIMERFD",
    "EVENTFD",
    "SHMEM",
    "UNIX98_PTYS",
    "BINFMT_ELF",
    "BINFMT_SCRIPT",
    "MULTIUSER",
    "POSIX_TIMERS",
    "FILE_LOCKING",
    "INOTIFY_USER",
]


def test_fragment_builds_in_every_required_option() -> None:
    options = parse_config(fragment_bytes().decode())
    assert {f"CONFIG_{name}": "y" for name in REQUIRED}.items() <= options.items()


def test_parse_config_reads_values_and_unset_options() -> None:
    text = 'CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="str"\nCONFIG_D=32\n# comment\n\n'
    assert parse_config(text) == {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": '"str"', "CONFIG_D": "32"}


def test_mismatches_name_dropped_and_changed_options() -> None:
    wanted = {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": "32", "CONFIG_D": "y", "CONFIG_E": "n"}
    final = {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": "64"}  # D dropped (unmet dependency), E absent
    assert config_mismatches(wanted, final) == [
        "CONFIG_C: asked 32, got 64",
        "CONFIG_D: asked y, got (absent)",
    ]


def test_key_changes_with_the_fragment_and_the_source_version() -> None:
    base = KernelRecipe("6.12.117-1", b"CONFIG_A=y\n")
    assert base.key() == KernelRecipe("6.12.117-1", b"CONFIG_A=y\n", jobs=8).key()  # -j is not an input
    assert base.key() != KernelRecipe("6.12.118-1", b"CONFIG_A=y\n").key()
    assert base.key() != KernelRecipe("6.12.117-1", b"CONFIG_A=n\n").key()
