"""A folder of result shards with a manifest: what `cream localize --ray` writes. Each shard is
written to a temporary file and renamed, so a shard on disk is always complete; the shards
themselves are the record of what is done, and a re-run skips the inputs they hold."""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .atomic import atomic_path, write_json
from .errors import CreamError, OutputError

__all__ = ["SHARDS_FORMAT", "SHARD_FORMATS", "ShardFolder", "parquet_schema"]

SHARDS_FORMAT = "cream_rt.localize_shards"
SHARDS_VERSION = 1
SHARD_FORMATS = ("jsonl", "parquet")
MANIFEST_NAME = "manifest.json"


def parquet_schema() -> Any:
    """The Parquet columns of a localization record (an error row has only image and error)."""
    import pyarrow as pa

    return pa.schema([("image", pa.string()), ("class_id", pa.int64()), ("class_name", pa.string()),
                      ("score", pa.float64()), ("boxes", pa.list_(pa.list_(pa.float64()))),
                      ("image_size", pa.list_(pa.int64())), ("box_source", pa.string()), ("error", pa.string())])


class ShardFolder:
    """`DIR/part-RRRR-SSSSSS.{jsonl,parquet}` shards plus `DIR/manifest.json`, which lists the
    shards, the model (path and SHA-256) and each run. A folder holding another model's results,
    another shard format or files that are not ours is refused."""

    def __init__(self, folder: str | os.PathLike, fmt: str, model_sha256: str, model: str):
        if fmt not in SHARD_FORMATS:
            raise CreamError(f"--shard-format must be one of {', '.join(SHARD_FORMATS)}, got {fmt!r}")
        self.folder, self.format, self.model_sha256 = Path(folder), fmt, model_sha256
        self.manifest_path = self.folder / MANIFEST_NAME
        self.manifest = self._open(model)
        self._lock = None  # taken by start_run, which creates the folder
        self._read: dict[str, list[tuple[str, bool]]] = {}  # shard name -> its rows (resume reads each once)
        self.run = len(self.manifest["runs"])
        self._sequence = 0
        self._last_manifest = 0.0

    def _open(self, model: str) -> dict:
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputError(f"--out {self.folder}: exists and is not a folder (--ray writes a folder of shards)")
        if self.manifest_path.is_file():
            try:
                manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
                if manifest.get("format") != SHARDS_FORMAT or not isinstance(manifest.get("runs"), list):
                    raise ValueError("format")
            except (ValueError, OSError, UnicodeDecodeError):
                raise OutputError(f"--out {self.folder}: {MANIFEST_NAME} is not a cream localize --ray manifest") \
                    from None
            if manifest.get("model_sha256") != self.model_sha256:
                raise OutputError(f"--out {self.folder}: holds results of another model ({manifest.get('model')}); "
                                  "use a new folder")
            if manifest.get("shard_format") != self.format:
                raise OutputError(f"--out {self.folder}: holds {manifest.get('shard_format')} shards; pass "
                                  f"--shard-format {manifest.get('shard_format')} to resume")
            return manifest
        if self.folder.is_dir():
            foreign = [p.name for p in self.folder.iterdir() if not p.name.startswith(".")]
            if foreign:
                raise OutputError(f"--out {self.folder}: exists and is not a cream localize --ray folder "
                                  f"(no {MANIFEST_NAME}; holds {foreign[0]})")
        return {"format": SHARDS_FORMAT, "version": SHARDS_VERSION, "model": model, "model_sha256": self.model_sha256,
                "shard_format": self.format, "shards": [], "runs": []}

    def _take_lock(self):
        """An exclusive lock on `DIR/.lock` for this writer's life: two runs on one folder would
        pick the same shard names. Released when the process ends, however it ends."""
        import fcntl

        handle = open(self.folder / ".lock", "a")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise OutputError(f"--out {self.folder}: another `cream localize --ray` is writing to this folder") \
                from None
        return handle

    def close(self) -> None:
        """Release the folder's lock."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> "ShardFolder":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def shard_files(self) -> list[Path]:
        """Every complete shard on disk (listed in the manifest or written after its last update)."""
        return sorted(self.folder.glob(f"part-*.{self.format}")) if self.folder.is_dir() else []

    def done(self) -> Counter:
        """How many records each input (as written in the `image` field) already has."""
        counts: Counter = Counter()
        for shard in self.shard_files():
            counts.update(image for image, _ in self._rows(shard))
        return counts

    def _rows(self, shard: Path) -> list[tuple[str, bool]]:
        """(image, is an error row) of each record of a shard, read once per run."""
        if shard.name not in self._read:
            self._read[shard.name] = self._read_rows(shard)
        return self._read[shard.name]

    def _read_rows(self, shard: Path) -> list[tuple[str, bool]]:
        try:
            if self.format == "parquet":
                import pyarrow.parquet as pq

                table = pq.read_table(shard, columns=["image", "error"])
                return [(image, error is not None) for image, error in
                        zip(table.column("image").to_pylist(), table.column("error").to_pylist())]
            records = [json.loads(line) for line in shard.read_text(encoding="utf-8").splitlines() if line]
            return [(r["image"], "error" in r) for r in records]
        except Exception as exc:  # a shard edited or damaged after it was written
            raise OutputError(f"{shard}: not a readable result shard ({exc.__class__.__name__}); remove it to "
                              "redo its images") from None

    def start_run(self, info: dict) -> None:
        """Create the folder if needed, lock it for this writer and record the run's start."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"--out {self.folder}: cannot create the folder ({exc.strerror})") from None
        self._lock = self._take_lock()
        self.manifest["runs"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info})
        self._sync_shards()
        self.write_manifest()

    def write(self, records: Iterable[dict]) -> Path:
        """One shard of `records`, renamed into place when complete."""
        records = list(records)
        self._sequence += 1
        target = self.folder / f"part-{self.run:04d}-{self._sequence:06d}.{self.format}"
        with atomic_path(target, "--out shard") as tmp:
            if self.format == "parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq

                pq.write_table(pa.Table.from_pylist(records, schema=parquet_schema()), tmp)
            else:
                with open(tmp, "w", encoding="utf-8") as handle:
                    handle.writelines(json.dumps(r) + "\n" for r in records)
        self.manifest["shards"].append({"file": target.name, "rows": len(records),
                                        "errors": sum("error" in r for r in records)})
        if time.monotonic() - self._last_manifest > 5.0:  # the shards are the truth; the manifest catches up
            self.write_manifest()
        return target

    def finish(self, info: dict) -> dict:
        """Record the run's end (`complete`, counts) and write the manifest."""
        self.manifest["runs"][-1].update({"finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **info})
        self.manifest["complete"] = bool(info.get("complete"))
        self.write_manifest()
        return self.manifest

    def write_manifest(self) -> None:
        shards = self.manifest["shards"]
        self.manifest["rows"] = sum(s["rows"] for s in shards)
        self.manifest["errors"] = sum(s["errors"] for s in shards)
        write_json(self.manifest_path, self.manifest, what="--out manifest")
        self._last_manifest = time.monotonic()

    def _sync_shards(self) -> None:
        """Shards written after the last manifest update of a killed run are added to it."""
        listed = {s["file"] for s in self.manifest["shards"]}
        for shard in self.shard_files():
            if shard.name not in listed:
                rows = self._rows(shard)
                self.manifest["shards"].append({"file": shard.name, "rows": len(rows),
                                                "errors": sum(error for _, error in rows)})
        for stale in self.folder.glob(".part-*.tmp"):  # a shard cut off by a kill: never counted, removed
            stale.unlink(missing_ok=True)
