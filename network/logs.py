"""Logging for both sides of a node (loguru to stderr, text or JSON lines)."""

from __future__ import annotations

import sys

from loguru import logger


def configure_logging(fmt: str, level: str) -> None:
    logger.remove()
    # diagnose=False: loguru would otherwise print the values of local variables in logged tracebacks,
    # and those hold requests' bodies (private records) and key material
    if fmt == "json":
        logger.add(sys.stderr, level=level, serialize=True, diagnose=False)
    else:
        logger.add(sys.stderr, level=level, diagnose=False,
                   format="{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {name}: {message}")
