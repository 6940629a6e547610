"""Embeddings through the real `openai` SDK, its errors turned into ours, paced by the API's headers.

The SDK retries 429, 5xx, timeouts and connection errors itself (OPENAI_MAX_RETRIES
times, honouring `retry-after-ms`). What still fails after that becomes:
- AuthFailed for 401/403 (the run must stop: every file would fail the same way);
- ApiRejected for 400 (this input is refused for good: the file fails);
- ApiUnavailable for the rest (the file goes back to pending and is tried later).

Pacing: the API's `x-ratelimit-*` headers tell the per-minute limits and what
remains; requests are held back to stay under them (see Pacer) instead of sent
to collect a 429 (rejected requests count against the limit too).
"""
from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from pathlib import Path

import openai

from ingestion.errors import ApiRejected, ApiUnavailable, AuthFailed, ConfigError
from ingestion.settings import Config
from ingestion.statefile import locked

log = logging.getLogger(__name__)

class Pacer:
    """A token bucket for the API's per-minute limits, shared by every process on this machine.

    It learns the limits from `x-ratelimit-limit-*` and holds a burst of 2% of the
    limit (or one request, if larger), refilling at (limit - burst) per minute, so
    no 60-second window ever carries more than the limit; `x-ratelimit-remaining-*` (which counts other users of the
    key too) can only lower what it thinks is left. The bucket lives in a small
    JSON file under a lock, because each file is ingested by a new process and
    several workers may share one key. Until a first answer brings the headers,
    nothing is held back; what was sent before then is counted as just spent.
    """

    BURST = 0.02

    @staticmethod
    def rate(bucket: dict) -> float:
        """Refill per second: what a minute allows, less the burst the bucket can hold."""
        return max(bucket["limit"] - bucket["capacity"], bucket["limit"] * 0.05) / 60

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        self._in_flight = 0

    def _update(self, change) -> float:
        """Apply change(state, now) to the shared state; returns seconds to wait (0: go)."""
        with self._lock:
            if self.path is None:
                return 0.0
            with locked(self.path.with_suffix(".lock")):
                try:
                    state = json.loads(self.path.read_text())
                except (OSError, ValueError):
                    state = {}
                now = time.time()
                for kind in ("tokens", "requests"):
                    b = state.get(kind)
                    if b:
                        rate = self.rate(b)
                        b["level"] = min(b["capacity"], b["level"] + (now - b["at"]) * rate)
                        b["at"] = now
                wait = change(state, now)
                tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(state))
                os.replace(tmp, self.path)
                return wait

    def before(self, tokens: int) -> None:
        def take(state, now):
            needs = {"tokens": tokens, "requests": 1}
            waits = []
            for kind, n in needs.items():
                b = state.get(kind)
                if b and b["level"] < min(n, b["capacity"]):
                    waits.append((min(n, b["capacity"]) - b["level"]) / self.rate(b))
            if waits:
                return max(waits)
            for kind, n in needs.items():
                if state.get(kind):
                    state[kind]["level"] -= n
            return 0.0

        while (wait := self._update(take)) > 0:
            log.debug("pacing: waiting %.2fs to stay under the rate limit", wait)
            time.sleep(min(wait, 5.0))
        with self._lock:
            self._in_flight += tokens

    def after(self, headers, tokens: int) -> None:
        with self._lock:
            self._in_flight -= tokens
            others = self._in_flight  # sent by this process, not yet counted in these headers

        def learn(state, now):
            for kind, size in (("tokens", tokens), ("requests", 1)):
                try:
                    limit = int(headers.get(f"x-ratelimit-limit-{kind}"))
                    remaining = int(headers.get(f"x-ratelimit-remaining-{kind}"))
                except (TypeError, ValueError):
                    continue
                b = state.get(kind)
                capacity = max(limit * self.BURST, size)
                in_flight = others if kind == "tokens" else 0
                if not b or b["limit"] != limit:
                    # what the window holds, and what is still on its way, was sent just now,
                    # unpaced: draw it from the bucket
                    level = capacity - (limit - remaining) - in_flight
                    b = state[kind] = {"limit": limit, "capacity": capacity, "level": level, "at": now}
                b["capacity"] = max(b["capacity"], capacity)
                b["level"] = min(b["level"], remaining - in_flight)
            return 0.0

        self._update(learn)

    def forget(self, tokens: int) -> None:
        """A request that got no answer: it is no longer on its way."""
        with self._lock:
            self._in_flight -= tokens


class Embedder:
    """Embeds lists of texts; safe to call from several threads at once."""

    def __init__(self, cfg: Config):
        key = openai_api_key()
        self.model = cfg.embedding_model
        self.dimensions = cfg.embedding_dimensions
        self.client = openai.OpenAI(api_key=key, max_retries=cfg.openai_max_retries, timeout=cfg.openai_timeout)
        self.pacer = Pacer(cfg.checkpoint_dir / "ratelimit.json")
        self._count_lock = threading.Lock()
        self.requests = 0
        self.tokens_sent = 0

    def embed(self, texts: list[str], tokens: int) -> list[list[float]]:
        """Vectors for texts, in order. tokens: their token count, for pacing."""
        self.pacer.before(tokens)
        try:
            raw = self._call(texts)
        except BaseException:
            self.pacer.forget(tokens)
            raise
        self.pacer.after(raw.headers, tokens)
        response = raw.parse()
        with self._count_lock:
            self.requests += 1
            self.tokens_sent += response.usage.total_tokens if response.usage else tokens
        vectors = [None] * len(texts)
        for item in response.data:
            vectors[item.index] = list(item.embedding)
        return vectors

    def _call(self, texts: list[str]):
        """One request (the SDK retries it); the SDK's errors become ours."""
        extra = {"dimensions": self.dimensions} if self.dimensions else {}
        try:
            return self.client.embeddings.with_raw_response.create(model=self.model, input=texts, **extra)
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
