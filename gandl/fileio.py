"""Atomic file writes: a reader (or a resumed job) never sees a half-written file.

Everything is written to a temporary name beside the target and renamed into place; works for local
paths and gs:// (tf.io.gfile).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

from gandl._tf import tf


def temp_path(path: str) -> str:
    """A unique temporary name beside `path`, so a rename moves it into place."""
    return f"{path}.tmp-{uuid.uuid4().hex[:8]}"


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


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1) + "\n")  # insertion order: column order is meaningful


def read_json(path: str) -> Any:
    with tf.io.gfile.GFile(path, "r") as f:
        return json.load(f)
