#!/usr/bin/env python3
"""Local OpenAI-compatible embeddings server.

The real OpenAI API is not reachable from the build/test machines, so this
server stands in for ``POST /v1/embeddings``: same request and response
shapes, same validation limits and error bodies, rate limiting with the real
headers, and injectable faults (latency, 5xx/429, dropped connections, hangs)
so that retry and throttling code can be exercised with the real ``openai``
SDK. ``GET /v1/models`` and ``GET /v1/models/{model}`` answer for the
embedding models it knows, with the same auth and 404 ``model_not_found``.

Vectors are deterministic "hashed words": texts that share words are close in
cosine distance, the same text always gives the same vector.

Standard library plus ``tiktoken`` (for token counting, cl100k_base).

Run: ``python3 local_openai/server.py --port 8089 [--api-key K] [--tpm N] ...``

Control endpoints (no auth):

- ``GET /health`` -> "ok"
- ``GET /_stats`` -> requests, ok_requests, tokens, inputs, status_counts,
  max_concurrent, in_flight, connection_resets, model_requests (requests,
  ok_requests, tokens, inputs, in_flight count /v1/embeddings only; model
  lookups count in model_requests and status_counts)
- ``POST /_reset`` zeroes stats and rate windows, clears fail_next
- ``GET /_faults`` shows, ``POST /_faults`` merges settings: latency_ms,
  latency_per_1k_tokens_ms, fault_rate, fault_statuses, fault_retry_after_ms,
  auth_always_fail, seed, rpm, tpm, window_s (the rate-limit window, 60 s
  as OpenAI's; shorter for tests that must cross windows), ratelimit_headers (which x-ratelimit-*
  headers answers carry: "all" six, the default; "limit-tokens", only
  x-ratelimit-limit-tokens; "remaining", only the two remaining-* ones, as
  Azure sends; "none"), and fail_next (replaces the queue), a list
  consumed one per /v1/embeddings request, of ``{"status": 429,
  "retry_after_ms": 50}``, ``{"action": "reset"}`` (drop the connection) or
  ``{"action": "hang", "seconds": 5}`` (answer late).

Order of checks per request: fail_next, base latency, auth, validation
(400/404), rate limits (429), fault_rate draw, per-token latency, answer.
Model lookups only check auth (auth_always_fail included): no faults, latency
or rate limits.
"""

from __future__ import annotations

import argparse
import base64
import collections
import functools
import hashlib
import json
import math
import os
import random
import re
import signal
import socket
import sys
import threading
import time
import traceback
import urllib.parse
import uuid
from array import array
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODELS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}
FIXED_DIMENSION_MODELS = {"text-embedding-ada-002"}
# (created, owned_by) as GET /v1/models answers for each model.
MODEL_INFO = {
    "text-embedding-3-small": (1705948997, "system"),
    "text-embedding-3-large": (1705953180, "system"),
    "text-embedding-ada-002": (1671217299, "openai-internal"),
}

MAX_INPUTS = 2048
MAX_INPUT_TOKENS = 8192
MAX_REQUEST_TOKENS = 300_000
WINDOW_S = 60.0
# Limits reported in headers when the server runs without --rpm/--tpm.
UNLIMITED_RPM = 10_000
UNLIMITED_TPM = 10_000_000
ORGANIZATION = "org-local"
DEFAULT_PORT = 8089

INVALID_INPUT_MESSAGE = (
    "'$.input' is invalid. Please check the API reference: "
    "https://platform.openai.com/docs/api-reference."
)
MALFORMED_JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you "
    "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
    "but what was sent was not valid JSON. If you have trouble figuring out how to fix "
    "this, please contact us through our help center at help.openai.com.)"
)
MISSING_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an "
    "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or "
    "as the password field (with blank username) if you're accessing the API from your "
    "browser and are prompted for a username and password. You can obtain an API key "
    "from https://platform.openai.com/account/api-keys."
)
RATE_LIMIT_URL = "https://platform.openai.com/account/rate-limits"
KNOWN_BODY_FIELDS = {"input", "model", "encoding_format", "dimensions", "user"}

# Fault settings that can be given at start and changed through POST /_faults.
DEFAULT_FAULTS = {
    "latency_ms": 0.0,
    "latency_per_1k_tokens_ms": 0.0,
    "fault_rate": 0.0,
    "fault_statuses": [500, 503],
    "fault_retry_after_ms": 200,
    "auth_always_fail": False,
    "seed": 0,
    "ratelimit_headers": "all",
}
# Which x-ratelimit-* headers answers carry (ratelimit_headers); None: all six.
RATELIMIT_HEADER_SETS = {
    "all": None,
    "limit-tokens": ("x-ratelimit-limit-tokens",),
    "remaining": ("x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens"),
    "none": (),
}


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


