"""``python -m clawpot.agent`` on a host, ``python3 -m clawpot_agent`` in the guest."""

from .main import main

main()
