"""The Firecracker backend.

- ``models``   typed bodies of the Firecracker API (pydantic), one per resource
- ``client``   async API client over the unix socket (httpx); fault_message → ``FirecrackerApiError``
- ``process``  the firecracker OS process: spawn, API socket deadline, serial file, reap, exit reason
- ``handle``   ``FirecrackerVmm`` (a ``VmmProcess``): boot from a config file (API socket on), graceful stop
- ``backend``  ``FirecrackerBackend`` (a ``VmmBackend``): finds the binary, reports capabilities
- ``logwatch`` ``LogFollower``: waits for a line in firecracker's log (polls its end)
- ``errors``   ``FirecrackerError`` and its subclasses
"""