class ApiError(Exception):
    """An error answered with the OpenAI error body shape."""

    def __init__(self, status, message, type="invalid_request_error", param=None,
                 code=None, headers=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})
        self.counted = False  # already recorded in the RPM window by the limiter

    def body(self):
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}


def mask_key(key):
    """Mask an API key like the real API: at most the first 3 and last 4 chars."""
    if len(key) < 12:  # too short to reveal anything safely
        return "*" * max(3, len(key))
    return key[:3] + "*" * min(len(key) - 7, 40) + key[-4:]


def invalid_key_error(key):
    return ApiError(
        401,
        f"Incorrect API key provided: {mask_key(key)}. You can find your API key at "
        "https://platform.openai.com/account/api-keys.",
        code="invalid_api_key",
    )


def model_not_found(model):
    return ApiError(404, f"The model `{model}` does not exist or you do not have access "
                         "to it.", code="model_not_found")


def model_object(model):
    """A model as GET /v1/models answers it, or the API's 404 for an unknown one."""
    if model not in MODELS:
        raise model_not_found(model)
    created, owned_by = MODEL_INFO[model]
    return {"id": model, "object": "model", "created": created, "owned_by": owned_by}


def format_duration(seconds):
    """Format a wait like the real rate-limit headers: '20ms', '1s', '8.64s', '6m0s'."""
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    out = f"{hours}h" if hours else ""
    if hours or minutes:
        out += f"{minutes}m"
    return f"{out}{secs}s"


def retry_headers(wait_s):
    """retry-after-ms (exact, rounded up) and retry-after (whole seconds, rounded up)."""
    ms = max(1, math.ceil(wait_s * 1000))
    return {"retry-after-ms": str(ms), "retry-after": str(math.ceil(ms / 1000))}


def injected_error(status, model, retry_after_ms=None, key=""):
    """The error answered for a fault chosen by fail_next or fault_rate."""
    headers = retry_headers(retry_after_ms / 1000) if retry_after_ms else {}
    if status == 401:
        err = invalid_key_error(key or "sk-injected-fault")
    elif status == 429:
        wait = format_duration((retry_after_ms or 0) / 1000)
        err = ApiError(
            429,
            f"Rate limit reached for {model} in organization {ORGANIZATION} on requests "
            f"per min (RPM): Limit 1, Used 1, Requested 1. Please try again in {wait}. "
            f"Visit {RATE_LIMIT_URL} to learn more. (injected fault)",
            type="requests", code="rate_limit_exceeded")
    elif status == 500:
        err = ApiError(500, "The server had an error while processing your request. "
                            "Sorry about that!", type="server_error")
    elif status == 503:
        err = ApiError(503, "The engine is currently overloaded, please try again later",
                       type="server_error")
    else:
        err = ApiError(status, f"Injected fault (HTTP {status}).",
                       type="server_error" if status >= 500 else "invalid_request_error")
    err.headers.update(headers)
    return err


# --------------------------------------------------------------------------
# Tokens and vectors
# --------------------------------------------------------------------------

_encoding = None
_encoding_lock = threading.Lock()


def get_encoding():
    """cl100k_base, loaded once (tiktoken needs TIKTOKEN_CACHE_DIR offline)."""
    global _encoding
    with _encoding_lock:
        if _encoding is None:
            import tiktoken

            _encoding = tiktoken.get_encoding("cl100k_base")
        return _encoding


def count_tokens(item):
    """Token count of one input: a text or a list of token ids."""
    if isinstance(item, str):
        return len(get_encoding().encode_ordinary(item))
    return len(item)


_WORD_RE = re.compile(r"\w+")


def _hash(model, data, size=8):
    # blake2b keyed by the model: stable across runs and processes (unlike
    # hash()), and each model gets its own vector space like real models do.
    return hashlib.blake2b(data, digest_size=size, key=model.encode()[:64]).digest()


def _feature(model, data, weight, size):
    """One hashed feature: (index in [0, size), signed weight)."""
    h = int.from_bytes(_hash(model, data), "little")
    return h % size, (weight if h >> 63 else -weight)


def _scales(dims):
    """Prefix sizes a word is hashed into: dims, dims/2, ... down to 16."""
    sizes = []
    while dims >= 16 and len(sizes) < 8:
        sizes.append(dims)
        dims //= 2
    return sizes


@functools.lru_cache(maxsize=50_000)
def _trigram_feature(model, trigram):
    return _feature(model, b"t:" + trigram.encode("utf-8", "surrogatepass"), 1.0, MODELS[model])


