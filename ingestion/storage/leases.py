"""Leases: which worker holds which file, when workers on different machines share one store.

A lease is a record of the CHROMA_COLLECTION + "_leases" collection (shared stores only: an
embedded store is held by one process, under its lock). Store.claim, renew and unclaim call these
with the store, through its retried calls; the lent store hands them to the worker's store like
any other call.
"""
from __future__ import annotations

import socket
import time

from ingestion.common.hashing import source_key
from ingestion.common.procinfo import pid_alive

CLAIM_TRIES = 4  # slots a claim tries (a try after the first follows leases found over: after crashes)


def claim(store, source: str, owner: str, seconds: float) -> str | None:
    """Take source for owner in the shared store; returns the other owner when it is taken.

    Workers on different machines share only the store, and Chroma has no compare-and-set.
    What it has: `add` never replaces a record (an id that exists is left as it is), and a
    read sees every write the server took before it. A lease is a record of the leases
    collection: id KEY.SLOT (the source's key, a slot 0, 1, ...), metadata source, owner,
    until (when it ends unless renewed) and slot. A claim, with no waiting:
    1. adds its lease at a slot (slot 0 first);
    2. reads every lease of the source;
    3. holds the file when the lease at its slot is its own and every other lease is over
       (ended, or of a process gone from this machine). Otherwise: another's lease that is
       not over wins; the claim takes its own lease back, if it added one, and returns that
       owner. When every lease found is over, it tries again at the slot after the last one
       (the lease over stays where it is: a lease is removed only by its owner, `unclaim`).
    Two round trips where the file is free (the settle of 0.3 s an earlier version waited,
    under the worker's store lock, cost every file ~0.3 s in server mode).

    Why two workers never hold a file at once: say A and B both hold it, and the server took
    A's add first. B read after its own add, so after A's, and found A's lease, which stays
    until A lets go of the file: B holds it only if A's lease was over, that is when A no
    longer held it (its lease ended without a renewal, or its process was gone). Both adds
    meeting at one slot (the usual race: both found the file free) leave one lease: both read
    its owner, and the other backs off at once.
    """
    if store.leases is None:
        return None
    slot = 0
    for _ in range(CLAIM_TRIES):
        mine = f"{source_key(source)}.{slot}"
        store.call(store.leases.add, ids=[mine], embeddings=[[1.0, 0.0]], documents=[source],
                   metadatas=[{"source": source, "owner": owner, "until": time.time() + seconds, "slot": slot}])
        found = store.call(store.leases.get, where={"source": source}, include=["metadatas"])
        leases = dict(zip(found["ids"], found["metadatas"]))
        others = [m.get("owner") or "another worker" for m in leases.values()
                  if m.get("owner") != owner and not _over(m)]
        if (leases.get(mine) or {}).get("owner") == owner:
            if not others:
                return None
            store.call(store.leases.delete, ids=[mine])  # another holds it: ours would only stand in its way
            return others[0]
        if others:
            return others[0]
        if leases:  # every lease is over: the next slot (none: the one at ours was let go meanwhile)
            slot = 1 + max(int(m.get("slot", -1)) for m in leases.values())
    return "another worker"  # (claims kept meeting at each slot: left for later)


def renew(store, source: str, owner: str, seconds: float) -> None:
    """Push the end of owner's lease on source further (never makes a lease: only claim does)."""
    if store.leases is None:
        return
    found = store.call(store.leases.get, where=_lease_of(source, owner), include=[])
    if found["ids"]:
        store.call(store.leases.update, ids=found["ids"],
                   metadatas=[{"until": time.time() + seconds}] * len(found["ids"]))


def unclaim(store, source: str, owner: str) -> None:
    """Let go of source: owner's leases on it are removed (one round trip)."""
    if store.leases is not None:
        store.call(store.leases.delete, where=_lease_of(source, owner))


def _lease_of(source: str, owner: str) -> dict:
    return {"$and": [{"source": source}, {"owner": owner}]}


def _over(lease: dict) -> bool:
    """A lease that holds nothing any more: its end passed, or its process is gone from this machine."""
    return lease.get("until", 0) <= time.time() or not _owner_alive(lease.get("owner", ""))


def _owner_alive(owner: str) -> bool:
    """A lease of this host whose process is gone is free; another host's is taken at its word."""
    host, _, pid = owner.rpartition(":")
    return host != socket.gethostname() or not pid.isdigit() or pid_alive(int(pid))
