"""Imported once by the worker's fork server, so that each child starts with it all loaded.

A child forked from the server costs a fork instead of ~2.5 s of imports, as long as
the modules the worker's script imports are here too (see below). Nothing
here may open a socket or a thread: the server only forks. Children do not open Chroma
(they use the worker's store, see lent_store), so chromadb is not imported here. Besides
the packages, the modules they import lazily on first use (the HTTP stack of the openai
client) are imported here, the tokenizer's tables read, and the SDK's first request built
(answered in memory, embeddings.warm_up).
"""
import importlib

import openai  # noqa: F401

# each child re-runs the worker's script as __mp_main__ (multiprocessing's spawn.prepare): what it imports
# must be here already, or every child imports it again (~25 ms and ~1,000 page faults a child)
from ingestion.common import cli  # noqa: F401
from ingestion.openai_api import embeddings  # noqa: F401
from ingestion.openai_api.embeddings import tls_context, warm_up
from ingestion.run import job  # noqa: F401  (and with it the whole pipeline)
from ingestion.run import children, worker  # noqa: F401
from ingestion.storage import lent_store  # noqa: F401
from ingestion.text.chunking import encoding
from ingestion.tracking import status  # noqa: F401

LAZY = ["openai.resources.embeddings", "openai.lib._parsing._embeddings", "httpcore2", "h11",
        "anyio.streams.tls", "truststore", "numpy", "dotenv", "ctypes", "encodings.idna", "ingestion.text.page_layout"]

for name in LAZY:
    try:
        importlib.import_module(name)
    except ImportError:  # another version of a package: the child imports what it needs
        pass
tls_context()  # the CA bundle, read once
try:
    warm_up()  # the SDK's first request, built once (answered in memory)
except Exception:  # another SDK version: each child builds it on its first request
    pass
try:
    encoding()  # the tokenizer's tables, read once
except Exception:  # the child will say so in one line
    pass

import gc  # noqa: E402

# what is loaded now lives as long as the server: keep it out of the collector's reach, so that a
# child's collections neither walk it nor write to (and so copy) its pages
gc.freeze()
