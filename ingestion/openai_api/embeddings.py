"""Embeddings through the real `openai` SDK, its errors turned into ours, paced by the API's headers.

The SDK retries 429, 5xx, timeouts and connection errors itself (OPENAI_MAX_RETRIES
times, honouring `retry-after-ms`). What still fails after that becomes:
- AuthFailed for 401/403 (the run must stop: every file would fail the same way);
- ApiRejected for 400 (this input is refused for good: the file fails);
- ApiUnavailable for the rest (the file goes back to pending and is tried later).

Pacing: every attempt (the SDK's retries too) is held back until the API's
per-minute limits have room for it, as told by whatever `x-ratelimit-*` headers
come back, or learned from 429s when none do (see ingestion/openai_api/pacing.py), instead
of sent to collect a 429 (rejected requests count against the limit too).
"""
from __future__ import annotations

import base64
import logging
import os
import re
import ssl
import sys
import threading

import numpy as np
import openai

from ingestion.common.errors import ApiRejected, ApiUnavailable, AuthFailed, ConfigError
from ingestion.common.settings import Config, api_key
from ingestion.openai_api.pacing import Pacer

log = logging.getLogger(__name__)

class Embedder:
    """Embeds lists of texts; safe to call from several threads at once."""

    def __init__(self, cfg: Config):
        key = api_key()
        self.model = cfg.embedding_model
        self.dimensions = cfg.embedding_dimensions
        self.pacer = Pacer(cfg.checkpoint_dir / "ratelimit.json", cfg.rate_limit_window)
        self.client = openai.OpenAI(api_key=key, max_retries=cfg.openai_max_retries, timeout=cfg.openai_timeout,
                                    http_client=openai.DefaultHttpxClient(event_hooks=self.pacer.event_hooks(),
                                                                          verify=tls_context()))
        self._count_lock = threading.Lock()
        self.requests = 0
        self.tokens_sent = 0

    def embed(self, texts: list[str], tokens: int) -> list[np.ndarray]:
        """Vectors for texts (float32, as Chroma stores them), in order. tokens: their token count, for pacing."""
        with self.pacer.request(tokens):  # each attempt is paced by the client's event hooks
            raw = self._call(texts)
        response = raw.parse()
        with self._count_lock:
            self.requests += 1
            self.tokens_sent += response.usage.total_tokens if response.usage else tokens
        vectors = [None] * len(texts)
        for item in response.data:
            vectors[item.index] = _vector(item.embedding)
        return vectors

    def check_access(self) -> None:
        """Before any file is claimed: is the key accepted, does the model exist? One free request
        (GET /v1/models/MODEL). Only clear answers stop the run (401; 404 model_not_found; no
        connection); anything else (a gateway without that route, a key not allowed to list
        models, a 5xx) is left for the first embeddings request to tell."""
        try:
            self.client.with_options(max_retries=1).models.retrieve(self.model)
        except openai.AuthenticationError as e:
            raise AuthFailed(f"the embeddings API refused the key (HTTP {e.status_code}): "
                             "check OPENAI_API_KEY (and OPENAI_BASE_URL)") from None
        except openai.NotFoundError as e:
            if e.code == "model_not_found":
                raise ConfigError(f"the embeddings API does not know the model {self.model!r}: "
                                  "check EMBEDDING_MODEL") from None
        except openai.APIConnectionError as e:
            raise ApiUnavailable(self._unreachable(e) + "; nothing was claimed") from None
        except openai.APIError:
            pass

    def _call(self, texts: list[str]):
        """One request (the SDK retries it); the SDK's errors become ours."""
        extra = {"dimensions": self.dimensions} if self.dimensions else {}
        try:  # base64, asked for by name: the SDK then leaves it to us (no Python float made per number)
            return self.client.embeddings.with_raw_response.create(model=self.model, input=texts,
                                                                   encoding_format="base64", **extra)
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
            raise ApiUnavailable(self._unreachable(e, f" after {self.client.max_retries} retries")) from None

    def _unreachable(self, error: openai.APIConnectionError, after: str = "") -> str:
        """The API gave no answer: where it was asked, the setting that says where, and what to check.
        after: said after what failed (how many retries)."""
        where = os.environ.get("OPENAI_BASE_URL")  # what the SDK reads (settings put .env's values there)
        if where is not None and not where.strip():
            return ("the embeddings API could not be reached: OPENAI_BASE_URL is set but empty, which leaves the "
                    "OpenAI SDK no address: remove it (OpenAI's own API) or set it to the server's URL")
        if where:
            address = f"{self.client.base_url} (OPENAI_BASE_URL)"
            check = "check that address, that a server is running there, and the network or proxy (HTTPS_PROXY)"
        else:
            address = f"{self.client.base_url} (OpenAI's own: OPENAI_BASE_URL is unset)"
            check = "check the network or proxy (HTTPS_PROXY), or set OPENAI_BASE_URL to another server"
        if isinstance(error, openai.APITimeoutError):
            return (f"the embeddings API timed out (OPENAI_TIMEOUT={self.client.timeout:g}s) at {address}{after}: "
                    f"{check}, or raise OPENAI_TIMEOUT")
        return f"the embeddings API could not be reached at {address}{after}: {check}"


def _vector(embedding) -> np.ndarray:
    """base64 of little-endian float32s, as asked; a list of numbers from a server that ignores the format."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)


_TLS = None


def tls_context() -> ssl.SSLContext:
    """The TLS settings of every request (certifi's CA bundle, as httpx uses by default), made
    once: building them costs ~50 ms, which a worker's child would otherwise pay per file."""
    global _TLS
    if _TLS is None:
        import certifi

        _TLS = ssl.create_default_context(cafile=certifi.where())
    return _TLS


def warm_up() -> None:
    """One embeddings request through the SDK, answered in memory (no socket): the fork server calls
    it so that what the SDK builds on its first request (its platform headers, which run `uname -p`
    in a subprocess; the response models' validators) is built once, not in every child (~20 ms each)."""
    client_class = openai.DefaultHttpxClient
    httpx = sys.modules[client_class.__mro__[1].__module__.split(".")[0]]  # httpx, or httpx2 in newer SDKs
    vector = base64.b64encode(np.zeros(4, dtype="<f4").tobytes()).decode()

    def answer(request):
        return httpx.Response(200, json={"object": "list", "model": "warm-up", "usage": {"prompt_tokens": 1,
                                         "total_tokens": 1}, "data": [{"object": "embedding", "index": 0,
                                                                       "embedding": vector}]})

    client = openai.OpenAI(api_key="warm-up", base_url="http://warm-up.invalid/v1", max_retries=0,
                           http_client=client_class(transport=httpx.MockTransport(answer), verify=tls_context()))
    raw = client.embeddings.with_raw_response.create(model="warm-up", input=["warm-up"], encoding_format="base64")
    _vector(raw.parse().data[0].embedding)
    client.close()


def _message(error: openai.APIStatusError) -> str:
    """The API's own message, one line, short, without anything that looks like a key."""
    body = error.body if isinstance(error.body, dict) else {}
    text = body.get("message") or str(error)
    text = re.sub(r"sk-[A-Za-z0-9_\-*]+", "sk-***", str(text))
    return " ".join(text.split())[:300]
