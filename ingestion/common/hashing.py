"""Content hashes: of a text, of a file's bytes, of a source path."""
from __future__ import annotations

import hashlib


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def file_sha256(path: str) -> str | None:
    """The file's bytes, read in blocks; None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def source_key(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def chunk_id(source: str, content_sha256: str) -> str:
    """Deterministic: the same text of the same source always gets the same id."""
    return f"{source_key(source)}-{content_sha256[:32]}"


def shard_of(relative_path: str, shards: int) -> int:
    return int(hashlib.sha256(relative_path.encode("utf-8", "surrogateescape")).hexdigest()[:8], 16) % shards
