"""Everything that can be known before the first token is paid: key, tokenizer, model, transcripts
folder, state files, store reachable and made with these settings. A failure here stops the run with
one line and charges no file. Every script calls check_ready first; it loads neither the chunker nor
the OpenAI client until it needs them, so the queue's own scripts stay light.
"""
from __future__ import annotations

from ingestion.common.errors import ConfigError
from ingestion.common.settings import Config, api_key
from ingestion.storage.store import check_store
from ingestion.tracking import state


def check_ready(cfg: Config, need_key: bool = True, store: str | None = "write", api: bool = True) -> None:
    """Fail fast, before touching the queue or paying a token, when the run cannot work.
    api: with need_key, check what embedding needs (check_embedding: tokenizer, key, model)."""
    if not cfg.transcripts_dir.is_dir():
        raise ConfigError(f"TRANSCRIPTS_DIR {cfg.transcripts_dir} is not a folder: set TRANSCRIPTS_DIR "
                          "to the folder holding the transcripts")
    if need_key:
        api_key()
    state.read(cfg)  # state files usable (CHECKPOINT_DIR a folder, files readable)
    if need_key and api:
        check_embedding(cfg)
    if store:
        check_store(cfg, store)


def check_embedding(cfg: Config) -> None:
    """What embedding a file needs, at no cost: the tokenizer's file there, the key accepted and the
    model known (asked of the API: Embedder.check_access)."""
    from ingestion.openai_api.embeddings import Embedder
    from ingestion.text.chunking import encoding

    encoding()
    Embedder(cfg).check_access()


# ---- a worker's child ------------------------------------------------------------------