@functools.lru_cache(maxsize=100_000)
def _word_features(model, word):
    """Features of one lowercase word, cached because words repeat a lot.

    The word itself is hashed at several scales (full size, half, quarter...
    down to 16) so that truncating with `dimensions` still keeps every word
    in the prefix, like Matryoshka embeddings. Character trigrams add a
    weaker signal so that related word forms ("embed", "embedding") are close.
    """
    sizes = _scales(MODELS[model])
    digest = _hash(model, b"w:" + word.encode("utf-8", "surrogatepass"), 64)
    weight = 1.0 / math.sqrt(len(sizes))
    feats = []
    for k, size in enumerate(sizes):  # 8 bytes of the digest per scale
        h = int.from_bytes(digest[8 * k:8 * k + 8], "little")
        feats.append((h % size, weight if h >> 63 else -weight))
    padded = f"#{word}#"
    trigrams = [padded[i:i + 3] for i in range(len(padded) - 2)]
    tri_weight = 0.5 / math.sqrt(len(trigrams))
    for t in trigrams:
        idx, sign = _trigram_feature(model, t)
        feats.append((idx, sign * tri_weight))
    return tuple(feats)


def embed_text(text, model, dimensions=None):
    """Deterministic unit vector for `text` (optionally truncated to `dimensions`)."""
    dims = MODELS[model]
    size = dimensions or dims
    vec = [0.0] * dims
    words = _WORD_RE.findall(text.lower())
    # Sub-linear term frequency so repeated filler words do not dominate.
    for word, n in collections.Counter(words).items():
        tf = 1.0 + math.log(n) if n > 1 else 1.0
        for idx, w in _word_features(model, word):
            vec[idx] += w * tf
    if size < dims:
        del vec[size:]
    norm = math.sqrt(math.fsum(v * v for v in vec))
    if norm < 1e-9 and words:
        # Tiny `dimensions` can miss every feature: hash the words straight
        # into the small space so shared words still mean nearby vectors.
        for word in words:
            idx, w = _feature(model, b"s:" + word.encode("utf-8", "surrogatepass"), 1.0, size)
            vec[idx] += w
        norm = math.sqrt(math.fsum(v * v for v in vec))
    if norm < 1e-9:
        # No words (or they cancelled out): hash the whole text.
        idx, w = _feature(model, b"x:" + text.encode("utf-8", "surrogatepass"), 1.0, size)
        vec[idx], norm = w, 1.0
    return [v / norm for v in vec]


# --------------------------------------------------------------------------
# Rate limiting
# --------------------------------------------------------------------------


