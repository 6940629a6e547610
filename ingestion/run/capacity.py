"""The capacity plan: the store at the end of the queue, and whether this machine can hold it.

An embedded store's HNSW index lives in the RAM of the process that holds the store (the
worker, which lends it to its children): every vector of the collection, loaded in full. The
plan projects the store once the pending files are in (vectors, that process's RAM, the whole
run's RAM with its fork server and children, disk) from the chunks those files will make,
and compares it with the memory this machine or container really has (procinfo: cgroup limit,
else RAM) and the free disk under CHROMA_PATH.

Chunks of pending files are estimated from their bytes: at the ratio of the files already
stored (same corpus, same settings), else from the share of their text that cleanup keeps (the
first SAMPLE_FILES pending files, cleaned: no tokenizer needed) at CLEAN_BYTES_PER_CHUNK; the dry
run counts them exactly.
Every size below was measured by bench/capacity_plan.py (README: "Sizing"); they live here only.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ingestion.common import procinfo
from ingestion.common.settings import Config
from ingestion.openai_api import models
from ingestion.tracking import checkpoint, file_queue

MB = 2**20
# ---- measured: one place ---------------------------------------------------------------------------
# Each figure below comes from one command, run as root (it makes a cgroup-v1 or v2 memory group and
# runs the worker in it on its defaults, FILE_CONCURRENCY=4, over 8 synthetic 60 KB transcripts):
#   TIKTOKEN_CACHE_DIR=$PWD/.cache/tiktoken .venv/bin/python bench/capacity_plan.py \
#       --points 256:0,256:26000,1536:0,1536:10000 --files 8
# It prints, for a store pre-filled with N vectors (filled in another process, then reopened once so
# Chroma's log is applied), the RAM opening the collection costs (the index), each process's peak
# RSS (VmHWM) and the group's peak rss and page cache (memory.stat), next to the plan.
# Measured 2026-12 (chromadb 1.5.9, cgroup v1, 2 cores):
#   index (the INDEX_PROBE of the bench: RSS after opening and one query):
#     256 dims: 478 vectors 13.4 MB, 26,478 vectors 49.6 MB: 1,458 B a vector (1,024 of floats + 434)
#     1536 dims: 486 vectors 18.0 MB, 10,477 vectors 80.1 MB: 6,518 B a vector (6,144 of floats + 374)
#     (REFERENCE: 200,000 x 1536 held by a worker: 1,455 MB peak, 166 MB empty: 6.6 KB a vector)
#   worker VmHWM 126 MB (256 dims) / 139 MB (1536) with a 480-vector store; fork server 115 MB (90 MB
#   anonymous); a child ~100 MB, nearly all of it shared with the fork server (copy-on-write)
#   group peak (memory.max_usage_in_bytes: rss + page cache), 4 children, minus the index:
#     256 dims: 229 MB (478 vectors), 224 MB (26,478); 1536 dims: 255 MB (486), 240 MB (10,477)
#   so WORKER_BASE + FORK_SERVER + 4 CHILD = 270 MB covers every point (+6% over the largest)
# At the seed's size (bench/scale.py, bench/RESULTS.md "Scale": the worker's peak RSS over 200 files into a
# store of 620,035 vectors): 1,741 MB at 512 dims (2,724 B a vector beyond the worker's 130 MB), 4,218 MB
# at 1536 (6,914 B): a float32 a dimension fell 8% short there (the index's arrays grow ahead of their
# count, by Chroma's resize_factor 1.2), a tenth more fits both: +1% at 512 dims, +4% at 1536
INDEX_BYTES_PER_DIMENSION = 4.4  # a float32 a dimension, and the tenth the index keeps ahead of its count
INDEX_BYTES_PER_VECTOR = 440  # beyond the floats: HNSW links (M=16), labels, Chroma's id map
WORKER_BASE_BYTES = 130 * MB  # the worker with its store open, before any vector (measured 126 MB)
FORK_SERVER_BYTES = 100 * MB  # the fork server's own pages (measured with the children: group peak - worker)
CHILD_BYTES = 10 * MB  # each child's pages beyond those it shares with the fork server
# a `chroma run` server (bench/scale.py --server, results/scale-seed-512-server.json): 183 MB peak with an
# empty store, 1,751 MB holding 620,035 vectors of 512 dims, where the plan says 1,792 (+2%)
SERVER_BASE_BYTES = 200 * MB
# disk: bench/scale.py (bench/RESULTS.md, "Scale"): a store of 100,035 vectors x 1536 dims in the project's
# format (chunk text of the real transcripts' lengths, its metadata, file records) took 2,122,234,114 bytes,
# 21.2 KB a vector (REFERENCE's 200,000-vector store, 16 KB a vector, held shorter texts); the log keeps
# at most sync_threshold (1,000) vectors, so the vector's own share is the HNSW file's
DISK_BYTES_PER_DIMENSION = 4.5  # the vector's floats in the HNSW files (and in the log, until it is purged)
DISK_BYTES_PER_VECTOR = 14_300  # text, metadata and their indexes (full-text too), the link lists
DISK_BASE_BYTES = 8 * MB
# bytes of text after cleanup a chunk (500 tokens, 50 of overlap): the real transcripts 1,735 (467,903 bytes,
# 213,391 after cleanup, 123 chunks), synthetic plain ones 1,374 (bench/make_corpus.py, 60 KB files): the
# smaller, so that a first run errs towards too many vectors (the real ones: +24%), never too few
CLEAN_BYTES_PER_CHUNK = 1_400
SAMPLE_FILES = 5  # pending files cleaned to see how much of a corpus's text is page furniture
MIN_FILES_FOR_RATIO = 5  # stored files needed before their bytes a chunk replace the estimate
HEADROOM = 0.9  # share of the memory the run may plan to fill (the rest: page cache, the kernel's share)
WARN_AT = 0.75  # a run planned above this share of the memory is warned about
SMALLER_DIMENSIONS = (1024, 768, 512)


def index_bytes(vectors: int, dims: int) -> float:
    return vectors * (dims * INDEX_BYTES_PER_DIMENSION + INDEX_BYTES_PER_VECTOR)


def holder_bytes(vectors: int, dims: int) -> float:
    """RAM of the process that holds an embedded store of that many vectors (the worker)."""
    return WORKER_BASE_BYTES + index_bytes(vectors, dims)


def run_bytes(vectors: int, dims: int, children: int) -> float:
    """RAM of a whole worker run: the worker and its index, the fork server, its children."""
    return holder_bytes(vectors, dims) + FORK_SERVER_BYTES + children * CHILD_BYTES


def disk_bytes(vectors: int, dims: int) -> float:
    return DISK_BASE_BYTES + vectors * (dims * DISK_BYTES_PER_DIMENSION + DISK_BYTES_PER_VECTOR)


def most_vectors(budget: float, dims: int, children: int) -> int:
    """The largest embedded store a run fits in HEADROOM of budget bytes."""
    room = budget * HEADROOM - run_bytes(0, dims, children)
    return max(0, int(room / (dims * INDEX_BYTES_PER_DIMENSION + INDEX_BYTES_PER_VECTOR)))


def bytes_per_chunk(cfg: Config, c: dict, pending: list[str]) -> tuple[float, str]:
    """Bytes of transcript a chunk, and where that figure comes from: the files stored, else a sample of
    the pending ones cleaned."""
    size = chunks = files = 0
    for record in checkpoint.done_files(c).values():
        if record.get("size") and record.get("chunks"):
            size, chunks, files = size + record["size"], chunks + record["chunks"], files + 1
    if files >= MIN_FILES_FOR_RATIO:
        return size / chunks, f"at {size / chunks:,.0f} bytes a chunk, as the {files:,} files stored"
    kept, sampled = kept_by_cleanup(cfg, pending[:SAMPLE_FILES])
    per = CLEAN_BYTES_PER_CHUNK / kept
    return per, (f"at {per:,.0f} bytes a chunk ({CLEAN_BYTES_PER_CHUNK:,} of clean text; cleanup keeps "
                 f"{kept:.0%} of {sampled} pending files)")


def kept_by_cleanup(cfg: Config, paths: list[str]) -> tuple[float, int]:
    """The share of these files' bytes that is left once cleanup took the page furniture out (1.0 with
    TEXT_CLEANUP=off), and how many files it read."""
    from ingestion.text import page_layout

    raw = clean = files = 0
    for path in paths:
        try:
            with open(path, "rb") as f:
                data = f.read(page_layout.MAX_CLEANUP_CHARS)
        except OSError:
            continue
        text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
        cleaned = page_layout.clean(text) if cfg.text_cleanup == "auto" else None
        raw, files = raw + len(data), files + 1
        clean += len(cleaned.text.encode("utf-8")) if cleaned is not None else len(data)
    return (clean / raw if raw and clean else 1.0), files


def stored_vectors(cfg: Config, c: dict) -> int:
    """Vectors in the collection now: counted in the store when it can be opened at once, else the
    checkpoint's chunks of finished files."""
    recorded = sum(d.get("chunks") or 0 for d in checkpoint.done_files(c).values())
    if not cfg.remote_store and not cfg.chroma_path.exists():
        return 0
    from ingestion.common.errors import IngestionError
    from ingestion.storage.store import Store

    try:
        with Store(cfg, wait=False, check=None, create=False) as store:
            return store.opened_count
    except IngestionError:
        return recorded


