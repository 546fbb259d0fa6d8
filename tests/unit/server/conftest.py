"""The server's unit tests reuse the agent tests' harness (a real agent process on this host)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "agent"))
