"""The in-sandbox API (E2B's envd) as the SDK speaks it, served on the host for requests carrying
``E2b-Sandbox-Id`` (routed here by ``clawpot.e2b.app``), translated to Clawpot's agent protocol.

- ``app``         ``create_envd_app(ctx)``: sandbox check (502 "was not found"), ``X-Access-Token`` of
                  ``secure`` sandboxes, routing; ``/health`` (204) and ``/envs`` (the sandbox's envVars).
- ``process``     ``process.Process`` over Connect: Start/Connect streams, List, SendInput, StreamInput,
                  SendSignal, CloseStdin, Update (PTY), on the agent's managed processes (``proc_*``).
- ``filesystem``  ``filesystem.Filesystem`` over Connect: Stat, MakeDir, Move, ListDir, Remove, WatchDir
                  and the watcher trio, on the agent's filesystem operations; envd's codes.
- ``files``       HTTP ``/files``: streamed download (gzip negotiated) and upload (octet-stream, multipart,
                  gzip bodies), signed URLs, envd's error shapes.
- ``entries``     guest entries and watch events as envd's protobuf (Go permission strings, symlinks).
- ``guest``       a sandbox's agent client, and failures → Connect codes the SDK maps.
- ``users``       the guest user of a request (``Authorization: Basic``; default ``user``).
- ``gen/``        code generated from E2B's .proto files (proto/e2b/envd) by scripts/gen-proto.sh.
"""

from clawpot.e2b.envd.app import create_envd_app

__all__ = ["create_envd_app"]