class RateLimiter:
    """Sliding windows (window_s, 60 s as OpenAI's) of requests (rejected ones too) and admitted tokens."""

    def __init__(self, rpm=0, tpm=0, clock=time.monotonic, window_s=WINDOW_S):
        self.rpm = rpm
        self.tpm = tpm
        self.window_s = window_s
        self.clock = clock
        self.lock = threading.Lock()
        self.reset()

    def reset(self):
        with self.lock:
            self.requests = collections.deque()  # timestamps
            self.tokens = collections.deque()  # (timestamp, tokens)
            self.tokens_used = 0

    def _prune(self, now):
        cutoff = now - self.window_s
        while self.requests and self.requests[0] <= cutoff:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= cutoff:
            self.tokens_used -= self.tokens.popleft()[1]

    def record(self):
        """Count a request that never reached admission (400s, injected faults)."""
        with self.lock:
            now = self.clock()
            self._prune(now)
            self.requests.append(now)

    def _request_wait(self, now):
        # Time until fewer than rpm requests are in the window.
        if not self.rpm or len(self.requests) < self.rpm:
            return 0.0
        return self.requests[len(self.requests) - self.rpm] + self.window_s - now

    def _token_wait(self, tokens, now):
        # Time until enough admitted tokens leave the window for `tokens` to fit.
        if self.tokens_used + tokens <= self.tpm:
            return 0.0
        used = self.tokens_used
        for ts, n in self.tokens:
            used -= n
            if used + tokens <= self.tpm:
                return ts + self.window_s - now
        return math.inf  # unreachable: admit() rejects tokens > tpm first

    def admit(self, tokens, model):
        """Admit a request of `tokens` tokens or raise the 429 the real API would.

        Either way the request is recorded in the RPM window.
        """
        try:
            self._admit(tokens, model)
        except ApiError as e:
            e.counted = True
            raise

    def _admit(self, tokens, model):
        with self.lock:
            now = self.clock()
            self._prune(now)
            if self.rpm and len(self.requests) >= self.rpm:
                used = len(self.requests)
                self.requests.append(now)  # rejected requests count too
                wait = self._request_wait(now)
                raise ApiError(
                    429,
                    f"Rate limit reached for {model} in organization {ORGANIZATION} on "
                    f"requests per min (RPM): Limit {self.rpm}, Used {used}, Requested 1. "
                    f"Please try again in {format_duration(wait)}. Visit {RATE_LIMIT_URL} "
                    "to learn more.",
                    type="requests", code="rate_limit_exceeded", headers=retry_headers(wait))
            if self.tpm and tokens > self.tpm:
                self.requests.append(now)
                raise ApiError(
                    429,
                    f"Request too large for {model} in organization {ORGANIZATION} on "
                    f"tokens per min (TPM): Limit {self.tpm}, Requested {tokens}. The input "
                    "or output tokens must be reduced in order to run successfully. Visit "
                    f"{RATE_LIMIT_URL} to learn more.",
                    type="tokens", code="rate_limit_exceeded")
            if self.tpm and self.tokens_used + tokens > self.tpm:
                used = self.tokens_used
                self.requests.append(now)
                wait = max(self._token_wait(tokens, now), self._request_wait(now))
                raise ApiError(
                    429,
                    f"Rate limit reached for {model} in organization {ORGANIZATION} on "
                    f"tokens per min (TPM): Limit {self.tpm}, Used {used}, Requested "
                    f"{tokens}. Please try again in {format_duration(wait)}. Visit "
                    f"{RATE_LIMIT_URL} to learn more.",
                    type="tokens", code="rate_limit_exceeded", headers=retry_headers(wait))
            self.requests.append(now)
            self.tokens.append((now, tokens))
            self.tokens_used += tokens

    def headers(self):
        """x-ratelimit-* headers describing the current windows."""
        with self.lock:
            now = self.clock()
            self._prune(now)
            rpm = self.rpm or UNLIMITED_RPM
            tpm = self.tpm or UNLIMITED_TPM
            # "reset": the time until the limit is back to its initial state, as OpenAI reports it:
            # what is used, refilled at the limit per window (OpenAI's limiter refills continuously;
            # this log frees each request a whole window after it, so it is never less strict)
            reset_req = len(self.requests) / rpm * self.window_s
            reset_tok = self.tokens_used / tpm * self.window_s
            return {
                "x-ratelimit-limit-requests": str(rpm),
                "x-ratelimit-limit-tokens": str(tpm),
                "x-ratelimit-remaining-requests": str(max(0, rpm - len(self.requests))),
                "x-ratelimit-remaining-tokens": str(max(0, tpm - self.tokens_used)),
                "x-ratelimit-reset-requests": format_duration(reset_req),
                "x-ratelimit-reset-tokens": format_duration(reset_tok),
            }


# --------------------------------------------------------------------------
# Server state: faults and stats
# --------------------------------------------------------------------------


def _check_fail_next(entries):
    if not isinstance(entries, list):
        raise ValueError("fail_next must be a list")
    for e in entries:
        if not isinstance(e, dict):
            raise ValueError("fail_next entries must be objects")
        action = e.get("action")
        if action in ("reset", "hang"):
            if action == "hang" and not isinstance(e.get("seconds", 0), (int, float)):
                raise ValueError("hang needs numeric 'seconds'")
        elif action is None:
            status = e.get("status")
            if not isinstance(status, int) or not 400 <= status <= 599:
                raise ValueError("fail_next status must be an HTTP error status (400-599)")
        else:
            raise ValueError(f"unknown fail_next action {action!r}")
    return [dict(e) for e in entries]


