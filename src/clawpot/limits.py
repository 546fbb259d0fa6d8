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

# Host-side buffer budget of one agent connection (one per VM): bytes waiting in the writer for a guest
# that does not read, plus control frames (INFO, END, ERROR payloads) queued for consumers. A well-behaved
# agent keeps this small: the worst legitimate case is 64 uploads at once (the agent's MAX_SESSIONS), each
# with one 64 KiB frame written before it waits for the writer to drain: 4 MiB; twice that is the budget,
# far below what would hurt a host serving many VMs. Past it the connection is dropped as a guest
# violation. DATA is bounded separately by the credit we grant (AGENT_RECEIVE_WINDOW per stream), which
# is our own promise, not the guest's doing.
AGENT_HOST_BUFFER_BUDGET = 8 * 1024 * 1024
# Credit the host grants the agent per stream: DATA we may have to hold for a slow consumer. Large
# because fewer WINDOW round trips mean much higher throughput; the agent never buffers more than its
# socket high-water mark anyway.
AGENT_RECEIVE_WINDOW = 1024 * 1024
# The host answers a guest PING only while its unsent output is below this: a guest that pings without
# reading its PONGs gets no more of them (asyncio's own default high-water mark is 64 KiB too).
AGENT_PONG_HIGH_WATER = 64 * 1024
# Frames the host reads and throws away (PINGs, stream-0 ERRORs, frames for streams already closed,
# empty DATA, unknown types) cost it CPU and nothing else. A well-behaved agent sends only the tail of a
# stream the host cancelled: at most its window, 16 full frames and the END, so the burst covers some 60
# streams cancelled at once. A token bucket: this burst, refilled at this rate; emptying it drops the
# connection as a guest violation (a flood).
AGENT_IGNORED_FRAMES_BURST = 1024
AGENT_IGNORED_FRAMES_PER_S = 256
# Control frames (INFO, EOF) per stream: the agent sends one INFO and one EOF per output pipe.
AGENT_STREAM_CONTROL_FRAMES = 8
# Bytes of a previous connection the handshake may skip (serial lines deliver stale output after a
# reconnect: at most what was queued in the VMM and the agent, far below this).
AGENT_HANDSHAKE_MAX_STALE = 16 * 1024 * 1024
# Guest-supplied text in host logs and error messages: at most this many characters, escaped.
AGENT_LOG_TEXT_CHARS = 200
# Lines of guest-supplied text logged per VM: a burst of this many, then this many per second; the rest
# is counted and reported in one "N messages suppressed" line.
AGENT_LOG_BURST = 10
AGENT_LOG_PER_S = 1.0

# --- Disk: what a guest can make the host write -------------------------------------------------------

# --- Time: deadlines the host enforces ----------------------------------------------------------------
