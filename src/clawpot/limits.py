"""Every default and bound of Clawpot, in one place.

The server, the CLI and the driver import these; nothing else writes the numbers down. Sections
are grouped by what they protect. A bound on something the guest can send is there because the guest
is untrusted (docs/security.md): the host must stay bounded in memory, disk and time whatever a guest
does.
"""

from __future__ import annotations

# --- API access: the token, TLS files, what the CLI prints ------------------------------------------

# Random bytes in a new API token (``secrets.token_urlsafe``): 256 bits, beyond any guessing.
API_TOKEN_BYTES = 32
# A token read from a file or the environment must be at least this long (a 32-byte token is 43
# characters) and at most this long: a short one is guessable, a huge one is not a token.
API_TOKEN_MIN_CHARS = 32
API_TOKEN_MAX_CHARS = 1024
# PEM files for TLS (certificate chains, keys, CA bundles) are read whole; a CA bundle of a few hundred
# certificates fits in 1 MiB, anything larger is the wrong file.
TLS_PEM_MAX_BYTES = 1024 * 1024

# --- VM shape: defaults and bounds of CreateVm ------------------------------------------------------

DEFAULT_VCPUS = 1
DEFAULT_MEMORY_MIB = 256
MIN_VCPUS = 1
# Firecracker's MAX_SUPPORTED_VCPUS; QEMU microvm goes higher, but one limit for both keeps it simple.
MAX_VCPUS = 32
# The guest kernel unpacks in less, but the agent (python3) needs room to start: 64 MiB boots to a
# working agent on both backends (the integration tests run VMs this small).
MIN_MEMORY_MIB = 64
# Only catches typos (1 TiB); what the host can really give is admission's job (RESOURCE_EXHAUSTED).
MAX_MEMORY_MIB = 1024 * 1024

# --- API requests: sizes of fields a client sends ----------------------------------------------------

# VM ids are ours (new_vm_id) but arrive from clients: letters, digits, '-', '_'; at most this long.
MAX_VM_ID_CHARS = 64
# Labels are the only free-form data a VM carries into every ListVms answer, so together with the
# page size below they bound that answer far under gRPC's 4 MiB message limit (see test_paging).
MAX_LABELS = 32
MAX_LABEL_KEY_CHARS = 63
MAX_LABEL_VALUE_CHARS = 256
MAX_LABELS_TOTAL_BYTES = 4 * 1024  # keys + values, UTF-8
# ListVms pages (AIP-158): a client that names no size gets the default; a larger size is lowered.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 200
# Text the server stores about a VM and sends in every Vm message (the VMM's last words, health).
MAX_VM_ERROR_CHARS = 1024
MAX_HEALTH_DETAIL_CHARS = 200
# Exec: argv, env and cwd travel to the agent in ONE frame of at most 64 KiB (agent/protocol.py
# MAX_PAYLOAD), JSON-encoded (non-ASCII and control characters grow up to 6x). The per-field bounds
# are what users meet; the encoded total is checked too so no combination can reach the frame limit.
MAX_ARGV_ITEMS = 4096
MAX_ARGV_BYTES = 32 * 1024
MAX_ENV_ITEMS = 256
MAX_ENV_BYTES = 16 * 1024
MAX_EXEC_REQUEST_BYTES = 60 * 1024  # the encoded total; leaves 4 KiB of the frame for the other keys
# Linux PATH_MAX, for exec's cwd and the guest paths of UploadFile / DownloadFile.
MAX_GUEST_PATH_BYTES = 4096
# Exec stdin and UploadFile chunks need no bound of their own: gRPC's 4 MiB message limit caps each
# message, and the server forwards them in 64 KiB agent frames under the agent's flow-control credit.
# Error messages quote at most this much of a bad value ('...' marks the cut).
QUOTE_CHARS = 32
# A status message travels in a gRPC trailer (8 KiB limit, percent-encoded: up to 12 bytes a character).
MAX_STATUS_MESSAGE_CHARS = 400

# --- Host admission: committed guest memory ----------------------------------------------------------

