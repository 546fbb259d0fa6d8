"""Errors of the Firecracker backend.

FirecrackerError (a VmmError)
├── FirecrackerApiError          Firecracker answered non-2xx; ``fault_message`` is its text, verbatim
│                                (also a VmmConfigError: the VMM rejected what we asked)
├── FirecrackerConfigRejected    Firecracker exited refusing its --config-file; its logged reason
│                                (also a VmmConfigError)
└── FirecrackerApiUnavailable    nobody answered on the API socket (missing, refused, timed out)
"""

from __future__ import annotations

from clawpot.vmm.base import VmmConfigError, VmmError


class FirecrackerError(VmmError):
    pass


class FirecrackerApiError(FirecrackerError, VmmConfigError):
    def __init__(self, method: str, path: str, status: int, fault_message: str) -> None:
        super().__init__(f"firecracker rejected {method} {path} (HTTP {status}): {fault_message}")
        self.method = method
        self.path = path
        self.status = status
        self.fault_message = fault_message


class FirecrackerConfigRejected(FirecrackerError, VmmConfigError):
    pass


class FirecrackerApiUnavailable(FirecrackerError):
    pass
