"""Content-addressed blobs on disk, written atomically.

Layout under the root: ``blobs/ab/<sha256 hex>`` (256 shards by the first byte) and ``tmp/`` for
uploads in progress. A temp file is written, hashed as it is written, fsynced, then renamed into
its shard (same file system, so the rename is atomic) and the shard directory fsynced: a blob name
exists only for complete content. Every temp file is ``flock``ed by its writer; the lock dies with
the process, so ``prepare`` at start-up deletes exactly the temp files of dead writers (a crash mid
upload), never one another live process is writing.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import secrets
from pathlib import Path
from typing import BinaryIO

_DIGEST = re.compile(r"[0-9a-f]{64}")
TEMP_SUFFIX = ".part"


class TempBlob:
    """One blob being written; not thread safe (one upload writes it, one call at a time)."""

    def __init__(self, path: Path, file: BinaryIO) -> None:
        self.path = path
        self.num_bytes = 0
        self._file = file
        self._hash = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()  # the file on disk is always the bytes written so far (checks read it)
        self._hash.update(data)
        self.num_bytes += len(data)

    def finish(self) -> str:
        """Flush to stable storage; the hex sha256 of everything written."""
        self._file.flush()
        os.fsync(self._file.fileno())
        return self._hash.hexdigest()

    def discard(self) -> None:
        """Close and delete the temp file (idempotent; a no-op after it was installed)."""
        if not self._file.closed:
            self._file.close()  # releases the lock
        self.path.unlink(missing_ok=True)

    def close(self) -> None:
        self._file.close()


class BlobDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.tmp = root / "tmp"

    def prepare(self) -> int:
        """Create the directories and delete the temp files of dead writers; how many."""
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        return sum(_remove_if_abandoned(path) for path in self.tmp.iterdir())

    def path(self, digest: str) -> Path:
        assert _DIGEST.fullmatch(digest), digest
        return self.blobs / digest[:2] / digest

    def new_temp(self) -> TempBlob:
        """A new, locked, empty temp file in ``tmp/``."""
        while True:
            path = self.tmp / (secrets.token_hex(16) + TEMP_SUFFIX)
            file = open(path, "xb")  # noqa: SIM115 - owned by the TempBlob
            fcntl.flock(file.fileno(), fcntl.LOCK_EX)
            # A start-up cleaner may have deleted the file between open and flock: try again.
            if _same_file(path, file):
                return TempBlob(path, file)
            file.close()

    def install(self, temp: TempBlob, digest: str) -> bool:
        """Move a finished temp file to its blob name, or drop it when that content is already
        stored; whether a new blob was created."""
        target = self.path(digest)
        if target.exists():
            temp.discard()
            return False
        target.parent.mkdir(exist_ok=True)
        os.replace(temp.path, target)
        _fsync_dir(target.parent)
        temp.close()
        return True

    def remove(self, digest: str) -> None:
        target = self.path(digest)
        target.unlink(missing_ok=True)
        _fsync_dir(target.parent)

    def digests(self) -> set[str]:
        """The names of all blobs on disk."""
        found: set[str] = set()
        for shard in self.blobs.iterdir():
            if shard.is_dir():
                found.update(p.name for p in shard.iterdir() if _DIGEST.fullmatch(p.name))
        return found


def _remove_if_abandoned(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink()
            return True
    except BlockingIOError:
        return False  # a live writer holds it
    except (FileNotFoundError, IsADirectoryError):
        return False


def _same_file(path: Path, file: BinaryIO) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(file.fileno()).st_ino
    except FileNotFoundError:
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
