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

# --- Guest DNS, egress policy and port forwarding (issues 13 and 15) --------------------------------

# The gateway's DNS forwarder answers untrusted guests. A real query is < 300 bytes; 4096 (the usual
# EDNS buffer) bounds a UDP datagram or a TCP message without refusing anything a resolver sends.
DNS_MAX_REQUEST_BYTES = 4096
# Queries forwarded at once, over all guests: beyond it a UDP query is dropped (the guest's resolver
# retries) and a TCP one waits. 64 keeps a flooding guest from growing the server's memory or tasks.
DNS_MAX_IN_FLIGHT = 64
# How long one upstream exchange may take before the guest gets SERVFAIL (a resolver's own timeout is
# 5 s: answering first lets it try again instead of giving up).
DNS_UPSTREAM_TIMEOUT = 4.0
# A TCP client must send its query within this time, and may keep at most this many connections open.
DNS_TCP_IDLE_TIMEOUT = 10.0
DNS_MAX_TCP_CONNECTIONS = 32
# Addresses pinned from an allowed domain's answer live for the record's TTL, clamped: at least 60 s so
# a connection opened right after the answer is not cut by a 0-5 s TTL, at most a day so a stale
# address does not stay allowed for good.
DNS_PIN_MIN_TTL = 60
DNS_PIN_MAX_TTL = 86_400
# A pinned address is refreshed (one nft transaction) only when an answer would extend it by more than
# this: the same name asked again within 30 s costs no rule update. Half the minimum TTL.
DNS_PIN_REFRESH_SLACK = 30
# Entries in one VM's --allow-out or --deny-out list, and published ports per VM: bounds on the rules
# one request can make (a set of 256 intervals is still one lookup per packet).
MAX_EGRESS_ENTRIES = 256
MAX_PUBLISHED_PORTS = 32
# Where a published port listens when its HOSTADDR: prefix is left out: only the host itself reaches it.
DEFAULT_PUBLISH_ADDRESS = "127.0.0.1"
# --- E2B SDK front door: REST control plane and listener (issue 14) ---------------------------------

# The one template Clawpot serves: E2B's default template name maps to the default image.
E2B_DEFAULT_TEMPLATE = "base"
# <vm_dir>/e2b.json (template, metadata, env vars, access token): ours are < 1 KiB with the bounds
# below; 256 KiB only bounds a damaged file.
E2B_ATTRS_MAX_BYTES = 256 * 1024
# A REST request body (POST /sandboxes is the largest: metadata + envVars, a few KiB): bounded so a
# client cannot make the server buffer megabytes before validation.
E2B_MAX_BODY_BYTES = 1024 * 1024
# Graceful stop of the HTTP listener: in-flight requests get this long (as the gRPC grace).
E2B_SHUTDOWN_GRACE = 10.0
# Idle HTTP connections are kept this long. The SDK pools connections for 300 s (E2B_KEEPALIVE_EXPIRY)
# and reuses them; a server that closes them first (hypercorn's default: 5 s) makes a client race a
# closing socket, and the SDK does not retry a request it had written. Longer than the SDK's 300 s, the
# client always closes first; an idle connection costs a socket and a few KiB.
E2B_KEEP_ALIVE_TIMEOUT = 330.0

# --- VM lifetimes (issue 13) --------------------------------------------------------------------------

# A lifetime (create --timeout, SetVmTimeout, --vm-timeout, E2B's timeout) is 1 s to 30 days. E2B's
# own maximum is 24 h; 30 days leaves room for long jobs while catching unit mistakes (ms for s).
MIN_VM_TIMEOUT = 1
MAX_VM_TIMEOUT = 30 * 24 * 3600
# The reaper sleeps until the next deadline but at most this long, so a wall clock that jumps is
# noticed within a minute.
LIFETIME_MAX_SLEEP = 60.0
# A VM whose delete (or pause) failed at expiry is tried again this much later.
LIFETIME_RETRY_INTERVAL = 5.0
# Sandbox metadata (E2B's string map, kept in e2b.json and returned by get and list): bounded like
# labels, a bit larger because E2B users put ids and JSON snippets in it.
E2B_MAX_METADATA_ITEMS = 64
E2B_MAX_METADATA_BYTES = 16 * 1024
# E2B's defaults when a request leaves the timeout out: 15 s for the v1 create and resume, 300 s for
# the v2 create (the SDK's documented default) and for a v2 connect that resumes a paused sandbox.
E2B_V1_DEFAULT_TIMEOUT = 15
E2B_V2_DEFAULT_TIMEOUT = 300
# POST /sandboxes/{id}/refreshes: E2B's bound on `duration`, and its default when left out.
E2B_MAX_REFRESH_SECONDS = 3600
E2B_DEFAULT_REFRESH_SECONDS = 15
# GET /v2/sandboxes page size: E2B's spec, 1-100 (default 100).
E2B_MAX_PAGE_SIZE = 100
# GET /sandboxes/{id}/logs: E2B's default number of lines, and the most asked (the console is read as
# `clawpot logs` reads it: its last LOGS_TAIL_MAX_LINES lines, the same 10,000).
E2B_DEFAULT_LOG_LINES = 1000
E2B_MAX_LOG_LINES = 10000

