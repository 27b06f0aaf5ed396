"""Atomic file writes: a reader (or a resumed job) never sees a half-written file.

Everything is written to a temporary name beside the target and renamed into place; works for local
paths and gs:// (tf.io.gfile).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

from gandl._tf import tf


def temp_path(path: str) -> str:
    """A unique temporary name beside `path`, so a rename moves it into place."""
    return f"{path}.tmp-{uuid.uuid4().hex[:8]}"


def remove_temp_files(folder: str) -> list[str]:
    """Delete the temporary files writers left in `folder` when they were killed; returns their paths.

    Only for folders one job writes at a time (shards, an export): a live writer's file would go too.
    """
    stale = tf.io.gfile.glob(os.path.join(folder, "*.tmp-*"))
    for path in stale:
        tf.io.gfile.remove(path)
    return stale


def commit(tmp: str, path: str) -> None:
    """Move a finished temporary file into place, replacing any older version."""
    tf.io.gfile.rename(tmp, path, overwrite=True)


def write_bytes(path: str, data: bytes) -> None:
    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    tmp = temp_path(path)
    with tf.io.gfile.GFile(tmp, "wb") as f:
        f.write(data)
    commit(tmp, path)


@contextlib.contextmanager
def written_locally(path: str) -> Iterator[str]:
    """A local file name to write `path`'s content into (for libraries that need a seekable local file).

    On success the file is renamed into place (local `path`) or copied beside it and renamed (gs://);
    on an error nothing at `path` changes and the local file is removed.
    """
    parent = os.path.dirname(path)
    if parent:
        tf.io.gfile.makedirs(parent)
    remote = "://" in path
    if remote:
        handle, local = tempfile.mkstemp(suffix=os.path.basename(path))
        os.close(handle)
    else:
        local = temp_path(path)
    try:
        yield local
        if remote:
            tmp = temp_path(path)
            try:
                tf.io.gfile.copy(local, tmp, overwrite=True)
                commit(tmp, path)
            finally:
                if tf.io.gfile.exists(tmp):
                    tf.io.gfile.remove(tmp)
        else:
            commit(local, path)
    finally:
        if os.path.exists(local):
            os.remove(local)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1) + "\n")  # insertion order: column order is meaningful


def read_json(path: str) -> Any:
    with tf.io.gfile.GFile(path, "r") as f:
        return json.load(f)
