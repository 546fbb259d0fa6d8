"""Fixtures shared by the envd tests: ``envd`` (a host agent behind the envd app on a loopback socket,
the SDK's view of a sandbox) is defined with its harness in test_envd_process and offered here to the
other modules of this directory."""

from test_envd_process import envd

__all__ = ["envd"]
