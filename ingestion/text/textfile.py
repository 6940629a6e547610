"""Reading transcripts: which files may be read, their encoding, their text as a stream.

Encoding rules (in this order):
- a UTF-8 byte-order mark: UTF-8, the mark dropped;
- a UTF-16 byte-order mark (LE or BE): UTF-16;
- NUL bytes anywhere else: a binary file, rejected;
- valid UTF-8: UTF-8;
- anything else: Windows-1252 (cp1252), bytes it does not define become U+FFFD.
Line ends (CRLF, lone CR) become LF. A file is never held whole in memory: it is
read in blocks of READ_BLOCK bytes, once to hash and sniff it and once to chunk it.
"""
from __future__ import annotations

import codecs
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ingestion.common.errors import FileRejected  # noqa: F401  (re-exported for callers)

READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class FileInfo:
    sha256: str
    size: int
    encoding: str


def is_allowed(path: Path, roots: list[Path]) -> bool:
    """True when path, with every symlink resolved, lies inside one of roots (a loop never does)."""
    try:
        real = Path(os.path.realpath(path, strict=True))
    except FileNotFoundError:  # gone or dangling: reading it will say so; judge where it points
        real = Path(os.path.realpath(path))
    except (OSError, RuntimeError):
        return False
    for root in roots:
        r = Path(os.path.realpath(root))
        if real == r or r in real.parents:
            return True
    return False


def _open(path: Path):
    try:
        return open(path, "rb")
    except PermissionError:
        raise FileRejected("no read permission") from None
    except IsADirectoryError:
        raise FileRejected("a directory, not a file") from None
    except FileNotFoundError:
        raise FileRejected("file not found (deleted or moved since it was queued)") from None
    except OSError as e:
        if e.errno == 40:  # ELOOP: a symlink loop
            raise FileRejected("symlink loop") from None
        raise FileRejected(f"cannot open: {e.strerror or e}") from None


def inspect(path: Path) -> FileInfo:
    """Hash the file's bytes and choose its encoding, reading it in blocks."""
    digest = hashlib.sha256()
    size = 0
    has_nul = False
    utf8 = codecs.getincrementaldecoder("utf-8")()
    utf8_ok = True
    head = b""
    with _open(path) as f:
        while block := f.read(READ_BLOCK):
            if not head:
                head = block[:4]
            digest.update(block)
            size += len(block)
            has_nul = has_nul or b"\x00" in block
            if utf8_ok:
                try:
                    utf8.decode(block)
                except UnicodeDecodeError:
                    utf8_ok = False
        if utf8_ok:
            try:
                utf8.decode(b"", final=True)
            except UnicodeDecodeError:
                utf8_ok = False
    if head.startswith(codecs.BOM_UTF8):
        encoding = "utf-8-sig"
    elif head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    elif has_nul:
        raise FileRejected("binary file (contains NUL bytes)")
    elif utf8_ok:
        encoding = "utf-8"
    else:
        encoding = "cp1252"
    return FileInfo(sha256=digest.hexdigest(), size=size, encoding=encoding)


class FileChanged(Exception):
    """The file's bytes differ from what inspect() hashed: it changed while being read."""


def iter_text(path: Path, info: FileInfo, keep_line_ends: bool = False) -> Iterator[str]:
    """The file's text in blocks, CRLF and CR turned into LF unless keep_line_ends.

    Hashes the bytes again as it reads them and raises FileChanged at the end when
    they are not the bytes inspect() saw, so a file edited mid-read is never
    recorded under the wrong hash.
    """
    errors = "replace" if info.encoding == "cp1252" else "strict"
    decoder = codecs.getincrementaldecoder(info.encoding)(errors=errors)
    digest = hashlib.sha256()
    carry = ""
    with _open(path) as f:
        while True:
            block = f.read(READ_BLOCK)
            digest.update(block)
            try:
                text = carry + decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                raise FileRejected(f"cannot decode as {info.encoding}: {e.reason}") from None
            carry = ""
            if not keep_line_ends:
                if block and text.endswith("\r"):
                    text, carry = text[:-1], "\r"  # its LF may start the next block
                text = text.replace("\r\n", "\n").replace("\r", "\n")
            if text:
                yield text
            if not block:
                break
    if digest.hexdigest() != info.sha256:
        raise FileChanged(str(path))
