"""Progress for long work: a tqdm bar on a terminal, plain log lines otherwise (cron, log platforms)."""
from __future__ import annotations

import contextlib
import logging
import sys
import time
from typing import Callable, Iterator

log = logging.getLogger("ingestion")
LOG_EVERY_SECONDS = 30


@contextlib.contextmanager
def bar(total: int, what: str, unit: str) -> Iterator[Callable[[int], None]]:
    """Yields advance(n). On a terminal: a tqdm bar on stderr; else a log line every 30 s."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(total=total, desc=what, unit=f" {unit}", file=sys.stderr, dynamic_ncols=True) as t:
            yield t.update
        return
    done = 0
    last = time.monotonic()

    def advance(n: int = 1) -> None:
        nonlocal done, last
        done += n
        if time.monotonic() - last >= LOG_EVERY_SECONDS:
            last = time.monotonic()
            log.info("%s: %d of %d %s", what, done, total, unit)

    yield advance
