"""Errors of one VM's life.

VmError
├── VmValidationError   the request is wrong (one line per problem); nothing was created
├── SocketPathTooLong   a unix socket path exceeds sun_path (108 bytes); also a validation problem
├── VmStartError        a boot step failed; everything the earlier steps created has been undone
│   └── VmStartAborted  stop() was called while the VM was starting
└── VmNotRunning        an operation that needs a Running VM (pause, snapshot, ...) found it otherwise
"""

from __future__ import annotations


class VmError(Exception):
    pass


class VmValidationError(VmError):
    def __init__(self, problems: list[str] | tuple[str, ...]) -> None:
        super().__init__("\n".join(problems))
        self.problems = tuple(problems)


class SocketPathTooLong(VmError):
    pass


class VmStartError(VmError):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


class VmStartAborted(VmStartError):
    pass


class VmNotRunning(VmError):
    pass
