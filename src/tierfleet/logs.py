"""JSON log lines, so operators can grep and ship them; secrets never reach a log.

``TIERFLEET_LOG_FORMAT`` asks for the format: ``json`` (the default) or ``text``. With
JSON, a worker's Celery lines ("Task summary@local-mac[...] succeeded ...", connection
errors, warnings) are JSON too: :func:`setup_celery_logging` answers Celery's
``setup_logging`` signal, so Celery installs no text handler of its own.
"""

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


def json_wanted() -> bool:
    return os.environ.get("TIERFLEET_LOG_FORMAT", "json").strip().lower() != "text"


def setup_celery_logging(loglevel: str | int | None = None) -> None:
    """One JSON handler on the root logger, for Celery's and every library's lines
    (``tierfleet`` keeps its own), and Python warnings routed through logging."""
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        for h in list(root.handlers):
            root.removeHandler(h)
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
        root.addHandler(handler)
    level = loglevel or os.environ.get("TIERFLEET_LOG_LEVEL", "INFO")
    root.setLevel(level if isinstance(level, int) else str(level).upper())
    logging.captureWarnings(True)