class ServerState:
    """Everything shared between request threads, guarded by one lock."""

    def __init__(self, api_key=None, rpm=0, tpm=0, verbose=False, **faults):
        self.api_key = api_key
        self.verbose = verbose
        self.limiter = RateLimiter(rpm, tpm)
        self.lock = threading.Lock()
        self.stopping = threading.Event()  # wakes up "hang" faults on shutdown
        self.faults = dict(DEFAULT_FAULTS)
        self.fail_next = collections.deque()
        self.update_faults(faults)
        self.reset()

    def reset(self):
        with self.lock:
            self.fail_next.clear()
            self.seq = 0  # request number, seeds the per-request fault draw
            # Requests still running finish after the reset: keep them in flight.
            in_flight = getattr(self, "stats", {}).get("in_flight", 0)
            self.stats = {"requests": 0, "ok_requests": 0, "tokens": 0, "inputs": 0,
                          "status_counts": {}, "max_concurrent": in_flight,
                          "in_flight": in_flight, "connection_resets": 0,
                          "model_requests": 0}
        self.limiter.reset()

    def update_faults(self, changes):
        """Merge fault settings (validated) into the current ones."""
        changes = dict(changes)
        allowed = set(DEFAULT_FAULTS) | {"fail_next", "rpm", "tpm", "window_s"}
        unknown = set(changes) - allowed
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}")
        for name in ("latency_ms", "latency_per_1k_tokens_ms", "fault_rate",
                     "fault_retry_after_ms"):
            if name in changes:
                value = changes[name]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                    raise ValueError(f"{name} must be a non-negative number")
        if not 0 <= changes.get("fault_rate", 0) <= 1:
            raise ValueError("fault_rate must be between 0 and 1")
        if "fault_statuses" in changes:
            st = changes["fault_statuses"]
            if not isinstance(st, list) or not st or not all(isinstance(s, int) and 400 <= s <= 599 for s in st):
                raise ValueError("fault_statuses must be a non-empty list of 4xx/5xx codes")
        if "window_s" in changes and (isinstance(changes["window_s"], bool)
                                      or not isinstance(changes["window_s"], (int, float))
                                      or changes["window_s"] <= 0):
            raise ValueError("window_s must be a positive number")
        for name in ("rpm", "tpm", "seed"):
            if name in changes and (not isinstance(changes[name], int) or changes[name] < 0):
                raise ValueError(f"{name} must be a non-negative integer")
        if "ratelimit_headers" in changes and changes["ratelimit_headers"] not in RATELIMIT_HEADER_SETS:
            raise ValueError(f"ratelimit_headers must be one of {sorted(RATELIMIT_HEADER_SETS)}")
        fail_next = _check_fail_next(changes.pop("fail_next")) if "fail_next" in changes else None
        with self.lock:
            if "rpm" in changes:
                self.limiter.rpm = changes.pop("rpm")
            if "tpm" in changes:
                self.limiter.tpm = changes.pop("tpm")
            if "window_s" in changes:
                self.limiter.window_s = float(changes.pop("window_s"))
            self.faults.update(changes)
            if "auth_always_fail" in changes:
                self.faults["auth_always_fail"] = bool(changes["auth_always_fail"])
            if fail_next is not None:
                self.fail_next = collections.deque(fail_next)

    def settings(self):
        with self.lock:
            return dict(self.faults, rpm=self.limiter.rpm, tpm=self.limiter.tpm, window_s=self.limiter.window_s,
                        fail_next=list(self.fail_next))

    def begin_request(self):
        """Count an incoming /v1/embeddings request.

        Returns (request number, fail_next entry or None, snapshot of fault settings).
        """
        with self.lock:
            self.seq += 1
            s = self.stats
            s["requests"] += 1
            s["in_flight"] += 1
            s["max_concurrent"] = max(s["max_concurrent"], s["in_flight"])
            fault = self.fail_next.popleft() if self.fail_next else None
            return self.seq, fault, dict(self.faults)

    def end_request(self, status, tokens=0, inputs=0):
        with self.lock:
            s = self.stats
            s["in_flight"] -= 1
            if status == "reset":
                s["connection_resets"] += 1
                return
            self._count_status(status)
            if status == 200:
                s["ok_requests"] += 1
                s["tokens"] += tokens
                s["inputs"] += inputs

    def count_model_request(self, status):
        """Count a /v1/models request: its status only, no embeddings figures."""
        with self.lock:
            self.stats["model_requests"] += 1
            self._count_status(status)

    def _count_status(self, status):
        counts = self.stats["status_counts"]
        counts[str(status)] = counts.get(str(status), 0) + 1

    def snapshot(self):
        with self.lock:
            return json.loads(json.dumps(self.stats))


# --------------------------------------------------------------------------
# Request validation
# --------------------------------------------------------------------------


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def parse_inputs(value):
    """Normalise `input` to a list of texts / token-id lists, or raise a 400."""
    invalid = ApiError(400, INVALID_INPUT_MESSAGE)
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list) and value:
        if all(isinstance(x, str) for x in value):
            items = value
        elif all(_is_int(x) for x in value):
            items = [value]
        elif all(isinstance(x, list) and x and all(_is_int(t) for t in x) for x in value):
            items = value
        else:
            raise invalid
    else:
        raise invalid
    if len(items) > MAX_INPUTS or any(item == "" for item in items):
        raise invalid
    return items


