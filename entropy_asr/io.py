"""Atomic file and directory writes, and the reader of JSONL logs.

Every write goes to a temp name in the target's own dir (same filesystem) and is renamed over the target, so a
reader sees the old file or the new one, never a half-written one; a write that fails removes its temp file. Temp
names are unique per process and thread, so concurrent writers of one path never share a temp file (the last
rename wins, whole).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def temp_path(path: str | Path, suffix: str = "") -> Path:
    """The temp name `path` is written under before the rename: hidden, in its dir, unique per process and thread.

    `suffix` ends the name, for writers that choose the format by extension (matplotlib's savefig).
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp{suffix}")


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path to write `path`'s content to; on success it is renamed over `path`, on error removed."""
    path = Path(path)
    tmp = temp_path(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: str | Path) -> Iterator[IO[bytes]]:
    """A binary file to write `path`'s content to: flushed, fsynced and renamed over `path` when the block ends
    without an error; removed when it raises."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same dir (fsynced) + rename (atomic on POSIX)."""
    with atomic_open(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically write `text` as UTF-8."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write `obj` as pretty, key-sorted JSON (byte-stable for equal objects)."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def atomic_write_via(path: str | Path, write: Callable[[Path], object], suffix: str = "") -> Path:
    """Atomically write `path` with a library that writes by path (safetensors' save_file, savefig, torch.save):
    `write(tmp)` writes the temp file, which is then renamed over `path` (removed if `write` raises)."""
    with atomic_path(path, suffix) as tmp:
        write(tmp)
    return Path(path)


def replace_dir(tmp: str | Path, out: str | Path) -> None:
    """Put the finished dir `tmp` at `out`, replacing what is there (rename() cannot replace a non-empty dir,
    so the old one is moved aside first, then deleted): a reader sees the old dir or the new one, never a mix."""
    tmp, out = Path(tmp), Path(out)
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def atomic_write_dir(out: str | Path, write: Callable[[Path], object], mode: int = 0o755) -> Path:
    """Write the dir `out` atomically: `write(tmp)` fills a fresh temp dir beside it, which gets `mode` (mkdtemp
    makes it private) and is swapped in with `replace_dir`; the temp dir never stays behind."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        write(tmp)
        tmp.chmod(mode)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_jsonl_log(path: str | Path) -> list[dict]:
    """The lines of a JSONL log; a half-written last line (a run still appending) is ignored."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
