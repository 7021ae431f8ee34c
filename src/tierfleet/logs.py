"""JSON log lines, so operators can grep and ship them; secrets never reach a log."""

from __future__ import annotations

import json
import logging
import os
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body = {
            "ts": round(time.time(), 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, ensure_ascii=False)


def setup_logging(level: str | None = None) -> None:
    """Attach one JSON handler to the ``tierfleet`` logger (idempotent)."""
    logger = logging.getLogger("tierfleet")
    if any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(level or os.environ.get("TIERFLEET_LOG_LEVEL", "INFO"))
    logger.propagate = False
