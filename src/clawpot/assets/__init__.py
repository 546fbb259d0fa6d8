"""Guest assets: the kernel, the root filesystem with the init and agent, Firecracker.

Built from inputs kept in this package, cached by a hash of those inputs, installed atomically into
``<data>/assets`` with a manifest (see ``clawpot.paths``).

- ``install``     the installer: what to (re)build, copying cache entries in, ``status``, ``installed``.
- ``manifest``    ``manifest.json``: version, sha256 and input hash of each installed file; checks.
- ``cache``       the build cache: entries named by input hash, atomic commit, dead-build cleanup.
- ``kernel``      recipe: ``vmlinux`` from Debian's linux-source with ``kernel.fragment``.
- ``rootfs``      recipes: the mmdebstrap base tarball, and the ext4 image made from it (mkfs.ext4 -d).
- ``payload``     what Clawpot adds to a root filesystem: ``guest/clawpot-init`` and the agent.
- ``inject``      put the payload into an existing ext4 image with debugfs (no mount).
- ``firecracker`` Firecracker + jailer: PATH, official release, or the pinned wheel; sha256 checked.
- ``bootargs``    the guest kernel command line (``guest_cmdline``).
- ``scratch``     the per-VM writable layer disk (``make_scratch_disk``).
- ``hashing``     sha256 of files and of build inputs.  ``atomic``: atomic file replacement.
- ``progress``    progress display for long steps; build commands with their output logged.
- ``errors``      ``AssetError`` and its subclasses (the tree is drawn there).
"""

from clawpot.assets.errors import AssetError

__all__ = ["AssetError"]
