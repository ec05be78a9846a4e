"""The content-addressed blob store and its rows."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import select

from storage import blobs
from storage.blobs import BlobError, BlobStore
from storage.db import Database
from storage.models import Blob


def test_blob_is_stored_under_its_sha256_in_two_levels(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    data = b"\x89PNG screenshot bytes"
    sha256 = store.write(data)
    assert sha256 == hashlib.sha256(data).hexdigest()
    assert store.path(sha256) == tmp_path / "blobs" / sha256[:2] / sha256[2:4] / sha256
    assert store.read(sha256) == data


def test_same_bytes_are_stored_once_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    first = store.write(b"same")
    second = store.write(b"same")
    assert first == second
    files = [p for p in (tmp_path / "blobs").rglob("*") if p.is_file()]
    assert files == [store.path(first)]


def test_unknown_blob_and_bad_name_are_clear_errors(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs")
    with pytest.raises(BlobError, match="not in the store"):
        store.read("0" * 64)
    with pytest.raises(BlobError, match="not a sha256"):
        store.path("../../etc/passwd")


def test_blob_row_is_recorded_once_per_digest(db: Database) -> None:
    for _ in range(2):
        with db.transaction() as session:
            blobs.record(session, {"a" * 64: 10, "b" * 64: 20})
    with db.transaction() as session:
        rows = session.execute(select(Blob.sha256, Blob.size).order_by(Blob.sha256)).all()
    assert rows == [("a" * 64, 10), ("b" * 64, 20)]
