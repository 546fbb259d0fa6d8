"""Snapshot files on disk, for every backend: written atomically with a manifest, verified before use.

A snapshot is one directory::

    <name>/manifest.json   format, backend and its version, the VM's spec, the kernel and rootfs it was
                           taken with, and for every file its size and digest
    <name>/state           the VMM's device state (QEMU: a migration stream without guest RAM;
                           Firecracker: its snapshot file)
    <name>/memory          guest RAM, byte for byte (read-only, 0400: clones map it copy-on-write)
    <name>/drive-<id>      a copy of each writable drive, taken while the VM was paused

Writing (``SnapshotWriter``): everything goes into a hidden temporary directory beside the target
(``.<name>.partial-XXXX``); ``seal`` hashes the files, writes the manifest, fsyncs and renames the
directory into place. Any failure (a full disk included) removes the temporary directory: a snapshot is
either complete or absent. The backend captures the files while the VM is paused; sealing (hashing) may
run after the VM resumed, since the files are our own copies.

Reading (``open_snapshot``): the manifest is parsed with bounded size and strict fields, the backend and
its version must match, the kernel and rootfs must be the very files the snapshot was taken with (path,
size, mtime), every file must be a regular file of the recorded size, and each file's digest must
match. Anything else raises ``SnapshotCorrupt`` or ``SnapshotIncompatible`` with one line naming what.

Digests: ``sha256`` over the file's non-zero 4 KiB blocks, each prefixed by its offset, then the size
(``DIGEST_ALGORITHM``). Equal for the same content whatever the filesystem made holes of, and it reads
only the data extents (``SEEK_DATA``): a 1 GiB writable layer holding 20 MiB costs 20 MiB of hashing,
where a plain sha256 costs 3 s here. A verified file is remembered per process by (device, inode, size,
mtime, ctime): any write or chmod changes ctime, so restores after the first skip re-hashing
unchanged files.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clawpot import limits
from clawpot.vmm.base import VmmError
from clawpot.vmm.spec import BackendKind, Drive, NetworkInterface, VmSpec

MANIFEST_NAME = "manifest.json"
STATE_NAME = "state"
MEMORY_NAME = "memory"
DRIVE_PREFIX = "drive-"
FORMAT = 1
DIGEST_ALGORITHM = "sha256-nonzero-4k-blocks"
_BLOCK = 4096
_ZERO = bytes(_BLOCK)
_FICLONE = 0x40049409  # linux/fs.h: share the source's extents (btrfs, xfs): no data copied


class SnapshotError(VmmError):
    """A snapshot cannot be written or used.

    SnapshotError
    ├── SnapshotCorrupt        files missing, truncated, changed, or a manifest that does not parse
    └── SnapshotIncompatible   taken by another backend or version, or with another kernel or rootfs
    """


class SnapshotCorrupt(SnapshotError):
    pass


class SnapshotIncompatible(SnapshotError):
    pass


# -- the manifest -------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Model):
    size: int = Field(ge=0)
    digest: str = Field(pattern=r"^[0-9a-f]{64}$")


class AssetIdentity(_Model):
    """Which kernel or rootfs file: a changed file (new size or mtime) is another one."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> AssetIdentity:
        st = path.stat()
        return cls(path=str(path), size=st.st_size, mtime_ns=st.st_mtime_ns)


class DriveEntry(_Model):
    drive_id: str
    # Read-only drives (the base image) are used in place, never copied: ``path`` is where they are.
    # A writable drive's content is the snapshot file ``file``; ``name`` is its file name in a VM dir.
    read_only: bool
    path: str
    file: str | None = None
    identity: AssetIdentity | None = None


class NicEntry(_Model):
    tap_name: str
    mac: str
    iface_id: str


class SpecEntry(_Model):
    kernel: AssetIdentity
    boot_args: str
    drives: tuple[DriveEntry, ...]
    vcpus: int
    memory_mib: int
    network_interfaces: tuple[NicEntry, ...]
    agent_channel: bool


class Manifest(_Model):
    format: int
    backend: BackendKind
    backend_version: str
    created_at: float
    digest_algorithm: str
    spec: SpecEntry
    files: dict[str, FileEntry]
    # Backend-specific facts needed to restore (QEMU: the accelerator), never used by callers.
    backend_options: dict[str, str] = Field(default_factory=dict)

    @property
    def rootfs(self) -> DriveEntry:
        return self.spec.drives[0]


