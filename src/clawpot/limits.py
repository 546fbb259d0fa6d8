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

# --- API requests: sizes of fields a client sends ----------------------------------------------------

# --- Host admission: committed guest memory ----------------------------------------------------------

# --- Agent channel: what a guest can make the host buffer --------------------------------------------

# --- Disk: what a guest can make the host write -------------------------------------------------------

# --- Time: deadlines the host enforces ----------------------------------------------------------------
