"""Atomic file writes and completion records: a reader (or a resumed job) never takes a half-written or damaged
output for a finished one.

Everything is written to a temporary name beside the target and renamed into place; works for local
paths and gs:// (tf.io.gfile). A stage's outputs count as finished only when a completion record, written
after them, lists each with its size and SHA-256 and the files still match it (`write_record`,
`verify_record`): an existing file proves nothing after a kill, a full disk or a damaged copy.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

from gandl import errors
from gandl._tf import tf

_CHUNK = 8 << 20  # bytes per read while hashing: large reads matter on gs://


class FileFault(errors.DataError, RuntimeError):
    """A file that is damaged, unfinished or held by another run. The message names it and what to do; the
    entry point prints it as one line, without a traceback."""


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


@contextlib.contextmanager
def named_faults(path: str) -> Iterator[None]:
    """An I/O error while writing `path` (a full or read-only disk, a lost mount: not a bug of GAN-DL) raised as a
    `FileFault` naming it; the operating system's error often names no file, or only a temporary one."""
    try:
        yield
    except (OSError, tf.errors.OpError) as error:
        reason = error.strerror if isinstance(error, OSError) else error.message
        raise FileFault(f"{path}: cannot write it ({reason or error})") from error


@contextlib.contextmanager
def discarded_on_error(tmp: str) -> Iterator[None]:
    """Remove the temporary file `tmp` when the block fails: a failed write leaves nothing behind."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError, tf.errors.OpError):
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.remove(tmp)
        raise


def write_bytes(path: str, data: bytes) -> None:
    tmp = temp_path(path)
    with named_faults(path), discarded_on_error(tmp):
        parent = os.path.dirname(path)
        if parent:
            tf.io.gfile.makedirs(parent)
        with tf.io.gfile.GFile(tmp, "wb") as f:
            f.write(data)
        commit(tmp, path)


@contextlib.contextmanager
def written_locally(path: str, needs: int = 0) -> Iterator[str]:
    """A local file name to write `path`'s content into (for libraries that need a seekable local file).

    On success the file is renamed into place (local `path`) or copied beside it and renamed (gs://);
    on an error nothing at `path` changes and the local file is removed; an I/O error names `path` (`named_faults`).
    `needs`: about how many bytes the file will take; a disk with less free space is refused before anything is
    written (HDF5 cannot fail cleanly on a full disk: its file close crashes the interpreter).
    """
    remote = "://" in path
    local = None if remote else temp_path(path)
    with named_faults(path):
        parent = os.path.dirname(path)
        if parent:
            tf.io.gfile.makedirs(parent)
        if remote:
            handle, local = tempfile.mkstemp(suffix=os.path.basename(path))
            os.close(handle)
        disk = os.statvfs(os.path.dirname(os.path.abspath(local)))
        if needs > disk.f_bavail * disk.f_frsize:
            raise FileFault(f"{path}: cannot write it (it needs about {needs / 2**20:.1f} MiB, "
                            f"{disk.f_bavail * disk.f_frsize / 2**20:.1f} MiB are free on its disk)")
        try:
            yield local
            if remote:
                tmp = temp_path(path)
                with discarded_on_error(tmp):
                    tf.io.gfile.copy(local, tmp, overwrite=True)
                    commit(tmp, path)
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


def digest(path: str) -> dict[str, Any]:
    """Size in bytes and SHA-256 of a file, streamed in chunks (local or gs://)."""
    sha, size = hashlib.sha256(), 0
    with tf.io.gfile.GFile(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return {"size": size, "sha256": sha.hexdigest()}


def _digests(paths: list[str]) -> list[dict[str, Any]]:
    """`digest` of each path, several at once (hashlib and file reads release the GIL)."""
    with concurrent.futures.ThreadPoolExecutor(min(8, max(1, len(paths)))) as pool:
        return list(pool.map(digest, paths))


def write_record(path: str, files: list[str], **fields: Any) -> dict:
    """Write the completion record `path` listing `files` (their paths; stored relative to the record's folder)
    with size and checksum, plus `fields`; call it after every file it lists is in place. Returns the record."""
    folder = os.path.dirname(path)
    names = [os.path.relpath(f, folder) for f in files]
    record = {**fields, "files": dict(zip(names, _digests([os.path.join(folder, n) for n in names])))}
    write_json(path, record)
    return record


def verify_record(path: str, expected: list[str] | None = None) -> list[str] | None:
    """What is wrong with the files the completion record `path` lists: missing, another size, another checksum
    (empty: all intact); None when there is no record. `expected` names files the record must list."""
    if not tf.io.gfile.exists(path):
        return None
    try:
        record = read_json(path)
        files = dict(record["files"])
    except (ValueError, KeyError, TypeError) as e:
        return [f"{path}: unreadable completion record ({e})"]
    folder = os.path.dirname(path)
    problems = [f"{name}: not in the completion record" for name in expected or () if name not in files]
    present = [n for n in files if tf.io.gfile.exists(os.path.join(folder, n))]
    problems += [f"{os.path.join(folder, n)}: missing" for n in files if n not in present]
    for name, found in zip(present, _digests([os.path.join(folder, n) for n in present])):
        wanted = files[name]
        if found["size"] != wanted.get("size"):
            problems.append(f"{os.path.join(folder, name)}: {found['size']} bytes, {wanted.get('size')} recorded")
        elif found["sha256"] != wanted.get("sha256"):
            problems.append(f"{os.path.join(folder, name)}: its checksum differs from the recorded one")
    return problems