def spec_entry(spec: VmSpec, drive_files: dict[str, str]) -> SpecEntry:
    """The manifest's record of ``spec``; ``drive_files`` maps writable drive ids to snapshot files."""
    drives = []
    for drive in spec.drives:
        if drive.read_only:
            drives.append(
                DriveEntry(
                    drive_id=drive.drive_id,
                    read_only=True,
                    path=str(drive.path),
                    identity=AssetIdentity.of(drive.path),
                )
            )
        else:
            drives.append(
                DriveEntry(
                    drive_id=drive.drive_id,
                    read_only=False,
                    path=drive.path.name,
                    file=drive_files[drive.drive_id],
                )
            )
    return SpecEntry(
        kernel=AssetIdentity.of(spec.kernel),
        boot_args=spec.boot_args,
        drives=tuple(drives),
        vcpus=spec.vcpus,
        memory_mib=spec.memory_mib,
        network_interfaces=tuple(
            NicEntry(tap_name=n.tap_name, mac=n.mac, iface_id=n.iface_id) for n in spec.network_interfaces
        ),
        agent_channel=spec.agent_channel,
    )


# -- a snapshot that was verified -----------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    directory: Path
    manifest: Manifest

    @property
    def state(self) -> Path:
        return self.directory / STATE_NAME

    @property
    def memory(self) -> Path:
        return self.directory / MEMORY_NAME

    def spec_for(
        self, vm_dir: Path, network_interfaces: tuple[NetworkInterface, ...] | None = None
    ) -> VmSpec:
        """The VmSpec of a VM restored into ``vm_dir``: base drives in place, writable drives at their
        names inside ``vm_dir`` (``copy_drives`` puts them there), the recorded NICs unless overridden."""
        entry = self.manifest.spec
        drives = tuple(
            Drive(d.drive_id, Path(d.path) if d.read_only else vm_dir / d.path, d.read_only)
            for d in entry.drives
        )
        nics = network_interfaces
        if nics is None:
            nics = tuple(NetworkInterface(n.tap_name, n.mac, n.iface_id) for n in entry.network_interfaces)
        return VmSpec(
            kernel=Path(entry.kernel.path),
            boot_args=entry.boot_args,
            drives=drives,
            vcpus=entry.vcpus,
            memory_mib=entry.memory_mib,
            network_interfaces=nics,
            agent_channel=entry.agent_channel,
        )

    def copy_drives(self, vm_dir: Path) -> list[Path]:
        """Copy each writable drive into ``vm_dir`` (reflink where possible, holes kept); the base image
        is never copied. On failure the copies made so far are removed."""
        made: list[Path] = []
        try:
            for drive in self.manifest.spec.drives:
                if drive.read_only or drive.file is None:
                    continue
                target = vm_dir / drive.path
                copy_sparse(self.directory / drive.file, target, mode=0o600)
                made.append(target)
        except BaseException as exc:
            for path in made:
                path.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise SnapshotError(
                    f"cannot copy the writable layer of snapshot {self.directory.name} into "
                    f"{vm_dir}: {describe_oserror(exc)}"
                ) from exc
            raise
        return made


def open_snapshot(directory: Path, *, backend: BackendKind, backend_version: str) -> Snapshot:
    """The snapshot in ``directory``, verified for use by ``backend`` at ``backend_version``.

    Raises ``SnapshotCorrupt`` or ``SnapshotIncompatible`` (one line, naming the snapshot and the fault).
    """
    where = directory.name
    manifest = read_manifest(directory)
    if manifest.backend is not backend:
        raise SnapshotIncompatible(f"snapshot {where} was taken by {manifest.backend}, not {backend}")
    if manifest.backend_version != backend_version:
        raise SnapshotIncompatible(
            f"snapshot {where} was taken with {backend} {manifest.backend_version}; this host runs "
            f"{backend_version}"
        )
    _check_asset(where, "kernel", manifest.spec.kernel)
    for drive in manifest.spec.drives:
        if drive.read_only and drive.identity is not None:
            _check_asset(where, f"drive {drive.drive_id}", drive.identity)
    for name, entry in manifest.files.items():
        _verify_file(directory, name, entry)
    return Snapshot(directory, manifest)


