"""The in-guest agent and its wire protocol. Standard library only, Python 3.11.

This directory is copied into the guest as the top-level package ``clawpot_agent`` and started by the
init as ``python3 -m clawpot_agent --guest``; hence every import between its modules is relative.
On a host it runs as ``python -m clawpot.agent --listen-unix PATH`` (tests, benchmarks).

Modules:

- ``protocol``    the wire contract shared with the host client: constants, frames, handshake lines.
- ``main``        command line, listeners, READY line, signals, stop / power-off.
- ``links``       byte streams served: stream sockets, and serial lines that outlive host connections.
- ``connection``  one host session: handshake, frame parsing, routing frames to sessions.
- ``outframes``   output read straight into DATA frames in one reusable buffer (no copy in Python).
- ``session``     base class of an operation's session (credit windows, END / ERROR, cleanup).
- ``ops``         the operations by name; ``shutdown``.
- ``execution``   the ``exec`` operation: process groups, pipes or PTY, stdin, signals, timeout.
- ``files``       the ``put`` (atomic, or in place) and ``get`` operations, streamed.
- ``accounts``    the guest user an operation acts for; paths relative to its home; owned directories.
- ``fsops``       ``stat``, ``list`` (streamed), ``mkdir``, ``move``, ``remove``: E2B envd's semantics.
- ``watch``       the ``watch`` operation: inotify events (ctypes), bounded queue, host syncs.
- ``metadata``    user-defined file metadata as envd keeps it (``user.e2b.*`` extended attributes).
- ``processes``   the table of managed processes: they outlive streams and connections, found by pid or
                  tag, output kept in a bounded ring while nobody listens (E2B's envd processes).
- ``procops``     the ``proc_*`` operations on that table: start, attach, list, input, signal, resize.
- ``identity``    the ``configure`` request and its validation (shared with the host client).
- ``configure``   the ``configure`` operation: hostname, address, gateway, DNS and MAC of the guest;
                  and ``refresh`` (clock and entropy only).
- ``refresh``     what a copy of a VM must not share: host entropy into the RNG (reseeded), the clock.
- ``netlink``     a minimal rtnetlink client: link, IPv4 addresses, default route.
- ``etcfiles``    /etc/hostname, /etc/hosts and /etc/resolv.conf, replaced atomically.
- ``arp``         the gratuitous ARP sent after an address or MAC change.
- ``reaper``      SIGCHLD-driven reaping of child processes.
- ``power``       guarded sync, read-only remount and reboot(2) that end the VM.

Exceptions never leave a connection: ``SessionError`` becomes an ERROR frame, ``FrameError`` ends
the host session (the only exception types defined here; neither crosses the package boundary).
"""
