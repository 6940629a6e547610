"""Embeddings through the real `openai` SDK, its errors turned into ours, paced by the API's headers.

The SDK retries 429, 5xx, timeouts and connection errors itself (OPENAI_MAX_RETRIES
times, honouring `retry-after-ms`). What still fails after that becomes:
- AuthFailed for 401/403 (the run must stop: every file would fail the same way);
- ApiRejected for 400 (this input is refused for good: the file fails);
- ApiUnavailable for the rest (the file goes back to pending and is tried later).

Pacing: every answer carries `x-ratelimit-remaining-tokens` and
`x-ratelimit-reset-tokens`; when the next request would not fit in what remains,
we wait for the reset instead of sending it and collecting a 429 (rejected
requests count against the limit too).
"""
from __future__ import annotations

import logging
import re
import threading
import time

import openai

from ingestion.errors import ApiRejected, ApiUnavailable, AuthFailed, ConfigError
from ingestion.settings import Config

log = logging.getLogger(__name__)

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$")


def parse_duration(text: str | None) -> float:
    """Seconds in an x-ratelimit-reset-* value such as '1s', '6m0s', '644ms'; 0 when absent."""
    m = _DURATION.match((text or "").strip())
    if not text or not m:
        return 0.0
    h, mi, s, ms = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s + ms / 1000


class Pacer:
    """Holds requests back while the API's token or request budget is spent."""

    def __init__(self):
        self._lock = threading.Lock()
        self._remaining_tokens: int | None = None
        self._remaining_requests: int | None = None
        self._reset_at = 0.0

    def before(self, tokens: int) -> None:
        while True:
            with self._lock:
                now = time.monotonic()
                if now >= self._reset_at:
                    return
                short_tokens = self._remaining_tokens is not None and self._remaining_tokens < tokens
                short_requests = self._remaining_requests is not None and self._remaining_requests < 1
                if not (short_tokens or short_requests):
                    if self._remaining_tokens is not None:
                        self._remaining_tokens -= tokens
                    if self._remaining_requests is not None:
                        self._remaining_requests -= 1
                    return
                wait = self._reset_at - now
            log.debug("pacing: waiting %.2fs for the rate limit to reset", wait)
            time.sleep(min(wait, 5.0))

    def after(self, headers) -> None:
        try:
            tokens = headers.get("x-ratelimit-remaining-tokens")
            requests = headers.get("x-ratelimit-remaining-requests")
            reset = max(parse_duration(headers.get("x-ratelimit-reset-tokens")),
                        parse_duration(headers.get("x-ratelimit-reset-requests")))
        except (TypeError, ValueError):
            return
        with self._lock:
            self._remaining_tokens = int(tokens) if tokens is not None else None
            self._remaining_requests = int(requests) if requests is not None else None
            self._reset_at = time.monotonic() + reset


class Embedder:
    """Embeds lists of texts; safe to call from several threads at once."""

    def __init__(self, cfg: Config):
        key = openai_api_key()
        self.model = cfg.embedding_model
        self.dimensions = cfg.embedding_dimensions
        self.client = openai.OpenAI(api_key=key, max_retries=cfg.openai_max_retries, timeout=cfg.openai_timeout)
        self.pacer = Pacer()
        self._count_lock = threading.Lock()
        self.requests = 0
        self.tokens_sent = 0

    def embed(self, texts: list[str], tokens: int) -> list[list[float]]:
        """Vectors for texts, in order. tokens: their token count, for pacing."""
        self.pacer.before(tokens)
        extra = {"dimensions": self.dimensions} if self.dimensions else {}
        try:
            raw = self.client.embeddings.with_raw_response.create(model=self.model, input=texts, **extra)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            raise AuthFailed(f"the embeddings API refused the key (HTTP {e.status_code}): "
                             "check OPENAI_API_KEY (and OPENAI_BASE_URL)") from None
        except openai.NotFoundError:
            raise ConfigError(f"the embeddings API does not know the model {self.model!r}: "
                              "check EMBEDDING_MODEL") from None
        except openai.BadRequestError as e:
            raise ApiRejected(f"the embeddings API rejected the input (HTTP 400): {_message(e)}") from None
        except openai.APIStatusError as e:
            raise ApiUnavailable(f"the embeddings API kept failing (HTTP {e.status_code}) after "
                                 f"{self.client.max_retries} retries: {_message(e)}") from None
        except openai.APIConnectionError as e:
            kind = "timed out" if isinstance(e, openai.APITimeoutError) else "could not be reached"
            raise ApiUnavailable(f"the embeddings API {kind} after {self.client.max_retries} retries") from None
        self.pacer.after(raw.headers)
        response = raw.parse()
        with self._count_lock:
            self.requests += 1
            self.tokens_sent += response.usage.total_tokens if response.usage else tokens
        vectors = [None] * len(texts)
        for item in response.data:
            vectors[item.index] = list(item.embedding)
        return vectors


def openai_api_key() -> str:
    """The key, or a ConfigError saying where it belongs."""
    import os

    from ingestion.settings import load_dotenv_once

    load_dotenv_once()
    key = os.environ.get("OPENAI_API_KEY", "").strip()
    if not key:
        raise ConfigError("OPENAI_API_KEY is not set: put it in the environment or in .env "
                          "(never in the queue, the image or the code)")
    return key


def _message(error: openai.APIStatusError) -> str:
    """The API's own message, one line, short, without anything that looks like a key."""
    body = error.body if isinstance(error.body, dict) else {}
    text = body.get("message") or str(error)
    text = re.sub(r"sk-[A-Za-z0-9_\-*]+", "sk-***", str(text))
    return " ".join(text.split())[:300]
