"""Finished shards on disk: ``<output>/cmc/shards/shard_NNNNN.npz``, one file per shard.

Rank 0 writes each successful shard atomically as it arrives: its arrays and a ``meta``
JSON text with its scalar fields and a **fingerprint**, a BLAKE2 hash of everything its
draws depend on (run settings and the shard's own points). A rerun with the same
command, config and data reuses the files; stale files are ignored (then overwritten).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_write_npz, to_jsonable
from .sampler import ShardResult

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def shard_folder(output_dir: Path) -> Path:
    """``<output_dir>/cmc/shards``."""
    return Path(output_dir) / "cmc" / "shards"


def shard_path(output_dir: Path, index: int) -> Path:
    """File of shard ``index``."""
    return shard_folder(output_dir) / f"shard_{int(index):05d}.npz"


def _plain(value):
    """Dataclasses, arrays and paths as JSON-ready values (for hashing)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return {"dtype": value.dtype.str, "shape": list(value.shape), "data": value.tolist()}
    return to_jsonable(value) if not isinstance(value, (str, int, float, bool, type(None))) else value


def run_fingerprint(settings: dict) -> str:
    """Hash of the run-wide settings (any JSON-able mix of dataclasses, arrays, scalars)."""
    text = json.dumps(_plain(settings), sort_keys=True, allow_nan=True, default=repr)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=20).hexdigest()


def shard_fingerprint(run_fp: str, index: int, columns: dict[str, np.ndarray]) -> str:
    """Hash of the run fingerprint, the shard index and the shard's point columns."""
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{FORMAT_VERSION}:{run_fp}:{int(index)}".encode())
    for name in sorted(columns):
        array = np.ascontiguousarray(columns[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.data.cast("B"))
    return digest.hexdigest()


def save_shard(output_dir: Path, result: ShardResult, fingerprint: str) -> Path:
    """Write a finished shard atomically; returns the file."""
    meta = dict(result.meta(), fingerprint=fingerprint, format=FORMAT_VERSION)
    return atomic_write_npz(shard_path(output_dir, result.index), meta=np.array(json.dumps(meta)), **result.arrays())


def load_shard(output_dir: Path, index: int, fingerprint: str) -> ShardResult | None:
    """The shard's saved result if its file exists and matches ``fingerprint``, else None."""
    path = shard_path(output_dir, index)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            arrays = {name: archive[name] for name in archive.files if name != "meta"}
    except (OSError, ValueError, KeyError) as error:
        log.warning("CMC: ignoring unreadable checkpoint %s (%s)", path, error)
        return None
    if meta.get("fingerprint") != fingerprint or meta.get("format") != FORMAT_VERSION:
        log.info("CMC: %s was made with other settings or data; shard %d runs again", path.name, index)
        return None
    return dataclasses.replace(ShardResult.from_parts(meta, arrays), reused=True)