# What a VM costs the host beyond its guest RAM: the VMM's own memory (code, TCG translation cache,
# device state, page tables). Measured by bench/vm_overhead.py (2026-11-26, 3 runs): QEMU 7.2 microvm
# under TCG, 1 vCPU, 256 MiB, idle 10 s after the agent answered: the QEMU process's RSS outside the
# guest-RAM mapping (/proc/PID/smaps) was 185.7-186.0 MiB (total RSS 256 MiB, guest RAM 70 MiB
# resident); the bulk is TCG's translation cache (~116 MiB resident of a 1 GiB mapping). Baseline in
# the same run, a bare QEMU started paused (-S): 36 MiB. Rounded up. A busy TCG guest grows the cache
# further (KVM has none): capping it (-accel tcg,tb-size=) or a cgroup is the jailer issue's job.
VM_OVERHEAD_MIB = 192
# Committed memory may reach MemTotal x this ratio. 1.0: no overcommit (guests can touch all they were
# given without the host swapping or OOM-killing); `clawpot-server --memory-overcommit` changes it.
DEFAULT_MEMORY_OVERCOMMIT = 1.0

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
# Bytes the host reads from an agent's socket ahead of parsing them; reading pauses past this (the
# StreamReader it replaced paused at twice its 1 MiB limit). Parsing runs as soon as a read completes,
# so a legitimate stream never has more than one or two socket reads (256 KiB each) waiting here.
AGENT_READ_AHEAD = 1024 * 1024
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

# --- Node runtime: what one host gives its VMs unless told otherwise ---------------------------------

# The bridge VMs' TAPs attach to and the subnet they take addresses from (`clawpot-server --bridge
# --subnet`); the gateway is the subnet's first address.
DEFAULT_BRIDGE = "clawpot-br0"
DEFAULT_SUBNET = "192.168.100.0/24"
# From VMM start to the agent's first answer: seconds under KVM, 5-20 s under TCG on a busy host
# (docs/platform-notes.md §2); 60 s leaves room without letting a dead boot hang a create for long.
DEFAULT_READY_TIMEOUT = 60.0
# Delete / stop: the agent's clean power-off, then Ctrl+Alt+Del, then SIGTERM, then SIGKILL, within this.
DEFAULT_STOP_GRACE = 5.0
# A terminal exec that names no size gets the VT100's 24x80 (the agent falls back to the same).
DEFAULT_PTY_ROWS = 24
DEFAULT_PTY_COLS = 80

# --- Time: deadlines the host enforces ----------------------------------------------------------------

# How long a Running VM's agent has to answer a call (ping, exec start, file open) before UNAVAILABLE
# (`clawpot-server --agent-timeout`). Generous for TCG, where a busy guest answers in 100s of ms.
DEFAULT_AGENT_TIMEOUT = 10.0
# An exec with --timeout T ends by T + this on the host, whatever the guest does: the agent's own
# timer fires at T and its answer normally arrives well within the grace (ms on an idle TCG guest).
EXEC_TIMEOUT_GRACE = 2.0
# The health check: one ping per Running VM this often, answered within the timeout or the VM is
# shown UNRESPONSIVE. One check in flight per VM; a stuck one is never stacked on.
HEALTH_CHECK_INTERVAL = 5.0
HEALTH_PING_TIMEOUT = 2.0
# The longest exec --timeout accepted (a year): beyond it the number is a mistake, not a wish.
MAX_EXEC_TIMEOUT = 365 * 24 * 3600.0

# --- VMM output: what the host reads back from a VMM's and the guest's files ---------------------------

# Exit reasons and start failures quote the end of these files (clawpot.vmm.logtail reads at most this
# much from the end, whatever the file's size). Firecracker logs ~150-byte Info lines and its error
# is among the last few dozen: 64 KiB holds hundreds of lines.
FIRECRACKER_LOG_TAIL_BYTES = 64 * 1024
# QEMU's stdout/stderr holds only its complaints; the first "error" line within this much of the end is
# quoted, so a larger window would reach back to older, unrelated warnings.
QEMU_LOG_TAIL_BYTES = 4 * 1024
# The guest's serial console (untrusted text): how much of its end is searched for a VMM panic message
# and quoted when a guest never became ready. A boot's last screen is a few KiB.
CONSOLE_TAIL_BYTES = 16 * 1024

# --- Guest identity: the agent's configure operation ------------------------------------------------

# How long `AgentClient.configure` waits for the agent's answer. The agent does a few netlink calls and
# rewrites three small files: milliseconds even under TCG (bench/identity.py), so 10 s only ever
# expires on an agent that is stuck; the VM is then not handed out (its identity may be half set).
CONFIGURE_TIMEOUT = 10.0

# --- Snapshots: pause, snapshot and restore in the VMM layer (issue 12) ------------------------------

