"""Errors the server core raises; the gRPC servicer maps each kind to one status code.

ServerError
├── InvalidArgument     bad vcpus, memory, id, path, address        → INVALID_ARGUMENT
├── NotFound            no such VM                                   → NOT_FOUND
├── AlreadyExists       requested address assigned to another VM     → ALREADY_EXISTS
├── FailedPrecondition  VM not Running, deleted while creating, ...  → FAILED_PRECONDITION
├── ResourceExhausted   host memory, address pool                    → RESOURCE_EXHAUSTED
├── Unavailable         agent not reachable, backend not usable here → UNAVAILABLE
└── DeadlineExceeded    exec timeout (process group killed)          → DEADLINE_EXCEEDED
Anything else is a bug and surfaces as INTERNAL with its message.
"""

from __future__ import annotations


class ServerError(Exception):
    """A failure the caller should see with its own status code and a one-line message."""


class InvalidArgument(ServerError):
    pass


class NotFound(ServerError):
    pass


class AlreadyExists(ServerError):
    pass


class FailedPrecondition(ServerError):
    pass


class ResourceExhausted(ServerError):
    pass


class Unavailable(ServerError):
    pass


class DeadlineExceeded(ServerError):
    pass
