"""Logging set-up shared by every service: one format, Python warnings captured, no PHI in any line.

Why a record factory and not a handler filter: Celery and uvicorn install their own handlers (and
Celery re-routes stdout), so a filter on today's handlers misses tomorrow's; a record factory sees
every record of the process, whichever handler ends up writing it. Three rules:

- Python warnings (``py.warnings``): highdicom prints single-component patient names verbatim and
  pydicom's validation warnings quote raw header values; the text is withheld, the category and
  the place that warned are kept, so a developer can still find it;
- records of the ``pydicom`` and ``highdicom`` loggers: same, for the same reason;
- every other record (and its traceback) has the patient names, IDs and accession numbers this
  process has read (``remember_phi``, called where DICOM headers are parsed) replaced.

Lives in ``config`` because every service may import it and it imports nothing of ours.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections import OrderedDict
from typing import IO, Any

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "[redacted]"
_WITHHELD_LOGGERS = ("pydicom", "highdicom")
_WARNING_HEAD = re.compile(r"^(?P<where>.*?:\d+): (?P<category>\w+): ", re.DOTALL)
_MIN_LENGTH = 3  # shorter values ("1", "F") would blank out unrelated text
_MAX_REMEMBERED = 2048


class _PhiValues:
    """The most recently seen patient identifiers of this process (bounded, thread-safe)."""

    def __init__(self) -> None:
        self._values: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self._pattern: re.Pattern[str] | None = None  # rebuilt after a new value arrives

    def add(self, *values: object) -> None:
        with self._lock:
            for value in values:
                for text in _variants(value):
                    if text not in self._values:
                        self._pattern = None
                    self._values[text] = None
                    self._values.move_to_end(text)
            while len(self._values) > _MAX_REMEMBERED:
                self._values.popitem(last=False)
                self._pattern = None

    def scrub(self, text: str) -> str:
        with self._lock:
            if not self._values:
                return text
            if self._pattern is None:
                # Longest first ("DOE^JANE" before "DOE"); not inside a longer word or number.
                alternatives = "|".join(re.escape(v) for v in sorted(self._values, key=len, reverse=True))
                self._pattern = re.compile(rf"(?<![0-9A-Za-z])(?:{alternatives})(?![0-9A-Za-z])")
            pattern = self._pattern
        return pattern.sub(REDACTED, text)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._pattern = None


def _variants(value: object) -> list[str]:
    """A value as it may be printed: whole, stripped, and for person names each component."""
    if value is None:
        return []
    text = str(value).replace("\x00", "").strip()
    out = {text}
    if "^" in text or "=" in text:
        out.update(part.strip() for part in re.split(r"[\^=]", text))
        out.add(text.replace("^", " ").strip())
    return [v for v in out if len(v) >= _MIN_LENGTH]


PHI = _PhiValues()


def remember_phi(*values: object) -> None:
    """Values that must never reach a log line (patient name, patient ID, accession number)."""
    PHI.add(*values)


def redact(record: logging.LogRecord) -> logging.LogRecord:
    """Rewrite one record in place as described in the module docstring."""
    if record.name == "py.warnings":
        text = str(record.args[0]) if isinstance(record.args, tuple) and record.args else str(record.msg)
        head = _WARNING_HEAD.match(text)
        where, category = (head["where"], head["category"]) if head else ("?", "Warning")
        record.msg = f"{where}: {category} (warning text withheld: may contain patient data)"
        record.args = None
        return record
    if record.name.split(".", 1)[0] in _WITHHELD_LOGGERS:
        record.msg = f"{record.levelname.lower()} at {record.module}:{record.lineno} (text withheld: may contain patient data)"
        record.args = None
        record.exc_info, record.exc_text = None, None
        return record
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a broken format is logging's to report, unchanged
        return record
    scrubbed = PHI.scrub(message)
    if scrubbed != message:
        record.msg, record.args = scrubbed, None
    if record.exc_info and not record.exc_text:
        record.exc_text = PHI.scrub(logging.Formatter().formatException(record.exc_info))
    return record


_installed: tuple[Any, Any] | None = None  # (our factory, the one it wraps)


def install_phi_guard() -> None:
    """Capture warnings into logging and redact every record of this process (idempotent)."""
    global _installed
    logging.captureWarnings(True)
    current = logging.getLogRecordFactory()
    if _installed is not None and current is _installed[0]:
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return redact(current(*args, **kwargs))

    _installed = (factory, current)
    logging.setLogRecordFactory(factory)


def uninstall_phi_guard() -> None:
    """Undo install_phi_guard (tests)."""
    global _installed
    logging.captureWarnings(False)
    if _installed is not None and logging.getLogRecordFactory() is _installed[0]:
        logging.setLogRecordFactory(_installed[1])
    _installed = None


def configure_logging(level: int = logging.INFO, stream: IO[str] | None = None) -> None:
    """What every ``sonopacs`` service calls first: the format, the level, the PHI guard."""
    logging.basicConfig(level=level, format=FORMAT, stream=stream or sys.stderr)
    install_phi_guard()
