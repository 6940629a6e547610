"""Exit codes shared by every script, and the errors a user can cause.

Each error a user can cause ends in one line on stderr and one of these codes;
a traceback means a bug (exit 1). EXIT_CODES is the one table of them: the scripts'
--help, the worker's tally of file outcomes and the README's table (checked by a
test) all come from it.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExitCode:
    code: int
    outcome: str        # what happened to a file that ended with this code (the worker's tally)
    meaning: str        # one line for --help and the README
    run_stopped: bool   # the run stopped before charging anything: no file was failed, nothing was paid


EXIT_CODES = [
    ExitCode(0, "completed", "done, or nothing to do", False),
    ExitCode(1, "bug", "a bug (traceback); the file is tried again, then failed after MAX_ATTEMPTS", False),
    ExitCode(2, "stopped", "a problem of the run: setting, key missing, store or state file; "
                           "the run stopped, the file went back to pending, nothing was charged", True),
    ExitCode(3, "failed", "the file failed, reason recorded", False),
    ExitCode(4, "requeued", "embeddings API unavailable: the file went back to pending", False),
    ExitCode(5, "key refused", "the API key was refused: the run stopped, nothing was charged", True),
    ExitCode(6, "split", "out of memory: the file was split and its parts queued", False),
    ExitCode(7, "released", "interrupted (SIGTERM): the file went back to pending", False),
    ExitCode(8, "held elsewhere", "store busy, or the file is taken by another worker", False),
    ExitCode(9, "server lost", "the fork server that starts each file's process was killed again before a file "
                               "was done (out of memory?); files in flight were finished or went back to pending",
             False),
]
_BY_CODE = {e.code: e for e in EXIT_CODES}

EXIT_OK, EXIT_BUG, EXIT_CONFIG, EXIT_FILE_FAILED, EXIT_API_DOWN, EXIT_AUTH, EXIT_MEMORY, EXIT_INTERRUPTED, \
    EXIT_BUSY, EXIT_SERVER_LOST = (e.code for e in EXIT_CODES)


def outcome_name(code: int) -> str:
    known = _BY_CODE.get(code)
    return known.outcome if known else f"exit {code}"


def exit_codes_help() -> str:
    return "exit codes:\n" + "\n".join(f"  {e.code} {e.meaning}" for e in EXIT_CODES)


class IngestionError(Exception):
    """Base class: an error with a one-line message for the user and an exit code."""

    exit_code = EXIT_BUG


class ConfigError(IngestionError):
    exit_code = EXIT_CONFIG


class StateFileError(IngestionError):
    """file_queue.json or checkpoint.json cannot be read or written; says how to recover."""

    exit_code = EXIT_CONFIG


class StoreError(IngestionError):
    """The store cannot be opened, read or written (path, permission, disk full, server down,
    a collection made elsewhere or with other settings): a problem of the run, never of a file."""

    exit_code = EXIT_CONFIG


class StoreMismatch(StoreError):
    """The collection was made with other settings, or not by this project."""


class FileRejected(IngestionError):
    """The transcript itself cannot be ingested (binary, unreadable, outside the allowed folders)."""

    exit_code = EXIT_FILE_FAILED


class ApiUnavailable(IngestionError):
    """The embeddings API kept failing (429, 5xx, timeouts) after the SDK's retries."""

    exit_code = EXIT_API_DOWN


class ApiRejected(IngestionError):
    """The API refused this input for good (400): the file fails, others go on."""

    exit_code = EXIT_FILE_FAILED


class AuthFailed(IngestionError):
    exit_code = EXIT_AUTH


class OutOfMemory(IngestionError):
    exit_code = EXIT_MEMORY


class Interrupted(IngestionError):
    exit_code = EXIT_INTERRUPTED


class StoreBusy(IngestionError):
    exit_code = EXIT_BUSY


class ForkServerLost(IngestionError):
    """The worker's fork server died (killed) again before a child it started finished a file, or
    cannot be started: the run stops; the files in flight were finished or released."""

    exit_code = EXIT_SERVER_LOST


class HeldElsewhere(IngestionError):
    """Another worker (another machine, sharing the Chroma server) is ingesting this file."""

    exit_code = EXIT_BUSY
