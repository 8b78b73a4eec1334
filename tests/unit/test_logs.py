"""Log lines as journald and logfmt readers take them: one line per record, quoted values,
priority prefixes under the journal, a log file that follows logrotate."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import re
import sys

import pytest

from agent import logs
from agent.logs import LogfmtFormatter, value


def _record(
    level: int, msg: str, *args: object, name: str = "aca.test", exc: bool = False
) -> logging.LogRecord:
    exc_info = sys.exc_info() if exc else None
    return logging.getLogger(name).makeRecord(name, level, __file__, 1, msg, args, exc_info)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("ValueError('x')", "ValueError('x')"),
        ("two words", '"two words"'),
        ("", '""'),
        ('say "hi"', '"say \\"hi\\""'),
        ("a=b", '"a=b"'),
        ("back\\slash", '"back\\\\slash"'),
        ("line\nbreak", '"line\\nbreak"'),
        ("tab\there", '"tab\\there"'),
        ("née", "née"),
    ],
)
def test_values_are_quoted_only_when_logfmt_needs_it(text: str, expected: str) -> None:
    assert value(text) == expected


def test_key_value_arguments_are_logfmt_values_and_the_rest_is_left_as_written() -> None:
    line = LogfmtFormatter().message(
        _record(
            logging.WARNING,
            "event=x reason=%s error=%r n=%d ratio=%.1f %s empty=%s ok=%s 100%% done=%s",
            "no such port", ValueError("bad value"), 3, 0.25, "topic=t partition=0", "", True, "yes",
        )
    )  # fmt: skip
    assert line == (
        'event=x reason="no such port" error="ValueError(\'bad value\')" n=3 ratio=0.2 '
        'topic=t partition=0 empty="" ok=True 100% done=yes'
    )


def test_free_text_becomes_an_event_line() -> None:
    line = LogfmtFormatter().message(
        _record(logging.INFO, "Exception calling %s", "handler", name="grpc._server")
    )
    assert line == 'event=log text="Exception calling handler"'


def test_a_traceback_is_one_field_of_one_line() -> None:
    try:
        raise KeyError("missing")
    except KeyError:
        record = _record(logging.ERROR, "event=task_failed id=%s", "p1", exc=True)
    line = LogfmtFormatter().format(record)
    assert "\n" not in line
    head, _, rest = line.partition(" traceback=")
    assert re.fullmatch(r"ts=\S+Z level=ERROR logger=aca\.test event=task_failed id=p1", head), head
    text = json.loads(rest)
    assert text.startswith("Traceback (most recent call last):\n") and text.endswith("KeyError: 'missing'")


def test_a_message_with_newlines_stays_one_line() -> None:
    line = LogfmtFormatter().format(_record(logging.INFO, "event=x %s", "first\nsecond"))
    assert "\n" not in line and line.endswith("event=x first\\nsecond")


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        (logging.DEBUG, "<7>"),
        (logging.INFO, "<6>"),
        (logging.WARNING, "<4>"),
        (logging.ERROR, "<3>"),
        (logging.CRITICAL, "<2>"),
    ],
)
def test_under_the_journal_a_line_starts_with_its_priority_and_has_no_timestamp(
    level: int, prefix: str
) -> None:
    line = LogfmtFormatter(journal=True).format(_record(level, "event=x"))
    assert line == f"{prefix}level={logging.getLevelName(level)} logger=aca.test event=x"


def test_the_journal_is_recognised_by_the_device_and_inode_of_stderr(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / "stream", "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logs.is_journal(stream)
        assert not logs.is_journal(other)  # stderr redirected elsewhere under systemd
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not logs.is_journal(stream)


def test_the_log_file_is_reopened_after_logrotate_moved_it(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "agent.log"
    root, aca = logging.getLogger(), logging.getLogger("aca")
    saved = root.handlers[:], root.level, aca.level
    try:
        logs.setup("INFO", str(path))
        log = logging.getLogger("aca.test")
        log.info("event=before")
        path.rename(tmp_path / "agent.log.1")
        log.info("event=after")
        for handler in root.handlers:
            handler.flush()
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:], level, aca_level = saved
        root.setLevel(level)
        aca.setLevel(aca_level)
    assert "event=before" in (tmp_path / "agent.log.1").read_text()
    assert "event=after" in path.read_text() and "event=before" not in path.read_text()