def read_manifest(directory: Path) -> Manifest:
    where = directory.name
    path = directory / MANIFEST_NAME
    try:
        with open(path, "rb") as f:
            raw = f.read(limits.SNAPSHOT_MANIFEST_MAX_BYTES + 1)
    except FileNotFoundError:
        raise SnapshotCorrupt(
            f"snapshot {where}: no {MANIFEST_NAME} (not a snapshot, or incomplete)"
        ) from None
    except OSError as exc:
        raise SnapshotCorrupt(f"snapshot {where}: cannot read {MANIFEST_NAME}: {exc.strerror}") from exc
    if len(raw) > limits.SNAPSHOT_MANIFEST_MAX_BYTES:
        raise SnapshotCorrupt(f"snapshot {where}: {MANIFEST_NAME} is larger than any we write")
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise SnapshotCorrupt(f"snapshot {where}: bad {MANIFEST_NAME} ({field}: {first['msg']})") from None
    if manifest.format != FORMAT or manifest.digest_algorithm != DIGEST_ALGORITHM:
        raise SnapshotIncompatible(
            f"snapshot {where}: format {manifest.format} ({manifest.digest_algorithm}); this release "
            f"reads format {FORMAT}"
        )
    for name in manifest.files:
        if "/" in name or name in ("", ".", "..", MANIFEST_NAME):
            raise SnapshotCorrupt(f"snapshot {where}: bad file name {name!r} in {MANIFEST_NAME}")
    return manifest


def _check_asset(where: str, what: str, identity: AssetIdentity) -> None:
    path = Path(identity.path)
    try:
        now = AssetIdentity.of(path)
    except OSError:
        raise SnapshotIncompatible(f"snapshot {where}: its {what} {path} is gone") from None
    if now != identity:
        raise SnapshotIncompatible(
            f"snapshot {where} was taken with another {what} ({path} changed since: size or mtime)"
        )


# Files verified by this process: (dev, ino, size, mtime_ns, ctime_ns) -> digest.
_verified: dict[tuple[int, int, int, int, int], str] = {}


# Mixed into transient digests: another process (a restarted server) has another one.
_PROCESS_SECRET = secrets.token_hex(16)


def _transient_digest(st: os.stat_result) -> str:
    """The "digest" of a transient template's file: it names that very inode (device, inode, size and
    mtime) under this process's secret, not its content, so only the process that wrote it, reading it
    back seconds later, accepts it. A chmod or chown after sealing (QEMU's account is granted the RAM
    file) changes none of them."""
    identity = f"transient {_PROCESS_SECRET} {st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns}"
    return hashlib.sha256(identity.encode()).hexdigest()


def _verify_file(directory: Path, name: str, entry: FileEntry) -> None:
    where = directory.name
    path = directory / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise SnapshotCorrupt(f"snapshot {where}: file {name} is missing") from None
    if not (st.st_mode & 0o170000 == 0o100000):
        raise SnapshotCorrupt(f"snapshot {where}: {name} is not a regular file")
    if st.st_size != entry.size:
        raise SnapshotCorrupt(
            f"snapshot {where}: {name} has {st.st_size} bytes, the manifest says {entry.size}"
        )
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if _verified.get(key) == entry.digest or _transient_digest(st) == entry.digest:
        return
    if file_digest(path) != entry.digest:
        raise SnapshotCorrupt(f"snapshot {where}: {name} does not match its digest (changed or damaged)")
    _verified[key] = entry.digest


# -- writing --------------------------------------------------------------------------------------------


