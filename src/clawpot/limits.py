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

# --- Time: deadlines the host enforces ----------------------------------------------------------------
