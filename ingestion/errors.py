"""Exit codes shared by every script, and the errors a user can cause.

Each error a user can cause ends in one line on stderr and one of these codes;
a traceback means a bug (exit 1).
"""

EXIT_OK = 0            # done (also: nothing to do, e.g. an empty queue)
EXIT_BUG = 1           # unexpected error: a bug, with a traceback
EXIT_CONFIG = 2        # bad setting or flag, missing key/folder, unreadable state file
EXIT_FILE_FAILED = 3   # ingest_one_file: the file was marked failed (reason recorded)
EXIT_API_DOWN = 4      # the embeddings API kept failing; the file went back to pending
EXIT_AUTH = 5          # the API key was refused (401/403); the run stops at once
EXIT_MEMORY = 6        # out of memory; the file was split and its parts queued
EXIT_INTERRUPTED = 7   # SIGTERM/SIGINT; the current file was released to pending
EXIT_BUSY = 8          # another process holds the lock (optimizer, embedded store)

EXIT_CODES_HELP = """exit codes:
  0 done, or nothing to do        4 embeddings API unavailable, file requeued
  1 bug (traceback)               5 API key refused: run stopped
  2 configuration or state error  6 out of memory: file split and requeued
  3 file failed, reason recorded  7 interrupted (SIGTERM): file released
                                  8 store busy, or the file is taken by another worker"""


class IngestionError(Exception):
    """Base class: an error with a one-line message for the user and an exit code."""

    exit_code = EXIT_BUG


class ConfigError(IngestionError):
    exit_code = EXIT_CONFIG


class StateFileError(IngestionError):
    """file_queue.json or checkpoint.json cannot be read; says how to recover."""

    exit_code = EXIT_CONFIG


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


class HeldElsewhere(IngestionError):
    """Another worker (another machine, sharing the Chroma server) is ingesting this file."""

    exit_code = EXIT_BUSY


class StoreMismatch(IngestionError):
    """The collection was built with another model or dimension count."""

    exit_code = EXIT_CONFIG