class SnapshotWriter:
    """A snapshot being written into a hidden temporary directory beside ``target``.

    Use as a context manager: leaving it without ``seal`` (an exception) removes everything written.
    """

    def __init__(self, target: Path) -> None:
        self.target = target
        if target.exists():
            raise SnapshotError(f"snapshot {target.name} already exists")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SnapshotError(f"cannot create {target.parent}: {exc.strerror or exc}") from exc
        # A hidden target (a fork's or the warm pool's template) is transient: used by this process
        # only and swept at the next start, so it is neither fsynced nor hashed (see ``seal``). Its
        # pages may never reach the disk at all: a fork's template is deleted once its copies started.
        self.durable = not target.name.startswith(".")
        self.temp = target.parent / f".{target.name}.partial-{secrets.token_hex(4)}"
        try:
            self.temp.mkdir(mode=0o700)
        except OSError as exc:
            raise SnapshotError(f"cannot write snapshot {target.name}: {exc.strerror or exc}") from exc
        self.sealed = False

    def __enter__(self) -> SnapshotWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.sealed:
            self.discard()

    def path(self, name: str) -> Path:
        return self.temp / name

    def discard(self) -> None:
        shutil.rmtree(self.temp, ignore_errors=True)

    def seal(
        self,
        *,
        backend: BackendKind,
        backend_version: str,
        spec: SpecEntry,
        backend_options: dict[str, str] | None = None,
    ) -> Snapshot:
        """Hash the files, write the manifest, make everything read-only, fsync, rename into place."""
        files: dict[str, FileEntry] = {}
        for path in sorted(self.temp.iterdir()):
            # Read-only, for the owner alone; group read stays where a backend gave the file a group
            # of its own (a jailed firecracker's state and memory: the VMM account's group, so that a
            # jailed restore can open them).
            st = path.stat()
            path.chmod(0o440 if st.st_gid != 0 and st.st_mode & 0o040 else 0o400)
            if self.durable:
                digest = file_digest(path)
                _fsync_path(path)
            st = path.stat()
            if not self.durable:
                # A transient template is read back only by this process, seconds later: its content is
                # not hashed (100s of ms for a guest's RAM, while the source VM waits paused). The
                # "digest" names this very inode instead, so any other reader refuses the file.
                digest = _transient_digest(st)
            files[path.name] = FileEntry(size=st.st_size, digest=digest)
            # Hashed just now from our own copy: a restore by this process need not hash it again (the
            # key is taken after the chmod; renaming the directory below changes no file's inode or ctime).
            _verified[(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)] = digest
        manifest = Manifest(
            format=FORMAT,
            backend=backend,
            backend_version=backend_version,
            created_at=time.time(),
            digest_algorithm=DIGEST_ALGORITHM,
            spec=spec,
            files=files,
            backend_options=backend_options or {},
        )
        manifest_path = self.temp / MANIFEST_NAME
        manifest_path.write_text(manifest.model_dump_json(indent=1))
        manifest_path.chmod(0o400)
        if self.durable:
            _fsync_path(manifest_path)
            _fsync_path(self.temp)
        try:
            os.rename(self.temp, self.target)  # fails if the target appeared meanwhile (non-empty dir)
        except OSError as exc:
            raise SnapshotError(f"cannot put snapshot {self.target.name} in place: {exc.strerror}") from exc
        self.sealed = True
        if self.durable:
            _fsync_path(self.target.parent)
        return Snapshot(self.target, manifest)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_snapshot(directory: Path) -> None:
    """Delete a snapshot (its files are read-only to keep clones safe; the directory is ours)."""
    shutil.rmtree(directory, ignore_errors=False)


# -- file helpers ---------------------------------------------------------------------------------------


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) of the ranges of ``fd`` holding data (``SEEK_DATA``/``SEEK_HOLE``)."""
    extents = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole is left
                break
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        extents.append((start, min(end, size)))
        offset = end
    return extents


def copy_sparse(source: Path | int, target: Path, *, mode: int = 0o600) -> None:
    """Copy ``source`` (a path or an open fd) to the new file ``target``: a reflink where the filesystem
    shares extents, else its data extents only (``copy_file_range``: in the kernel, holes stay holes).
    On failure (ENOSPC...) the partial target is removed and ``OSError`` goes on."""
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC) if isinstance(source, Path) else source
    try:
        size = os.fstat(src).st_size
        dst = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            try:
                fcntl.ioctl(dst, _FICLONE, src)
            except OSError:
                _copy_extents(src, dst, size)
            os.fsync(dst)
        except BaseException:
            os.close(dst)
            target.unlink(missing_ok=True)
            raise
        os.close(dst)
    finally:
        if isinstance(source, Path):
            os.close(src)


def _copy_extents(src: int, dst: int, size: int) -> None:
    os.ftruncate(dst, size)
    in_kernel = True  # copy_file_range; across filesystems (a memfd into ext4) it is EXDEV: sendfile
    for start, end in data_extents(src, size):
        offset = start
        while offset < end:
            if in_kernel:
                try:
                    copied = os.copy_file_range(src, dst, end - offset, offset, offset)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                        raise
                    in_kernel = False
                    continue
            else:
                os.lseek(dst, offset, os.SEEK_SET)
                copied = os.sendfile(dst, src, offset, end - offset)
            if copied == 0:
                raise OSError(errno.EIO, "short copy")
            offset += copied


def file_digest(path: Path) -> str:
    """``DIGEST_ALGORITHM`` of ``path``: sha256 over (offset, block) of every non-zero 4 KiB block,
    then the size. Reads only data extents."""
    digest = hashlib.sha256()
    chunk = limits.SNAPSHOT_HASH_CHUNK
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        for start, end in data_extents(fd, size):
            offset = start - start % _BLOCK
            while offset < end:
                data = os.pread(fd, min(chunk, end - offset), offset)
                if not data:
                    break
                view = memoryview(data)
                for at in range(0, len(data), _BLOCK):
                    block = view[at : at + _BLOCK]
                    if block != _ZERO[: len(block)]:
                        digest.update((offset + at).to_bytes(8, "little"))
                        digest.update(block)
                offset += len(data)
    digest.update(size.to_bytes(8, "little"))
    return digest.hexdigest()


def describe_oserror(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the snapshot's filesystem"
    return exc.strerror or str(exc)
