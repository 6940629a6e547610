"""Running: the checks before spending (preflight), one file from claim to outcome (job), its chunks
embedded and stored (embed_and_store), split files (splits), the worker (worker) with its fork server
and children (children, fork_preload), and the capacity plan (capacity). The top of the library: the
scripts in ingestion/ call it; nothing below imports it.
"""
