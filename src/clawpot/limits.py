"""Every default and bound of Clawpot, in one place.

The server, the CLI and the driver import these; nothing else writes the numbers down. Sections
are grouped by what they protect. A bound on something the guest can send is there because the guest
is untrusted (docs/security.md): the host must stay bounded in memory, disk and time whatever a guest
does.
"""

from __future__ import annotations

# --- VM shape: defaults and bounds of CreateVm ------------------------------------------------------

# --- API requests: sizes of fields a client sends ----------------------------------------------------

# --- Host admission: committed guest memory ----------------------------------------------------------

# --- Agent channel: what a guest can make the host buffer --------------------------------------------

# --- Disk: what a guest can make the host write -------------------------------------------------------

# A VM's serial console file (console.log / serial.log) is rotated when it reaches this size, keeping one
# predecessor (.1): whatever the guest prints, its console costs at most twice this on disk. 1 MiB holds a
# whole boot log (~30 KiB here) many times over, and the last lines are what readiness errors quote.
CONSOLE_LOG_MAX_BYTES = 1024 * 1024
# How many rotated predecessors are kept next to the current console file.
CONSOLE_LOG_KEEP = 1
# The console reader's one buffer: it reads at most this much per wake-up and holds nothing else.
# 64 KiB is what a console FIFO holds, so one read empties it.
CONSOLE_READ_CHUNK = 64 * 1024
# After a read that emptied the FIFO the reader waits this long before it wakes again: at most 100
# wake-ups per second per VM however the guest prints (one byte at a time included), while a FIFO of
# 64 KiB every 10 ms is still ~6 MB/s, above what an emulated UART delivers.
CONSOLE_READ_INTERVAL = 0.01
# `clawpot cp VM:/path DEST` and DownloadFile stop past this many bytes unless asked for more
# (--max-size / max_size): a guest cannot fill the client's disk with one sparse or endless file.
DOWNLOAD_MAX_BYTES = 1024 * 1024 * 1024

# --- Time: deadlines the host enforces ----------------------------------------------------------------