def validate_request(body):
    """Check an embeddings request like the real API; returns the parsed pieces."""
    if not isinstance(body, dict):
        raise ApiError(400, MALFORMED_JSON_MESSAGE)
    unknown = sorted(set(body) - KNOWN_BODY_FIELDS)
    if unknown:
        raise ApiError(400, f"Unrecognized request argument supplied: {unknown[0]}")
    model = body.get("model")
    if not model:
        raise ApiError(400, "you must provide a model parameter")
    if not isinstance(model, str) or model not in MODELS:
        raise model_not_found(model)
    if "input" not in body:
        raise ApiError(400, "'input' is a required property")
    items = parse_inputs(body["input"])
    fmt = body.get("encoding_format")
    if fmt is None:
        fmt = "float"
    if fmt not in ("float", "base64"):
        raise ApiError(400, f"Invalid value for 'encoding_format' = {fmt}. Supported values "
                            "are: 'float' and 'base64'.", param="encoding_format",
                       code="invalid_value")
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if model in FIXED_DIMENSION_MODELS:
            raise ApiError(400, "This model does not support specifying dimensions.")
        if not _is_int(dimensions):
            raise ApiError(400, f"Invalid type for 'dimensions': expected an integer, but got "
                                f"{type(dimensions).__name__} instead.", param="dimensions",
                           code="invalid_type")
        if dimensions < 1:
            raise ApiError(400, f"Invalid value for 'dimensions' = {dimensions}. Must be "
                                "greater than or equal to 1.", param="dimensions",
                           code="integer_below_min_value")
        if dimensions > MODELS[model]:
            raise ApiError(400, f"Invalid value for 'dimensions' = {dimensions}. Must be less "
                                f"than or equal to {MODELS[model]}.", param="dimensions",
                           code="integer_above_max_value")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise ApiError(400, "Invalid type for 'user': expected a string.", param="user",
                       code="invalid_type")

    # Token ids must exist in the vocabulary; decode them to text for hashing,
    # so token input embeds like the equivalent text.
    enc = get_encoding()
    texts = []
    counts = []
    for item in items:
        if isinstance(item, str):
            texts.append(item)
            counts.append(len(enc.encode_ordinary(item)))
        else:
            try:
                texts.append(enc.decode(item))
            except Exception:
                raise ApiError(400, INVALID_INPUT_MESSAGE) from None
            counts.append(len(item))
    for n in counts:
        if n > MAX_INPUT_TOKENS:
            raise ApiError(
                400,
                f"This model's maximum context length is {MAX_INPUT_TOKENS} tokens, however "
                f"you requested {n} tokens ({n} in your prompt; 0 for the completion). Please "
                "reduce your prompt; or completion length.")
    total = sum(counts)
    if total > MAX_REQUEST_TOKENS:
        raise ApiError(400, f"Requested {total} tokens, max {MAX_REQUEST_TOKENS} tokens per "
                            "request", code="max_tokens_per_request")
    return model, texts, total, fmt, dimensions