def _fmt(nbytes: float) -> str:
    return f"{nbytes / MB:,.0f} MB" if nbytes < 10 * 2**30 else f"{nbytes / 2**30:,.1f} GB"


@dataclass
class Plan:
    """The store after the queue, and this machine's memory and disk."""
    cfg: Config
    dims: int
    stored: int  # vectors in the collection now
    file_chunks: list[float]  # chunks each pending file will make (estimated or counted), in queue order
    counted: bool  # file_chunks counted by cutting the files (dry run), not estimated from bytes
    how: str  # how the chunks were estimated
    budget: int | None  # bytes of memory this machine or container has
    budget_from: str
    free_disk: int | None  # bytes free under CHROMA_PATH
    children: int = field(default=1)

    @property
    def new(self) -> int:
        return round(sum(self.file_chunks))

    @property
    def total(self) -> int:
        return self.stored + self.new

    @property
    def holder(self) -> float:
        return holder_bytes(self.total, self.dims)

    @property
    def run(self) -> float:
        return run_bytes(self.total, self.dims, self.children)

    @property
    def disk_more(self) -> float:
        return disk_bytes(self.total, self.dims) - disk_bytes(self.stored, self.dims)

    def fits_memory(self) -> bool:
        return self.cfg.remote_store or not self.budget or self.run <= self.budget * HEADROOM

    def fits_disk(self) -> bool:
        return self.cfg.remote_store or self.free_disk is None or \
            self.disk_more <= self.free_disk - 32 * MB  # (store.MIN_FREE_BYTES stays free)

    def files_that_fit(self) -> int:
        """Pending files, in queue order, whose vectors fit in memory and disk."""
        room = most_vectors(self.budget, self.dims, self.children) - self.stored if self.budget else None
        if self.free_disk is not None:
            per = self.dims * DISK_BYTES_PER_DIMENSION + DISK_BYTES_PER_VECTOR
            disk_room = (self.free_disk - 32 * MB) / per
            room = disk_room if room is None else min(room, disk_room)
        if room is None:
            return len(self.file_chunks)
        n, used = 0, 0.0
        for chunks in self.file_chunks:
            if used + chunks > room:
                break
            used, n = used + chunks, n + 1
        return n

    def lines(self) -> list[str]:
        """The plan as a person reads it (generate_file_queue.py --dry-run)."""
        source = "counted" if self.counted else f"estimated from their bytes {self.how}"
        out = [f"capacity plan: store after the queue: {self.total:,} vectors of {self.dims} dimensions "
               f"({self.stored:,} now + {self.new:,} from {len(self.file_chunks):,} pending files, {source})"]
        if self.cfg.remote_store:
            out.append(f"  the Chroma server holds the index: it needs ~{_fmt(self.holder - WORKER_BASE_BYTES + SERVER_BASE_BYTES)} "
                       "of memory; this machine only runs the worker and its children")
            return out
        free = f", {_fmt(self.free_disk)} free" if self.free_disk is not None else ""
        out.append(f"  embedded index held by the worker: index ~{index_bytes(self.total, self.dims) / MB:,.0f} MB, "
                   f"worker ~{self.holder / MB:,.0f} MB, whole run ~{self.run / MB:,.0f} MB with {self.children} "
                   f"files at a time; disk ~{_fmt(self.disk_more)} more under CHROMA_PATH{free}")
        budget = f"{_fmt(self.budget)} ({self.budget_from})" if self.budget else "unknown"
        verdict = "fits" if self.fits_memory() and self.fits_disk() else \
            f"does NOT fit: {self.files_that_fit():,} of the {len(self.file_chunks):,} pending files fit"
        out.append(f"  this machine: memory {budget}, the plan may use {HEADROOM:.0%}: {verdict}")
        if not (self.fits_memory() and self.fits_disk()):
            out.append("  ways out: " + self.ways_out())
        return out

    def ways_out(self) -> str:
        ways = []
        room = self.budget * HEADROOM if self.budget else float("inf")
        if self.fits_disk():
            model = models.MODELS.get(self.cfg.embedding_model)
            if model is None or model.shortenable:
                options = [f"{d} (run ~{_fmt(run_bytes(self.total, d, self.children))})" for d in SMALLER_DIMENSIONS
                           if d < self.dims and run_bytes(self.total, d, self.children) <= room]
                if options:
                    ways.append("EMBEDDING_DIMENSIONS=" + ", ".join(options) +
                                " (a new collection: what is stored is embedded again)")
            if run_bytes(0, self.dims, self.children) <= room:
                server = holder_bytes(self.total, self.dims) - WORKER_BASE_BYTES + SERVER_BASE_BYTES
                ways.append(f"a Chroma server (CHROMA_HOST) with ~{_fmt(server)} of memory for the index, this "
                            f"machine then ~{_fmt(run_bytes(0, self.dims, self.children))}")
            ways.append(f"a machine or container with at least {_fmt(self.run / HEADROOM)} of memory")
        else:
            ways.append(f"at least {_fmt(self.disk_more + 32 * MB)} free under CHROMA_PATH (another disk, or "
                        f"CHROMA_PATH elsewhere)")
        ways.append("CAPACITY_CHECK=warn to go on anyway")
        return "; ".join(ways)

    def refusal(self) -> str:
        """One line: why the run does not start, how many files fit, the ways out."""
        if not self.fits_disk():
            what = (f"needs ~{_fmt(self.disk_more)} more disk under CHROMA_PATH={self.cfg.chroma_path}, "
                    f"{_fmt(self.free_disk)} free")
        else:
            what = (f"needs ~{_fmt(self.run)} of memory (the worker holding the index ~{_fmt(self.holder)}), more "
                    f"than {HEADROOM:.0%} of the {_fmt(self.budget)} this machine has ({self.budget_from})")
        return (f"capacity: after the {len(self.file_chunks):,} pending files the embedded store would hold "
                f"~{self.total:,} vectors of {self.dims} dimensions and {what}; {self.files_that_fit():,} of them "
                f"fit. Nothing was claimed. Ways out: {self.ways_out()}")

    def warning(self) -> str | None:
        """A run that fits but comes near the memory: said before it starts."""
        if self.cfg.remote_store or not self.budget or self.run < WARN_AT * self.budget:
            return None
        return (f"capacity: the embedded store will hold ~{self.total:,} vectors of {self.dims} dimensions, a run of "
                f"~{_fmt(self.run)}, {self.run / self.budget:.0%} of the {_fmt(self.budget)} this machine has; room "
                f"for about {most_vectors(self.budget, self.dims, self.children):,} vectors")


