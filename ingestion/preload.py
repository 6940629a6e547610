"""Imported once by the worker's fork server, so that each child starts with it all loaded.

A child forked from the server costs a fork instead of ~2.5 s of imports. Nothing
here may open a Chroma client, a socket or a thread: the server only forks.
"""
import chromadb  # noqa: F401
import openai  # noqa: F401

from ingestion import job  # noqa: F401  (and with it the whole pipeline)
from ingestion.chunking import encoding

try:
    encoding()  # the tokenizer's tables, read once
except Exception:  # the child will say so in one line
    pass
