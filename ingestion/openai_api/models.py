"""What we know of each OpenAI embeddings model: its vector size, price and tokenizer."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Model:
    dimensions: int            # default vector size
    price_per_million: float   # US dollars per 1M tokens (OpenAI's price list; the Batch API is half)
    shortenable: bool          # accepts the `dimensions` parameter


MODELS = {
    "text-embedding-3-small": Model(1536, 0.02, True),
    "text-embedding-3-large": Model(3072, 0.13, True),
    "text-embedding-ada-002": Model(1536, 0.10, False),
}
TOKENIZER = "cl100k_base"  # the tokenizer of every model above


def dimensions(model: str, requested: int | None = None) -> int | None:
    """Vector size the model returns: the requested one, else its default (None: unknown model)."""
    if requested:
        return requested
    known = MODELS.get(model)
    return known.dimensions if known else None


def cost(tokens: int, model: str) -> float | None:
    known = MODELS.get(model)
    return None if known is None else tokens / 1_000_000 * known.price_per_million