def budget() -> tuple[int | None, str]:
    """This machine's or container's memory, and where the figure comes from."""
    total = procinfo.memory_budget_bytes()
    limit = procinfo.cgroup_limit_bytes()
    return total, ("cgroup limit" if limit is not None and limit == total else "RAM")


def plan(cfg: Config, q: dict, c: dict, stored: int, counted_chunks: int | None = None) -> Plan | None:
    """The plan for the files pending (and in processing) in the queue; None when the model's vector size
    is unknown. counted_chunks: the chunks those files make, counted (the dry run)."""
    dims = models.dimensions(cfg.embedding_model, cfg.embedding_dimensions)
    if not dims:
        return None
    todo = file_queue.paths(q, file_queue.PENDING) + file_queue.paths(q, file_queue.PROCESSING)
    per_chunk, how = bytes_per_chunk(cfg, c, todo)
    sizes = []
    for path in todo:
        size = file_queue.details(q, path).get("size")
        if size is None:
            try:
                size = os.stat(path).st_size
            except OSError:
                size = 0
        sizes.append(size)
    chunks = [s / per_chunk for s in sizes]
    if counted_chunks is not None and sum(chunks):
        scale = counted_chunks / sum(chunks)
        chunks = [x * scale for x in chunks]
    free = None
    if not cfg.remote_store:
        folder = cfg.chroma_path
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            st = os.statvfs(folder)
            free = st.f_bavail * st.f_frsize
        except OSError:
            pass
    mem, mem_from = budget()
    children = max(1, min(cfg.file_concurrency if cfg.files_per_child == 1 else 1, len(todo)))
    return Plan(cfg, dims, stored, chunks, counted_chunks is not None, how, mem, mem_from, free, children)


def refuses() -> bool:
    """CAPACITY_CHECK: True (refuse, the default) or False (warn and go on)."""
    from ingestion.common.errors import ConfigError
    from ingestion.common.settings import raw

    value = (raw("CAPACITY_CHECK") or "").lower()
    if value not in ("refuse", "warn"):
        raise ConfigError(f"CAPACITY_CHECK must be refuse or warn, got {raw('CAPACITY_CHECK')!r}")
    return value == "refuse"
