"""What the API's answers say about its rate limits: the x-ratelimit-* headers (limit, remaining,
reset, and from them the window), retry-after hints, and which limit a 429 is about and what limit
its message names. Read by the pacer (pacing); nothing here keeps state.
"""
from __future__ import annotations

import json
import re

KINDS = ("tokens", "requests")
MIN_WINDOW, MAX_WINDOW = 1.0, 300.0  # a window learned from the headers is believed within these bounds
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text) -> float | None:
    """'20ms', '1s', '8.64s', '6m0s', '1h2m' -> seconds; a bare number is seconds."""
    if text is None:
        return None
    text = str(text).strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


def _int(value) -> int | None:
    try:
        n = int(float(value))
    except (TypeError, ValueError):
        return None
    return n if n >= 0 else None


def read_limits(headers) -> dict:
    """{kind: (limit, remaining, reset seconds)} from x-ratelimit-* headers; None where absent."""
    out = {}
    for kind in KINDS:
        out[kind] = (_int(headers.get(f"x-ratelimit-limit-{kind}")),
                     _int(headers.get(f"x-ratelimit-remaining-{kind}")),
                     parse_duration(headers.get(f"x-ratelimit-reset-{kind}")))
    return out


def window_of(limits: dict) -> float | None:
    """The API's rate-limit window, from an answer's limit, remaining and reset of one kind (read_limits):
    reset is the time to refill what is used at limit per window. None where no kind says enough
    (a reset under half a second, or under 2% of the limit used, is too coarse to tell)."""
    for kind in KINDS:
        limit, remaining, reset = limits[kind]
        if limit and remaining is not None and reset is not None and reset >= 0.5:
            used = limit - remaining
            if used >= 0.02 * limit:
                return round(min(MAX_WINDOW, max(MIN_WINDOW, reset * limit / used)), 2)
    return None


def retry_hint(headers) -> float | None:
    """Seconds the server asks to wait (retry-after-ms, else retry-after in seconds)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    try:
        return max(0.0, float(headers.get("retry-after")))
    except (TypeError, ValueError):
        return None


def limited_kinds(body: bytes) -> tuple[str, ...]:
    """Which limit a 429 is about, from its body ({"error": {"type": "tokens"}} or the message)."""
    try:
        error = json.loads(body).get("error") or {}
        text = f"{error.get('type')} {error.get('message')}".lower()
    except (ValueError, AttributeError):
        return KINDS
    tokens = "tokens" in str(error.get("type")) or "tokens per min" in text or "(tpm)" in text
    requests = "requests" in str(error.get("type")) or "requests per min" in text or "(rpm)" in text
    if tokens != requests:
        return ("tokens",) if tokens else ("requests",)
    return KINDS


_STATED_TPM = re.compile(r"tokens per min(?:ute)? \(TPM\): Limit (\d+)", re.IGNORECASE)


def stated_limits(body: bytes) -> dict[str, int]:
    """The limit a 429 names in its words, as OpenAI's read ("... on tokens per min (TPM): Limit 30000,
    Used 29937, Requested 385 ..."): a server that sends no rate-limit headers still tells it there.
    Tokens only (the requests limit of an embeddings job is rarely the one reached)."""
    try:
        error = json.loads(body).get("error") or {}
        found = _STATED_TPM.search(str(error.get("message")))
    except (ValueError, AttributeError):
        return {}
    return {"tokens": int(found.group(1))} if found and int(found.group(1)) > 0 else {}