# --- E2B envd: managed processes (issue 14) --------------------------------------------------------

# The agent's own bounds live in clawpot/agent/processes.py (it cannot import this module): 1 MiB of
# output kept per process while nobody listens, 1 MiB waiting for a slow listener before the process is
# paused, at most 256 running and 64 exited processes remembered.
# A unary proc_* call (list, input, signal, resize) is answered at once by a healthy agent (~1 ms under
# TCG): 10 s, like --agent-timeout, bounds a wedged or hostile one.
AGENT_PROC_CALL_TIMEOUT = 10.0
# proc_list answers at most the agent's 256 running processes; more is a lie.
AGENT_PROC_LIST_MAX = 256
# The user E2B's SDK runs commands as when it names none (E2B templates' default user); the rootfs has it.
E2B_DEFAULT_USER = "user"
# Keepalive events on Process Start/Connect streams: the SDK asks for one every 50 s
# (Keepalive-Ping-Interval); the server sends them at most this often too, so a client that went away
# is noticed (and its agent stream detached) within this many seconds even when the process is silent.
E2B_KEEPALIVE_MAX_INTERVAL = 15.0
# A command's `timeout` kills it this much before the client's deadline (at most a tenth of the
# timeout): by the time the SDK raises TimeoutException the process is gone, as with E2B's envd, whose
# kill comes a network round trip before the SDK's next call can look.
E2B_TIMEOUT_KILL_MARGIN = 0.1
# Start/Connect streams open at once per sandbox: each holds one of the agent connection's 64 sessions
# (agent/protocol.py MAX_SESSIONS); 48 leaves 16 for unary calls (kill, send_stdin, list, files), so a
# sandbox full of waited-on commands can still be controlled. Beyond: RESOURCE_EXHAUSTED.
E2B_MAX_PROCESS_STREAMS = 48

# --- E2B filesystem: the agent's stat/list/mkdir/move/remove/watch and /files (issue 14) ------------

# Entries one ListDir returns at most. E2B's envd has no bound; ours keeps a hostile or huge tree
# from making the host hold an unbounded answer (an entry is ~200 bytes: 64 Ki entries ~ 13 MiB of
# protobuf). A listing with more fails with RESOURCE_EXHAUSTED instead of being silently cut.
E2B_LIST_MAX_ENTRIES = 64 * 1024
# Longest JSON line (an entry or an event) the host accepts from the agent: two paths of 4096 bytes
# escaped as \uXXXX (6 characters a byte) plus names and numbers fit in 64 KiB.
AGENT_FS_LINE_MAX = 64 * 1024
# Longest string field of an entry the host passes on (names, paths, owners) in characters; a Linux
# path is at most 4096 bytes.
AGENT_FS_TEXT_MAX = 4096
# Watchers one sandbox may hold at once (CreateWatcher and WatchDir streams together). Each holds a
# session of the VM's agent connection, which has 64 (MAX_SESSIONS): a quarter leaves room for
# commands and transfers.
E2B_WATCHERS_PER_SANDBOX = 16
# Events GetWatcherEvents returns at most per call (the agent keeps at most 4096 waiting and the
# stream's window holds a few thousand more): beyond, the rest stays for the next call.
E2B_WATCH_EVENTS_PER_CALL = 8192
# How long GetWatcherEvents waits for the agent to confirm it has read every queued inotify event
# (milliseconds under TCG; a bound for a stuck agent, after which the events so far are returned).
E2B_WATCH_SYNC_TIMEOUT = 5.0
# File metadata (E2B's user.e2b.* xattrs) the host accepts in one entry: envd keeps at most 4096 bytes
# per file (keys + values + a 9-byte prefix per key), so at most 4096 / 10 keys; a little slack.
AGENT_FS_METADATA_KEYS = 512
AGENT_FS_METADATA_BYTES = 8192
# A WatchDir stream sends a keepalive at least this often: Connect only notices that the client went
# away when it sends, so this is how long an abandoned stream keeps its watch (and its place among the
# sandbox's watchers). One tiny message a second per open watch costs nothing measurable.
E2B_WATCH_STREAM_LIVENESS = 1.0
# --- Operations: metrics, console logs, the event stream (issue 15) ----------------------------------

