"""Pacing of embeddings requests under the API's per-minute limits, shared by every process on this machine.

What the API counts: what it admitted in the last window (OpenAI's: a minute), against a
tokens-per-minute and a requests-per-minute limit. OpenAI's limiter refills continuously;
the local test server keeps a sliding log. Either way, "the limit less what was admitted
in the last window" is never more than what is really free, so the pacer keeps a log of
the attempts this machine sent over one window (every process using the same checkpoint
folder: each file may be ingested by its own process) and answers one question before
each attempt: is there room for it?

    room = capacity - (what the log holds from the last window) - (what is in flight)

The window: what the answers say. `x-ratelimit-reset-*` is the time until the limit is
back to its initial state at the API's refill rate (limit per window), so with the limit
and what remains it gives the window: reset x limit / (limit - remaining) (60 s from
OpenAI). Until an answer carrying all three says it (or where none ever does),
RATE_LIMIT_WINDOW_SECONDS (60).

Capacity, from whatever the answers carry:
- `x-ratelimit-remaining-*`: the truth at the moment of that answer. Capacity becomes
  remaining + what of ours the server had counted in it (attempts sent before this one,
  within the last window: the server admits in arrival order); what we sent after it,
  still in flight or answered meanwhile, is taken off it. Between answers, room grows
  only as our own attempts leave the window (no refill is assumed); a new answer
  replaces the estimate. Others using the same key show up as a lower capacity, held
  until `x-ratelimit-reset-*` (at most a window).
- `x-ratelimit-limit-*` alone: capacity is the limit (our log tells what is used).
- remaining without a limit (Azure-style sets): the largest capacity seen stands in
  for the limit.
- no headers, but a 429 whose message names the limit, as OpenAI's do ("on tokens per
  min (TPM): Limit 30000, Used ..."): from that 429 on, as with the limit header, for
  STATED_FOR (an account's limit may be raised; nothing else would ever tell us).
- nothing at all: learned from 429s. Attempts in flight on the machine start at
  BARE_CWND (files side by side would otherwise all be in flight when the window fills),
  and stay there until the first 429 or a window without one: each attempt in flight
  when an unknown limit is first reached gets a 429 (grown by AIMD before it, 5 did where
  2 do now).
  A 429 means the window is full: capacity becomes
  what we surely had in it (the limit is at least that), concurrency is halved (AIMD;
  it grows by one after a run of successes), everyone holds back for the server's
  retry-after, and the learned limit is probed 12.5% higher only after two windows
  of being served at it without a 429 (a 429 each time it turns out too high).

Every attempt, the SDK's own retries included, passes through the pacer (httpx event
hooks on the SDK's client), so retries after a 429 do not stampede either. The state
is a small JSON file under a flock; a process that dies with attempts in flight
leaves them to be counted as sent. An attempt waiting for room looks every POLL
seconds and only reads it.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Iterator

from ingestion.common.atomicfile import locked
from ingestion.common.procinfo import pid_alive
from ingestion.openai_api.rate_limits import KINDS, limited_kinds, read_limits, retry_hint, stated_limits, window_of

log = logging.getLogger(__name__)

WINDOW = 60.0          # the API's limits are per minute (RATE_LIMIT_WINDOW_SECONDS), unless its answers say otherwise
POLL = 0.05            # seconds between looks while waiting for an answer
MAX_HOLD = 120.0       # the SDK does not retry after longer hints either
MAX_CWND = 64          # above this, concurrency is no longer limited
BARE_CWND = 2          # attempts in flight (all processes) at first when answers carry no rate-limit headers
                       # (4 gave 4 x 429 where 2 gave 2 when a 200k TPM window first filled; AIMD grows it)
MERGE_ABOVE = 64       # answered attempts kept one by one in the state file; more are merged by second
GROWTH = 1.125         # a learned limit is probed this much higher ...
PROBE_AFTER = 2        # ... after this many windows served at it without a 429
STATED_FOR = 3600.0    # a limit named only by a 429's message is believed this long
STALE_FLIGHT = 900.0   # an attempt in flight this long belongs to a process that is gone


def _new_kind() -> dict:
    return {"limit": None, "learned": None, "cap": None, "cap_at": 0.0, "cap_until": 0.0,
            "last_429": 0.0, "served_since": None, "probed_at": 0.0, "stated_until": None}


def _new_state() -> dict:
    # done: [sent, answered, tokens counted, requests counted] of attempts answered in the last window
    # flight: id -> [pid, sent, tokens] of attempts on their way
    return {"v": 2, "kinds": {k: _new_kind() for k in KINDS}, "done": [], "flight": {},
            "seen": False, "cwnd": None, "ok_run": 0, "cut_at": 0.0, "hold_until": 0.0, "window": None}


def _amount(entry, kind: str) -> float:
    return entry[2] if kind == "tokens" else entry[3]


class Pacer:
    """Holds each attempt back until the API's per-minute limits have room for it (see the module doc).

    Use: `openai.OpenAI(http_client=openai.DefaultHttpxClient(event_hooks=pacer.event_hooks()))`,
    and wrap each call in `with pacer.request(tokens):` so the hooks know its size.
    """

    def __init__(self, path: Path | None, window: float = WINDOW):
        self.path = path
        self.window = window  # until an answer says what the API's window is
        self._lock = threading.Lock()
        self._local = threading.local()
        self._ids = itertools.count()
        self._warned = False

    # -- what the Embedder uses --------------------------------------------------------

    @contextlib.contextmanager
    def request(self, tokens: int) -> Iterator[None]:
        """Attempts sent by this thread inside the block carry `tokens` tokens each."""
        self._local.tokens = tokens
        try:
            yield
        finally:
            self._local.tokens = 0
            self._close_open()

    def event_hooks(self) -> dict:
        return {"request": [self._on_request], "response": [self._on_response]}

    # -- httpx hooks: every attempt, retries included ---------------------------------

    def _on_request(self, request) -> None:
        if self.path is None or not request.url.path.endswith("/embeddings"):
            return
        self._close_open()
        tokens = getattr(self._local, "tokens", 0) or 0
        self._local.open = self._guard(self.before, tokens)

    def _on_response(self, response) -> None:
        ident = getattr(self._local, "open", None)
        if ident is None:
            return
        self._local.open = None
        kinds, stated = KINDS, {}
        if response.status_code == 429:
            with contextlib.suppress(Exception):
                body = response.read()
                kinds, stated = limited_kinds(body), stated_limits(body)
        self._guard(self.after, ident, response.status_code, response.headers, kinds, stated)

    def _close_open(self) -> None:
        """An attempt that got no answer (timeout, dropped connection): it may have been counted."""
        ident = getattr(self._local, "open", None)
        if ident is not None:
            self._local.open = None
            self._guard(self.after, ident, None, {}, ())

    def _guard(self, fn, *args):
        """Pacing must never break a request: a broken state file means no pacing, said once."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001
            if not self._warned:
                self._warned = True
                log.warning("rate-limit pacing is off for this process: %s", e)
            return None

    # -- the shared state ---------------------------------------------------------------

    def _update(self, change, unchanged=lambda result: False):
        """Apply change(state, now) to the shared state under the lock; returns its result.
        unchanged(result): change only looked (the file is not written again)."""
        with self._lock, locked(self.path.with_suffix(".lock")):
            try:
                state = json.loads(self.path.read_text())
                if state.get("v") != 2:
                    raise ValueError("old format")
            except (OSError, ValueError):
                state = _new_state()
            now = round(time.time(), 3)  # (times to the millisecond: a shorter file to read and write)
            state["w"] = state.get("window") or self.window  # the window in force (not saved apart)
            self._prune(state, now)
            result = change(state, now)
            if unchanged(result):  # (what _prune dropped, the next writer drops too)
                return result
            state.pop("w", None)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(state, separators=(",", ":")))
            os.replace(tmp, self.path)
            return result

    @staticmethod
    def _prune(state: dict, now: float) -> None:
        mine = os.getpid()
        for ident, (pid, sent, tokens) in list(state["flight"].items()):
            if sent < now - STALE_FLIGHT or sent > now + 5 or (pid != mine and not pid_alive(pid)):
                del state["flight"][ident]  # its process is gone: count it as sent now
                state["done"].append([min(sent, now), now, tokens, 1])
        done = [e for e in state["done"] if now - state["w"] < e[1] <= now + 5]
        if len(done) > MERGE_ABOVE:  # many requests: merge by whole seconds (sent earlier, answered later)
            merged: dict = {}
            for s, r, t, q in done:
                key = (math.floor(s), math.ceil(r))
                m = merged.setdefault(key, [key[0], key[1], 0, 0])
                m[2] += t
                m[3] += q
            done = list(merged.values())
        state["done"] = done
        for k in state["kinds"].values():
            if k.get("stated_until") is not None and now > k["stated_until"]:
                k.update(limit=None, stated_until=None)  # named by a 429 long ago: learn it again

    @staticmethod
    def _used(state: dict, kind: str) -> float:
        """What the window holds from us: answered in the last window, plus everything in flight."""
        flight = state["flight"].values()
        return (sum(_amount(e, kind) for e in state["done"])
                + (sum(f[2] for f in flight) if kind == "tokens" else len(flight)))

    @staticmethod
    def _capacity(k: dict, now: float) -> tuple[float | None, float | None]:
        """(what we may have in the window now, the limit itself); None: unknown."""
        base = k["limit"] if k["limit"] is not None else k["learned"]
        cap = base
        if k["cap"] is not None and now < k["cap_until"]:
            cap = k["cap"] if base is None else min(k["cap"], base)
        return cap, base

    def _budget_wait(self, state: dict, kind: str, n: int, now: float) -> float:
        """0 if an attempt of n fits now; else seconds until it might."""
        k = state["kinds"][kind]
        cap, base = self._capacity(k, now)
        if cap is None:
            return 0.0
        need = min(n, base) if base is not None else n  # an attempt larger than the limit goes alone
        short = need - (cap - self._used(state, kind))
        if short <= 0:
            return 0.0
        wait = POLL  # only answers to what is in flight can free room
        for entry in sorted(state["done"], key=lambda e: e[1]):
            short -= _amount(entry, kind)
            if short <= 0:
                wait = max(entry[1] + state["w"] - now, 0.005)
                break
        if k["cap"] is not None and now < k["cap_until"] and (base is None or base > k["cap"]):
            wait = min(wait, k["cap_until"] - now + 0.005)
        return wait

    def before(self, tokens: int) -> str:
        """Wait until an attempt of `tokens` tokens fits; returns its id (it is then in flight)."""
        ident = f"{os.getpid()}-{next(self._ids)}"

        def take(state, now):
            if not state["seen"] and state["flight"]:
                return POLL  # nothing known yet: one attempt alone, until an answer tells more
            if state["hold_until"] > now:
                return state["hold_until"] - now
            if state["cwnd"] is not None and len(state["flight"]) >= state["cwnd"]:
                return POLL
            wait = max(self._budget_wait(state, kind, n, now) for kind, n in (("tokens", tokens), ("requests", 1)))
            if wait <= 0:
                state["flight"][ident] = [os.getpid(), now, tokens]
            return wait

        while (wait := self._update(take, unchanged=lambda wait: wait > 0)) > 0:  # (waiting: only looked)
            if wait > 1:
                log.debug("pacing: waiting %.1fs to stay under the rate limit", wait)
            time.sleep(min(wait, 1.0))
        return ident

    def after(self, ident: str, status: int | None, headers, kinds: tuple[str, ...] = KINDS,
              stated: dict[str, int] | None = None) -> None:
        """Learn from the answer to attempt ident (status None: no answer came). stated: the limits
        a 429's message names (stated_limits)."""
        limits = read_limits(headers)
        hint = retry_hint(headers) if status == 429 else None

        def learn(state, now):
            flight = state["flight"].pop(ident, None)
            sent, tokens = (flight[1], flight[2]) if flight else (now, 0)
            this = [sent, now, 0 if status == 429 else tokens, 1]  # a 429 is a request, but no tokens
            state["done"].append(this)
            if status is None:
                return
            state["seen"] = True
            told = window_of(limits)
            if told is not None:
                state["window"] = state["w"] = told
            if status < 400 and not state.get("bare_seen") and all(v is None for kind in KINDS
                                                                   for v in limits[kind]):
                state["bare_seen"] = True  # a server that sends no rate-limit headers: start the
                if state["cwnd"] is None:  # machine's concurrency small; AIMD grows it after a 429
                    state["cwnd"] = BARE_CWND  # or a window without one (each attempt in flight when
                    state["grow_after"] = now + state["w"]  # the limit is first reached gets a 429)
            for kind in KINDS:
                self._learn_kind(state, state["kinds"][kind], kind, this, status, limits[kind],
                                 kind in kinds, tokens, now, (stated or {}).get(kind))
            if status == 429:
                if state["cwnd"] is None or sent >= state["cut_at"]:  # one cut per congestion event
                    before = state["cwnd"] if state["cwnd"] is not None else len(state["flight"]) + 1
                    state["cwnd"] = max(1, before // 2)
                    state["cut_at"] = now
                    state["ok_run"] = 0
                if hint:
                    state["hold_until"] = max(state["hold_until"], now + min(hint, MAX_HOLD))
                state["grow_after"] = 0.0  # the limit was found: AIMD from here
            elif status < 400 and state["cwnd"] is not None and now >= state.get("grow_after", 0.0):
                state["ok_run"] += 1
                if state["ok_run"] >= state["cwnd"]:
                    state["cwnd"] += 1
                    state["ok_run"] = 0
                    if state["cwnd"] > MAX_CWND:
                        state["cwnd"] = None

        if self.path is not None:
            self._update(learn)

    @staticmethod
    def _learn_kind(state, k, kind, this, status, header, limited, tokens, now, stated=None) -> None:
        limit, remaining, reset = header
        sent = this[0]
        # ours that the server surely counted in this answer: answered before this attempt left,
        # and sent within the minute before it answered (so admitted inside its window)
        w = state["w"]
        window = now - w
        sure = sum(_amount(e, kind) for e in state["done"] if e is this or (e[1] <= sent and e[0] > window))
        if limit is not None:
            k["stated_until"] = None
        elif stated is not None and stated >= sure:
            limit = stated  # no header said it, the 429's message did (if it fits what was admitted)
            k["stated_until"] = now + STATED_FOR
        counted = sure
        if status < 400:
            # the server admits in arrival order: what left before this attempt was counted too,
            # even if its answer came later or is still on its way (what left after was not)
            counted += sum(_amount(e, kind) for e in state["done"] if e[1] > sent and window < e[0] < sent)
            counted += sum(f[2] if kind == "tokens" else 1 for f in state["flight"].values() if window < f[1] < sent)
        if limit is not None:
            k["limit"] = limit
        if remaining is not None:
            cap = remaining + counted
            if k["limit"] is not None:
                cap = min(cap, k["limit"])
            else:  # remaining only: the most ever surely free stands in for the limit. Surely: an attempt of
                # ours that left before this one may have reached the server after it (threads side by side
                # on a busy machine), and then is not in this remaining; counted as if it were, the stand-in
                # grew past the limit by it for good, and the window was overfilled ever after (429s)
                k["learned"] = max(k["learned"] or 0, remaining + sure)
                cap = min(cap, k["learned"])
            if now >= k["cap_at"]:
                horizon = w if reset is None else min(w, reset + 0.5)
                k.update(cap=cap, cap_at=now, cap_until=now + horizon)
            return
        if status == 429 and limited:
            # no word on what remains: the window is full; what we surely had in it fits
            k.update(cap=sure, cap_at=now, cap_until=now + w)
            if k["limit"] is None:
                # multiplicative decrease; a failed probe only takes the probe back
                back = GROWTH if now - k.get("probed_at", 0.0) < PROBE_AFTER * w else 2
                k["learned"] = max(sure, (k["learned"] or 0) / back, tokens if kind == "tokens" else 1)
            k["last_429"] = now
            k["served_since"] = None
        elif status < 400 and k["limit"] is None and k["learned"] is not None:
            # nothing but what we learned from 429s: what was admitted together is within the limit
            k["learned"] = max(k["learned"], sure)
            if k["served_since"] is None:
                k["served_since"] = now
            elif (now - k["served_since"] >= PROBE_AFTER * w and now - k["last_429"] >= PROBE_AFTER * w
                  and Pacer._used(state, kind) >= 0.8 * k["learned"]):
                k["learned"] *= GROWTH  # served at the learned limit for a while: probe a little higher
                k["served_since"] = k["probed_at"] = now
