"""Content-addressed files: attachments and screenshots, stored once under their sha256.

The bytes go to ``<root>/ab/cd/<sha256>`` through a temporary file that is fsynced and
renamed, and this happens BEFORE the database transaction that references them commits:
a crash in between leaves an unreferenced file (harmless), never a row without its bytes.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from sqlalchemy import Executable, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from storage.models import Blob

_SHA256 = re.compile(r"[0-9a-f]{64}")


class BlobError(LookupError):
    """A blob that is not in the store, or a name that is not a sha256."""


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise BlobError(f"not a sha256 digest: {sha256!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def write(self, data: bytes) -> str:
        """Store ``data`` durably and return its sha256; a blob already present is kept."""
        sha256 = hashlib.sha256(data).hexdigest()
        target = self.path(sha256)
        if target.exists():
            return sha256
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        _fsync_directory(target.parent)
        return sha256

    def read(self, sha256: str) -> bytes:
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError:
            raise BlobError(f"blob {sha256} is not in the store") from None


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _insert_once(insert: Callable[[Table], postgresql.Insert | sqlite.Insert]) -> Executable:
    return insert(Blob.metadata.tables["blobs"]).on_conflict_do_nothing(index_elements=["sha256"])


# Built once: every stored attachment asks for it.
_INSERT_ONCE = {
    "postgresql": _insert_once(postgresql.insert),
    "sqlite": _insert_once(sqlite.insert),
}


def record(session: Session, sizes: Mapping[str, int]) -> None:
    """The blobs' rows (sha256 -> size), once per sha256, in one statement in the caller's
    transaction."""
    stmt = _INSERT_ONCE[session.get_bind().dialect.name]
    session.execute(stmt, [{"sha256": sha256, "size": size} for sha256, size in sizes.items()])