# Events kept in memory for WatchVms clients that resume from a sequence number. An event is ~200
# bytes: 10000 of them are ~2 MB, and cover far more than any reconnect gap (a busy host makes a few
# events a second).
EVENTS_KEPT = 10_000
# Events one watcher may fall behind before it is dropped (RESOURCE_EXHAUSTED, it can resume with
# `since`): a stuck client costs at most this many queued events, never unbounded memory.
EVENTS_SUBSCRIBER_QUEUE = 1_000
# Watchers at once (each holds a queue of at most EVENTS_SUBSCRIBER_QUEUE): 100 x 1000 x ~200 B =
# 20 MB at the very worst. More get RESOURCE_EXHAUSTED.
EVENTS_MAX_WATCHERS = 100
# StreamLogs --tail: at most this many lines (the kept console is at most 2 MiB anyway; a bound keeps
# the line index the server builds small).
LOGS_TAIL_MAX_LINES = 10_000
# Bytes per StreamLogs message: small enough for a smooth `logs -f`, large enough for few messages;
# well under gRPC's 4 MiB message limit.
LOGS_CHUNK_BYTES = 32 * 1024
# How often a following StreamLogs looks for new console output (and for a rotation): the console
# writer itself batches at CONSOLE_READ_INTERVAL; a quarter second feels live and costs one fstat.
LOGS_FOLLOW_INTERVAL = 0.25
# Concurrent StreamLogs calls: each holds one open file and one chunk buffer.
LOGS_MAX_STREAMS = 64
# A scrape of /metrics waits this long for the event loop to hand it the node's state; a loop that is
# wedged for longer gets an empty scrape (with the process metrics) instead of a hung Prometheus.
METRICS_SNAPSHOT_TIMEOUT = 5.0
# --- Fork and warm pool: copies of a VM (issue 12) ----------------------------------------------------

# Fresh entropy sent to every copy of a VM (restore, fork, pool hand-out) through configure: 64 bytes
# (512 bits) is twice what one CRNG reseed consumes, so each copy's RNG depends on host bytes alone.
REFRESH_ENTROPY_BYTES = 64
# ForkVm: copies per call. Each is a restore (~150-250 ms under TCG, two at a time on two cores):
# 16 is already seconds of work; more is a loop on the client's side.
MAX_FORK_COUNT = 16
# What admission charges a clone (a VM whose RAM maps a snapshot's memory file copy-on-write: forks,
# pool VMs, restores of a cold VM's snapshot) instead of its memory + VM_OVERHEAD_MIB (448 MiB for
# 256 MiB). Measured by bench/snapshot.py (e) (2026-11-26, QEMU 7.2/TCG, 1 vCPU, 256 MiB, 5 clones idle
# 5 s after their agent answered): PSS 37.3-37.8 MiB each (the pages it wrote, its QEMU and TCG cache,
# its share of the file's pages), plus the snapshot's page cache, 67.5 MiB shared by all (clean file
# pages: reclaimable): 51 MiB per clone for 5, against 224.5 MiB per cold VM (ratio 0.23). Rounded up to
# 64 for the TCG cache growing with use. A clone that rewrites its whole RAM grows towards a cold VM's
# cost: charging clones like this is a measured overcommit, as fork and pool platforms do.
CLONE_CHARGE_MIB = 64
# The warm pool (`clawpot-server --pool`): each shape's template is a cold boot + snapshot at start and
# each pool VM holds a TAP, an address and its clone's memory, so a pool is a handful of VMs, not a
# farm: 32 per shape, 8 shapes.
MAX_POOL_VMS_PER_SHAPE = 32
MAX_POOL_SHAPES = 8
# A pool that could not refill (no memory left in the budget, a failed restore) looks again this often;
# a hand-out or a delete wakes it at once.
POOL_RECHECK_INTERVAL = 5.0
# After a failed template boot or refill, wait this long before the next try (a broken image must not
# turn the pool into a busy loop of cold boots).
POOL_RETRY_DELAY = 10.0

# --- QMP: the one connection kept per QEMU (issue 12) -------------------------------------------------

# The longest line the host reads from QEMU's QMP socket. Its replies to our commands and its events are
# a few hundred bytes (query-migrate ~1 KiB); 1 MiB only bounds what a broken QEMU could make us buffer.
QMP_MAX_LINE = 1024 * 1024
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

# --- E2B fork and snapshots (issue 14) ----------------------------------------------------------------

# A fork's lifetime when the request names none: E2B's SandboxForkRequest default (seconds).
E2B_FORK_DEFAULT_TIMEOUT = 15

# --- Firecracker's own metrics (issue 15) -------------------------------------------------------------

# One metrics document is one line of JSON: ~4.5 KB from Firecracker 1.12 with one drive and one NIC,
# ~1 KB more per further device. 256 KiB is fifty times that; a longer line is dropped, never buffered,
# so a hostile writer costs the server at most this much memory per VM.
FC_METRICS_MAX_LINE = 256 * 1024
# Numbers kept from one document: 1.12 writes a few hundred (more per device); beyond this the
# document is not Firecracker's and is ignored.
FC_METRICS_MAX_KEYS = 4096
# One read of the metrics FIFO: a FIFO holds 64 KiB, so one read takes what is there.
FC_METRICS_READ_CHUNK = 64 * 1024
