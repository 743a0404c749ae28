"""The `aira_moe` logger: INFO lines on stderr from the main process, with or without LLaMA-Factory."""

from __future__ import annotations

import logging
import sys

from .distributed import is_main_process

_logger = logging.getLogger("aira_moe")


def logger() -> logging.Logger:
    """The package logger, given a handler the first time (as transformers and LLaMA-Factory do for theirs)."""
    if not _logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[aira_moe] %(message)s"))
        _logger.addHandler(handler)
        _logger.setLevel(logging.INFO)
        _logger.propagate = False
    return _logger


def info_main(message: str) -> None:
    """Log on the main process only, so a run on several GPUs says each thing once."""
    if is_main_process():
        logger().info(message)


def warning_main(message: str) -> None:
    if is_main_process():
        logger().warning(message)
