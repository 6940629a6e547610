"""The operator's view: queue counts, what is stored, tokens and cost, throughput, ETA, failures."""
from __future__ import annotations

import re
from collections import Counter
from datetime import datetime

from ingestion.common.errors import IngestionError, StoreBusy
from ingestion.common.settings import Config
from ingestion.openai_api.models import cost
from ingestion.storage import paid_vectors
from ingestion.tracking import checkpoint, file_queue, state

RECENT = 50  # completions used for the throughput and the ETA


def dollars(amount: float) -> str:
    return f"${amount:,.2f}" if amount >= 1 else f"${amount:.4f}"


def reason_kind(reason: str) -> str:
    """A failure reason without the parts that differ between files (paths, numbers)."""
    reason = re.sub(r"part \S+: ", "", reason)
    reason = re.sub(r"\d+", "N", reason)
    return reason[:120]


def _when(stamp: str) -> float | None:
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except (TypeError, ValueError):
        return None


def collect(cfg: Config, with_store: bool = True) -> dict:
    q, c = state.read(cfg)
    done = checkpoint.done_files(c).values()
    tokens = sum(d.get("tokens") or 0 for d in done)
    embedded = sum(d.get("embedded_tokens") or 0 for d in done)
    info = {
        "queue": file_queue.counts(q),
        "files_completed": len(checkpoint.done_files(c)),
        "chunks_recorded": sum(d.get("chunks") or 0 for d in done),
        "tokens_in_chunks": tokens,
        "tokens_embedded": embedded,
        "model": cfg.embedding_model,
        "cost_usd": cost(embedded, cfg.embedding_model),
        "failed_by_reason": dict(Counter(reason_kind(file_queue.reason(q, p))
                                         for p in file_queue.paths(q, file_queue.FAILED)).most_common()),
    }
    kept = paid_vectors.waiting(cfg)
    if kept:
        info["unwritten"] = {"files": len(kept), "folder": str(paid_vectors.folder(cfg))}
    recent = sorted(((t, d) for d in done if (t := _when(d.get("timestamp"))) is not None),
                    key=lambda pair: pair[0])[-RECENT:]
    if len(recent) >= 2:
        span = max(recent[-1][0] - recent[0][0], 1.0)  # timestamps have whole seconds: files may share one
        per_hour = (len(recent) - 1) / span * 3600
        remaining = info["queue"][file_queue.PENDING] + info["queue"][file_queue.PROCESSING]
        info["throughput"] = {"files_per_hour": round(per_hour, 1),
                              "tokens_per_minute": round(sum(d.get("tokens") or 0 for _, d in recent[1:]) / span * 60),
                              "over_last_files": len(recent)}
        info["eta_hours"] = round(remaining / per_hour, 2) if per_hour else None
        info["last_completed"] = recent[-1][1].get("timestamp")
    if with_store:
        info["store"] = _store_counts(cfg)
    return info


def _store_counts(cfg: Config) -> dict:
    from ingestion.storage.store import Store

    try:
        with Store(cfg, wait=False, check=None, create=False) as store:
            return {"chunks": store.count(), "files": store.files_count(), "record": store.record()}
    except StoreBusy:
        return {"busy": "a worker is writing to the embedded store; counts from the checkpoint"}
    except IngestionError as e:
        return {"error": str(e)}


def render(info: dict) -> str:
    q = info["queue"]
    lines = [f"queue: pending {q['pending']}, processing {q['processing']}, completed {q['completed']}, "
             f"failed {q['failed']}"]
    store = info.get("store", {})
    if "chunks" in store:
        lines.append(f"store: {store['chunks']:,} chunks, {store['files']:,} files recorded as done")
    elif store:
        lines.append(f"store: {store.get('busy') or store.get('error')}")
    price = f" ({dollars(info['cost_usd'])} at {info['model']} prices)" if info["cost_usd"] is not None else ""
    lines.append(f"tokens: {info['tokens_embedded']:,} embedded{price}; {info['tokens_in_chunks']:,} in "
                 f"{info['chunks_recorded']:,} chunks of {info['files_completed']:,} files")
    if "throughput" in info:
        t = info["throughput"]
        eta = f"; ETA {info['eta_hours']:.1f} h" if info.get("eta_hours") is not None else ""
        lines.append(f"throughput: {t['files_per_hour']:,} files/h, {t['tokens_per_minute']:,} tokens/min over the "
                     f"last {t['over_last_files']} files{eta}")
    if "unwritten" in info:
        u = info["unwritten"]
        lines.append(f"unwritten: {u['files']} file(s) of paid vectors the store did not take, in {u['folder']}; "
                     "the next run writes them first")
    for reason, n in info["failed_by_reason"].items():
        lines.append(f"failed x{n}: {reason}")
    return "\n".join(lines)
