"""How the server's log lines look: text for people (the default), or one JSON object per line
(``--log-format json``) for log shippers.

A JSON line has ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``, plus the structured
fields a record carries in ``extra={"fields": {...}}`` (the per-call line of ``rpcmetrics``: method,
code, duration, VM id) at the top level. Messages can quote guest text (a console tail in a VM's
error): ``json.dumps`` escapes every control character, so a line is always exactly one line.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_RESERVED = frozenset({"time", "level", "logger", "message"})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line.update({k: v for k, v in fields.items() if k not in _RESERVED})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def configure(log_format: str, *, verbose: bool = False) -> None:
    """Set up the root logger for ``log_format`` (``text`` or ``json``) on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
