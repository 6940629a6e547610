"""What every script shares: its parser, logging, and turning errors into one line and an exit code."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Callable

from ingestion.common import settings
from ingestion.common.errors import EXIT_BUG, EXIT_INTERRUPTED, IngestionError, exit_codes_help


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """A script's parser; its --help lists the settings it reads (from settings.SETTINGS) and the exit codes."""
    return argparse.ArgumentParser(
        prog=prog, description=description,
        epilog=settings.help_table(prog) + "\n\n" + exit_codes_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter)


class _Redact(logging.Filter):
    """Never let the API key reach a log line, whatever put it there."""

    def filter(self, record: logging.LogRecord) -> bool:
        key = settings.raw("OPENAI_API_KEY") or ""
        if len(key) >= 8:
            message = record.getMessage()
            if key in message:
                record.msg, record.args = message.replace(key, "***"), ()
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
                 "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        return json.dumps(entry, ensure_ascii=False)


def setup_logging() -> None:
    """Log lines to stderr: plain text, or JSON with LOG_FORMAT=json; level from LOG_LEVEL."""
    level = settings.raw("LOG_LEVEL").upper()  # (raw gives the default when unset)
    handler = logging.StreamHandler(sys.stderr)
    if settings.raw("LOG_FORMAT").lower() == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    handler.addFilter(_Redact())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level, logging.INFO))
    for noisy in ("httpx", "httpx2", "openai", "chromadb", "urllib3", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run(main: Callable[[], int]) -> None:
    """Call main and exit with its code; a user-caused error is one line on stderr."""
    try:
        setup_logging()
        code = main()
    except IngestionError as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        code = e.exit_code
    except BrokenPipeError:  # the reader went away (`| head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except Exception:
        logging.getLogger("ingestion").exception("unexpected error (a bug; please report it with this traceback)")
        code = EXIT_BUG
    sys.stdout.flush()
    sys.exit(code)


def redact(text: str) -> str:
    key = settings.raw("OPENAI_API_KEY") or ""
    return text.replace(key, "***") if len(key) >= 8 else text
