"""Structured logging: one logfmt line per record, under the one logger namespace ``aca.*``.

Each record is one line (``event=name key=value ...``), so journald (which splits a stream on
newlines) keeps it as one entry: a traceback is the ``traceback`` field with its newlines
escaped. A ``key=%s`` argument is a logfmt value: quoted (JSON string escapes) when it has a
space, a quote, an ``=``, a backslash or a control character, or is empty. A message that does
not start with ``event=`` (a library's free text) becomes ``event=log text="..."``.

Under systemd (``JOURNAL_STREAM`` names our stderr) a line starts with its syslog priority
(``<4>`` for a warning), so ``journalctl -p warning`` finds it, and carries no timestamp of its
own (the journal stamps every entry). A ``log_file`` is reopened when logrotate moved it.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import sys
import time
from typing import Any, TextIO

NAMESPACE = "aca"
# printf conversions in a message; a value is one that follows "=" (key=%s)
_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d+)?(?:\.(?:\*|\d+))?[diouxXeEfFgGcrsa%]")
_NEEDS_QUOTES = re.compile(r'[\s"=\\\x00-\x1f\x7f]')
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def value(text: str) -> str:
    """``text`` as a logfmt value: as is when it can be, else a JSON string."""
    if text and not _NEEDS_QUOTES.search(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def syslog_priority(levelno: int) -> int:
    return next((prio for level, prio in _PRIORITIES if levelno >= level), 7)


def _quoted_args(msg: str, args: tuple[Any, ...]) -> tuple[str, tuple[Any, ...]]:
    """The message and its arguments with every ``=%s`` / ``=%r`` argument rendered as a value."""
    out_args: list[Any] = []
    parts: list[str] = []
    last = 0
    i = 0
    for m in _SPEC.finditer(msg):
        spec = m.group()
        if spec == "%%":
            continue
        if i >= len(args):
            break
        arg = args[i]
        i += 1
        is_value = spec in ("%s", "%r") and m.start() > 0 and msg[m.start() - 1] == "="
        if is_value and not isinstance(arg, int | float):  # numbers never need quotes
            parts.append(msg[last : m.start()] + "%s")
            last = m.end()
            arg = value(repr(arg) if spec == "%r" else str(arg))
        out_args.append(arg)
    parts.append(msg[last:])
    return "".join(parts), (*out_args, *args[i:])


class LogfmtFormatter(logging.Formatter):
    """See the module docstring; ``journal``: priority prefix, no timestamp."""

    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal

    def message(self, record: logging.LogRecord) -> str:
        msg, args = record.msg, record.args
        if isinstance(msg, str) and isinstance(args, tuple) and args:
            try:
                msg, args = _quoted_args(msg, args)
                text = msg % args
            except (TypeError, ValueError):  # a malformed call: logging's own rendering
                text = record.getMessage()
        else:
            text = record.getMessage()
        return text if text.startswith("event=") else f"event=log text={value(text)}"

    def format(self, record: logging.LogRecord) -> str:
        line = f"level={record.levelname} logger={record.name} {self.message(record)}"
        if record.exc_info:
            line += f" traceback={value(self.formatException(record.exc_info))}"
        if record.stack_info:
            line += f" stack={value(self.formatStack(record.stack_info))}"
        line = line.replace("\r", "\\r").replace("\n", "\\n")  # free text too: one line, one entry
        if self.journal:
            return f"<{syslog_priority(record.levelno)}>{line}"
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        return f"ts={ts}.{int(record.msecs):03d}Z {line}"


def is_journal(stream: TextIO) -> bool:
    """``stream`` is the journal's: ``JOURNAL_STREAM`` (device:inode) names its file (systemd's
    documented check, so a redirected stderr under systemd is not mistaken for it)."""
    dev_ino = os.environ.get("JOURNAL_STREAM", "")
    if not dev_ino:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return dev_ino == f"{st.st_dev}:{st.st_ino}"


def setup(level: str, log_file: str = "") -> None:
    handler: logging.Handler
    if log_file:
        # Reopened when the file is moved or removed (logrotate without copytruncate).
        handler = logging.handlers.WatchedFileHandler(log_file)
        handler.setFormatter(LogfmtFormatter())
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(LogfmtFormatter(journal=is_journal(sys.stderr)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level.upper())
    logging.getLogger(NAMESPACE).setLevel(level.upper())
