"""Temporary alias while the rename lands (removed before the end of this change)."""
from ingestion.atomicfile import *  # noqa: F401,F403
from ingestion.atomicfile import locked, read_json, write_atomic  # noqa: F401