# --------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive handler (the openai SDK pools connections)."""

    protocol_version = "HTTP/1.1"
    server_version = "local-openai/1.0"

    def version_string(self):
        return self.server_version

    # Quiet by default; the request line never contains the key, but we log
    # our own summary line instead (see _log).
    def log_request(self, code="-", size="-"):
        pass

    def log_message(self, format, *args):
        if self.server.state.verbose:
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")

    def _log(self, status, started, extra=""):
        if self.server.state.verbose:
            ms = (time.monotonic() - started) * 1000
            sys.stderr.write(f"{time.strftime('%H:%M:%S')} {self.command} "
                             f"{self.path.split('?')[0]} -> {status} {ms:.0f}ms{extra}\n")
            sys.stderr.flush()

    # -- plumbing ------------------------------------------------------------

    def _path(self):
        return self.path.split("?", 1)[0]

    def _read_body(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            # We cannot find the end of the body: answer and drop the connection.
            self.close_connection = True
            return None
        return self.rfile.read(length)

    def _send(self, status, payload, headers=None, content_type="application/json"):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self._status = status  # for the verbose log line
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _not_found(self):
        self._send(404, ApiError(404, f"Invalid URL ({self.command} {self._path()})").body())

    def _drop_connection(self):
        """Close the TCP connection without answering (client sees a connection error)."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.connection.close()

    # -- routes --------------------------------------------------------------

    def do_GET(self):
        started = time.monotonic()
        path = self._path()
        state = self.server.state
        if path == "/health":
            self._send(200, b"ok", content_type="text/plain")
        elif path == "/_stats":
            self._send(200, state.snapshot())
        elif path == "/_faults":
            self._send(200, state.settings())
        elif path == "/v1/models" or (path.startswith("/v1/models/") and path != "/v1/models/"):
            self._models(path)
        else:
            self._not_found()
        self._log(self._status, started)

    def do_POST(self):
        started = time.monotonic()
        path = self._path()
        raw = self._read_body()
        if path == "/v1/embeddings":
            self._embeddings(raw, started)
            return
        state = self.server.state
        if path == "/_reset":
            state.reset()
            self._send(200, {"ok": True})
        elif path == "/_faults":
            try:
                changes = json.loads(raw or b"")
                if not isinstance(changes, dict):
                    raise ValueError("expected a JSON object")
                state.update_faults(changes)
            except ValueError as e:  # includes JSONDecodeError
                self._send(400, ApiError(400, f"Invalid fault settings: {e}").body())
            else:
                self._send(200, state.settings())
        else:
            self._not_found()
        self._log(self._status, started)

    def _embeddings(self, raw, started):
        state = self.server.state
        seq, fault, faults = state.begin_request()
        status, tokens, inputs = 500, 0, 0
        counted = False
        try:
            if fault and fault.get("action") == "reset":
                status = "reset"
                self._drop_connection()
                return
            if fault and fault.get("action") == "hang":
                state.stopping.wait(float(fault.get("seconds", 30)))
            if faults["latency_ms"]:
                state.stopping.wait(faults["latency_ms"] / 1000)
            try:
                payload, tokens, inputs = self._embed(raw, seq, fault, faults)
                status = 200
                headers = {}
            except ApiError as e:
                status, payload, headers = e.status, e.body(), e.headers
            keep = RATELIMIT_HEADER_SETS[faults["ratelimit_headers"]]
            headers.update((name, value) for name, value in state.limiter.headers().items()
                           if keep is None or name in keep)
            headers.update(self._api_headers(started))
            # Counted before answering, so a client reading /_stats next sees it.
            state.end_request(status, tokens, inputs)
            counted = True
            self._send(status, payload, headers)
        finally:
            if not counted:
                state.end_request(status, tokens, inputs)
            self._log(status, started, f" inputs={inputs} tokens={tokens}")

    def _api_headers(self, started):
        return {"x-request-id": "req_" + uuid.uuid4().hex,
                "openai-processing-ms": str(int((time.monotonic() - started) * 1000)),
                "openai-organization": ORGANIZATION}

    def _models(self, path):
        """GET /v1/models or /v1/models/{model}: auth only, no faults or limits."""
        started = time.monotonic()
        state = self.server.state
        try:
            self._check_auth(state.settings())
            if path == "/v1/models":
                payload = {"object": "list", "data": [model_object(m) for m in MODELS]}
            else:
                payload = model_object(urllib.parse.unquote(path[len("/v1/models/"):]))
            status = 200
        except ApiError as e:
            status, payload = e.status, e.body()
        # Counted before answering, so a client reading /_stats next sees it.
        state.count_model_request(status)
        self._send(status, payload, self._api_headers(started))

    def _embed(self, raw, seq, fault, faults):
        """Process one embeddings request; returns (payload, tokens, inputs) or raises."""
        state = self.server.state
        admitted = False
        model = "text-embedding-3-small"
        try:
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            if isinstance(body, dict) and isinstance(body.get("model"), str):
                model = body["model"]
            if fault and "status" in fault:
                retry_ms = fault.get("retry_after_ms")
                if retry_ms is None and fault["status"] == 429:
                    retry_ms = faults["fault_retry_after_ms"]
                raise injected_error(fault["status"], model, retry_ms, self._bearer_key())
            self._check_auth(faults)
            if body is None:
                raise ApiError(400, MALFORMED_JSON_MESSAGE)
            model, texts, tokens, fmt, dimensions = validate_request(body)
            state.limiter.admit(tokens, model)
            admitted = True
            if faults["fault_rate"]:
                # One draw per request number: the same requests fail on every run.
                rng = random.Random(f"{faults['seed']}:{seq}")
                if rng.random() < faults["fault_rate"]:
                    status = rng.choice(faults["fault_statuses"])
                    raise injected_error(status, model, faults["fault_retry_after_ms"]
                                         if status == 429 else None, self._bearer_key())
            if faults["latency_per_1k_tokens_ms"]:
                state.stopping.wait(faults["latency_per_1k_tokens_ms"] * tokens / 1_000_000)
        except ApiError as e:
            # Like the real API, rejected requests still count against the RPM
            # limit; unauthenticated ones cannot be attributed to anyone.
            if not admitted and not e.counted and e.status != 401:
                state.limiter.record()
            raise

        data = []
        for i, text in enumerate(texts):
            vec = array("f", embed_text(text, model, dimensions))
            value = (base64.b64encode(vec.tobytes()).decode("ascii") if fmt == "base64"
                     else vec.tolist())
            data.append({"object": "embedding", "index": i, "embedding": value})
        payload = {"object": "list", "data": data, "model": model,
                   "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return payload, tokens, len(texts)

    def _bearer_key(self):
        header = self.headers.get("Authorization") or ""
        scheme, _, key = header.partition(" ")
        return key.strip() if scheme.lower() == "bearer" else ""

    def _check_auth(self, faults):
        key = self._bearer_key()
        if not key:
            raise ApiError(401, MISSING_KEY_MESSAGE)
        if faults["auth_always_fail"] or (self.server.state.api_key is not None
                                          and key != self.server.state.api_key):
            raise invalid_key_error(key)


class EmbeddingServer(ThreadingHTTPServer):
    """ThreadingHTTPServer carrying the shared state; quiet about client disconnects."""

    daemon_threads = True
    request_queue_size = 128  # bursts of concurrent clients must not be refused

    def __init__(self, address, state):
        self.state = state
        super().__init__(address, Handler)

    def handle_error(self, request, client_address):
        # Clients that time out or hang up are normal here (fault injection):
        # stay quiet about those, but never hide a real bug.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            if self.state.verbose:
                sys.stderr.write(f"client {client_address[0]} disconnected: {exc!r}\n")
            return
        traceback.print_exc(file=sys.stderr)


def create_server(host="127.0.0.1", port=DEFAULT_PORT, **options):
    """Build (but do not start) a server; options as for ServerState."""
    return EmbeddingServer((host, port), ServerState(**options))


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def _env(name, default):
    return os.environ.get("LOCAL_OPENAI_" + name, default)


def _statuses(text):
    try:
        codes = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("expected comma-separated status codes") from None
    if not codes or not all(400 <= c <= 599 for c in codes):
        raise argparse.ArgumentTypeError("status codes must be 4xx/5xx")
    return codes


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Local OpenAI-compatible embeddings server (POST /v1/embeddings). "
                    "Every option can also come from an env var LOCAL_OPENAI_<NAME>, "
                    "e.g. LOCAL_OPENAI_API_KEY, LOCAL_OPENAI_TPM.")
    p.add_argument("--host", default=_env("HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(_env("PORT", DEFAULT_PORT)),
                   help="0 picks a free port (default %(default)s)")
    p.add_argument("--api-key", default=_env("API_KEY", None),
                   help="only accept this key (default: accept any non-empty key)")
    p.add_argument("--rpm", type=int, default=int(_env("RPM", 0)),
                   help="requests per minute, 0 = unlimited")
    p.add_argument("--tpm", type=int, default=int(_env("TPM", 0)),
                   help="tokens per minute, 0 = unlimited")
    p.add_argument("--window", type=float, default=float(_env("WINDOW", WINDOW_S)),
                   help="seconds of the rate-limit window (default %(default)s, as OpenAI's per-minute limits)")
    p.add_argument("--latency-ms", type=float, default=float(_env("LATENCY_MS", 0)),
                   help="base delay per request")
    p.add_argument("--latency-per-1k-ms", type=float,
                   default=float(_env("LATENCY_PER_1K_MS", 0)),
                   help="extra delay per 1000 input tokens")
    p.add_argument("--fault-rate", type=float, default=float(_env("FAULT_RATE", 0)),
                   help="fraction (0..1) of admitted requests answered with a fault status")
    p.add_argument("--fault-statuses", type=_statuses,
                   default=_statuses(_env("FAULT_STATUSES", "500,503")),
                   help="statuses for --fault-rate, comma separated (default 500,503)")
    p.add_argument("--seed", type=int, default=int(_env("SEED", 0)),
                   help="seed for --fault-rate draws")
    p.add_argument("--ratelimit-headers", choices=sorted(RATELIMIT_HEADER_SETS),
                   default=_env("RATELIMIT_HEADERS", "all"),
                   help="x-ratelimit-* headers sent: all six (default), only limit-tokens, "
                        "only the remaining-* pair (Azure-style), or none")
    p.add_argument("--verbose", action="store_true",
                   default=_env("VERBOSE", "") not in ("", "0", "false"),
                   help="log one line per request to stderr")
    args = p.parse_args(argv)
    if not 0 <= args.fault_rate <= 1:
        p.error("--fault-rate must be between 0 and 1")
    if args.rpm < 0 or args.tpm < 0 or args.latency_ms < 0 or args.latency_per_1k_ms < 0:
        p.error("limits and latencies must be >= 0")
    if args.window <= 0:
        p.error("--window must be > 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    get_encoding()  # fail before announcing readiness if tiktoken cannot load
    server = create_server(
        args.host, args.port, api_key=args.api_key, rpm=args.rpm, tpm=args.tpm,
        verbose=args.verbose, latency_ms=args.latency_ms,
        latency_per_1k_tokens_ms=args.latency_per_1k_ms, fault_rate=args.fault_rate,
        fault_statuses=args.fault_statuses, seed=args.seed,
        ratelimit_headers=args.ratelimit_headers, window_s=args.window)
    host, port = server.server_address[:2]

    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # serve_forever runs in a thread so the main thread can call shutdown()
    # (calling it from a signal handler in the serving thread would deadlock).
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              daemon=True)
    thread.start()
    print(f"local OpenAI-compatible server listening on http://{host}:{port}/v1", flush=True)
    while not stop.wait(0.5):
        pass
    server.state.stopping.set()
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