# A snapshot's manifest.json is read whole; ours are ~2 KiB (a few files, one VM spec), so 1 MiB is
# only a bound against a hostile or broken file, never a real one.
SNAPSHOT_MANIFEST_MAX_BYTES = 1024 * 1024
# Digests read snapshot files in chunks of this size: large enough for few syscalls, small enough to
# keep one thread's buffer modest.
SNAPSHOT_HASH_CHUNK = 4 * 1024 * 1024
# Saving the device state (QEMU migration without RAM, ~72 KB: 3-11 ms measured) and loading it: a
# deadline for a wedged VMM, far beyond either.
SNAPSHOT_SAVE_TIMEOUT = 30.0
SNAPSHOT_LOAD_TIMEOUT = 30.0

# --- Snapshots through the API: names and listing (issue 12) ----------------------------------------

# A snapshot's name is a directory name under <data>/snapshots and appears in CLI tables: letters,
# digits, '.', '-', '_', starting with a letter or digit (never hidden, never '..'), and short enough to
# read. 64 like a VM id.
MAX_SNAPSHOT_NAME_CHARS = 64

# --- Per-VM writable layer: create --disk (issue 13) --------------------------------------------------

# The guest's writes land on its own ext4 disk file (sparse: only what it writes takes space), so this
# size is how much of the host's disk one guest may fill; past it the guest gets ENOSPC, inside.
# 1 GiB is the size every VM had before it could be chosen.
DEFAULT_DISK_MIB = 1024
# Below 32 MiB ext4's own metadata and journal take a large share and the agent's temporary files may
# not fit; the guest would fail in confusing ways instead of being refused.
MIN_DISK_MIB = 32
# 256 GiB: a bound against a typo (bytes given as MiB) more than a policy; an operator who wants
# larger layers raises it. The file is sparse, so a large layer costs nothing until written.
MAX_DISK_MIB = 256 * 1024

# --- Defence in depth: per-VM cgroups and the Firecracker jailer (issue 13) ------------------------

# Every VMM runs in its own cgroup <controller root>/clawpot/<vm id> (v2 where mounted with controllers,
# v1 otherwise). A parent of our own keeps Clawpot's VMs together for an operator (`systemd-cgls`,
# metrics) and away from whatever else the host puts in its cgroups; it is never removed (several
# servers with different data directories share it).
CGROUP_PARENT = "clawpot"
# CPU: a VM may use `vcpus` whole CPUs for its vCPU threads plus one more for the VMM's own threads
# (device emulation, I/O, QMP/API: under TCG they compete with a vCPU thread that is busy 100% of the
# time, and a quota of exactly `vcpus` throttled them: 50 concurrent execs into one TCG VM timed out),
# and never more, whatever the guest or a compromised VMM does. 100 ms is the kernel's default
# period: it throttles a runaway VMM within a tenth of a second.
CGROUP_CPU_PERIOD_US = 100_000
CGROUP_VMM_EXTRA_CPUS = 1
# Memory: guest RAM + VM_OVERHEAD_MIB (the measured VMM overhead above, the same number admission
# counts), so a VMM that stays in its bounds is never limited, and one that goes beyond what
# admission reserved for it is OOM-killed alone (memory.oom.group on v2; on v1 the cgroup holds only
# the VMM). Under TCG QEMU's translation cache is capped (QEMU_TCG_TB_SIZE_MIB) so a busy guest's
# cache cannot outgrow the overhead.
# Tasks: QEMU runs its main thread, one per vCPU, RCU, a thread pool of up to 64 workers for block
# I/O, and a few more; Firecracker fewer. 256 leaves room for all of them on 32 vCPUs and still
# stops a fork bomb in a compromised VMM long before it hurts the host (pid_max is 32768 or more).
CGROUP_PIDS_MAX = 256
# QEMU's TCG translation cache (`-accel tcg,tb-size=`), default 1 GiB of which a booted idle guest
# keeps ~116 MiB resident (bench/vm_overhead.py): 96 MiB plus QEMU's ~70 MiB of its own stays within
# VM_OVERHEAD_MIB, with room for device buffers. A full cache is flushed and refilled, not an error.
QEMU_TCG_TB_SIZE_MIB = 96
# Removing a VM's cgroup right after its VMM was reaped can meet EBUSY for a moment while the kernel
# finishes the exit; retried this often, this far apart (a few ms in all is what it ever took).
CGROUP_REMOVE_ATTEMPTS = 50
CGROUP_REMOVE_INTERVAL = 0.01
# How long the jailer itself may take to set up a jail and hand over to firecracker (measured: 30-40
# ms); beyond that it is stuck and the start fails.
JAILER_TIMEOUT = 10.0
