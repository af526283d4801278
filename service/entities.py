"""Where added entities live: Redis when configured (shared by every replica), else a file.

A record is the JSON of `Predictor.encode_new_entity` (id, name, description, numeric
attributes, the text embedding, the model fingerprint). Records are kept per model: the key (or
file name) carries the fingerprint, since an embedding belongs to the model that made it.

- `FileStore`: one JSON-lines file in IMF_STATE_DIR, rewritten whole to a temporary name and
  renamed on every addition (never half-written), under an exclusive lock on a sibling lock
  file, so two processes sharing the folder cannot lose each other's additions; a replica
  reads it at start.
- `RedisStore`: a hash id -> record (HSETNX: two replicas adding the same id cannot both win)
  and a sequence number per record, read back in that order. A replica appends what it has not
  served yet, so the order of rows can differ between replicas after concurrent additions;
  answers do not depend on it (entities are addressed by id, every row is scored).

`version()` is cheap (a file's mtime and size, or HLEN): the app polls it every
IMF_ENTITY_SYNC_S and reloads when it changed, so an entity added on one replica is served by
the others within about that long.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Protocol

import redis.asyncio as redis

from model.files import atomic_write

log = logging.getLogger(__name__)


class DuplicateId(Exception):
    pass


class EntityStore(Protocol):
    async def load(self) -> list[dict]: ...
    async def add(self, record: dict) -> None: ...
    async def version(self) -> str: ...
    async def close(self) -> None: ...


class FileStore:
    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.path = Path(folder) / f"entities-{fingerprint[:16]}.jsonl"

    def _read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for lineno, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                log.error("%s:%d: not a JSON record; skipped", self.path, lineno)
        return out

    async def load(self) -> list[dict]:
        return self._read()

    async def add(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Read-modify-write under an exclusive lock held across processes (replicas sharing
        # IMF_STATE_DIR): without it two additions at once would each rewrite the file
        # without the other's record. The lock file is never replaced, so the lock is stable.
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                records = self._read()
                if any(r.get("id") == record["id"] for r in records):
                    raise DuplicateId(record["id"])
                body = "".join(json.dumps(r) + "\n" for r in [*records, record])
                atomic_write((self.path, lambda tmp: tmp.write_text(body, encoding="utf-8")))
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    async def version(self) -> str:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "none"
        return f"{st.st_mtime_ns}:{st.st_size}"

    async def close(self) -> None:
        return None


class RedisStore:
    def __init__(self, url: str, fingerprint: str, timeout_s: float) -> None:
        self.client = redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.key = f"imf:entities:{fingerprint[:16]}"
        self.seq_key = self.key + ":seq"

    async def load(self) -> list[dict]:
        raw = await self.client.hgetall(self.key)
        records = [json.loads(v) for v in raw.values()]
        return sorted(records, key=lambda r: r.get("seq", 0))

    async def add(self, record: dict) -> None:
        record = {**record, "seq": int(await self.client.incr(self.seq_key))}
        if not await self.client.hsetnx(self.key, record["id"], json.dumps(record)):
            raise DuplicateId(record["id"])

    async def version(self) -> str:
        return str(await self.client.hlen(self.key))

    async def close(self) -> None:
        await self.client.aclose()
