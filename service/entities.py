"""Where added entities live: a durable Redis when configured (shared by every replica), else a file.

A record is the JSON of `Predictor.encode_new_entity` (id, name, description, numeric
attributes, the text embedding, the model fingerprint). Records are kept per model: the key (or
file name) carries the fingerprint, since an embedding belongs to the model that made it. A
store holds at most IMF_MAX_NEW_ENTITIES records; beyond, `add` raises `TooManyEntities` (409).

- `FileStore`: one JSON-lines file in IMF_STATE_DIR, one line appended per record (O_APPEND,
  fsynced before the addition is acknowledged) under an exclusive lock on a sibling lock file,
  taken with a timeout (a process holding it too long makes `add` fail, never hang), so two
  processes sharing the folder cannot lose each other's additions. Every file operation runs in
  a worker thread, never on the event loop. A line torn by a crash in the middle of a write
  (no final newline) is skipped by readers and cut off by the next writer; a replica reads the
  file at start and then only what was appended since.
- `RedisStore`: a hash id -> record, written by one Lua script (atomic, one transaction in the
  append-only file) that refuses a taken id (two replicas adding the same id cannot both win)
  or a full store, and increments a counter whose value is the record's sequence number; read
  back in that order. A replica appends what it has not served yet, so the order of rows can
  differ between replicas after concurrent additions; answers do not depend on it (entities
  are addressed by id, every row is scored). The Redis must keep what it acknowledged: `open`
  checks (CONFIG GET) that it persists (appendonly yes) and never evicts (no allkeys-* policy),
  and a store that fails the check refuses additions (`Unsupported`, 501) with the fix.

`version()` is cheap (a file's inode, mtime and size, or the Redis store's epoch and counter)
and changes with every addition: the app polls it every IMF_ENTITY_SYNC_S and reloads when it
changed, so an entity added on one replica is served by the others within about that long. The
Redis version never repeats: the counter only grows, and a store that lost its keys (reset,
flushed) starts a new epoch, so a replica cannot mistake a refilled store for the one it read.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import anyio
import redis.asyncio as redis
from redis.exceptions import ResponseError

from model.files import fsync_dir, remove_stale_temporaries
from service.errors import TooManyEntities, Unsupported

log = logging.getLogger(__name__)


class DuplicateId(Exception):
    """The id of a record being added is stored already."""


class StoreLocked(TimeoutError):
    """Another process held the file store's lock past the timeout (a TimeoutError: the
    routes answer it 503, nothing added)."""


def _too_many(limit: int) -> TooManyEntities:
    return TooManyEntities(f"this server holds the most added entities allowed ({limit}, IMF_MAX_NEW_ENTITIES); nothing was added")


class EntityStore(Protocol):
    async def open(self) -> None:
        """At start: make the store ready and check it can keep what it acknowledges."""
        ...

    async def ensure_writable(self) -> None:
        """Raise if an addition would be refused now (a store that is not durable, or full), so a
        request fails before the slow encoding; `add` checks again."""
        ...

    async def load(self) -> list[dict]: ...
    async def add(self, record: dict) -> None: ...
    async def version(self) -> str: ...
    async def close(self) -> None: ...


class FileStore:
    """Added entities in a JSON-lines file (see the module docstring)."""

    def __init__(self, folder: Path, fingerprint: str, *, max_entities: int | None = None, lock_timeout_s: float = 5.0) -> None:
        self.path = Path(folder) / f"entities-{fingerprint[:16]}.jsonl"
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.max_entities = max_entities
        self.lock_timeout_s = lock_timeout_s
        # What this process has read of the file: records up to `_offset` (the end of the last
        # complete line) of the file with inode `_inode`, so each read parses only what was
        # appended since. Guarded by `_mem`: reads and additions run in worker threads.
        self._mem = threading.Lock()
        self._inode: int | None = None
        self._offset = 0
        self._records: list[dict] = []
        self._ids: set[str] = set()
        self._torn_warned: tuple[int | None, int] | None = None

    # ---------------------------------------------------------------- in worker threads

    def _refresh(self) -> int:
        """Read what was appended since the last read (everything if the file was replaced or
        shortened); returns the file's size. Caller holds `_mem`."""
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            self._inode, self._offset, self._records, self._ids = None, 0, [], set()
            return 0
        with fh:
            st = os.fstat(fh.fileno())
            if st.st_ino != self._inode or st.st_size < self._offset:
                self._inode, self._offset, self._records, self._ids = st.st_ino, 0, [], set()
            fh.seek(self._offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # only complete lines; a torn tail stays unread
        for line in data[:end].split(b"\n"):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                log.error("%s: a line that is not a JSON record; skipped", self.path)
                continue
            self._records.append(rec)
            self._ids.add(rec.get("id"))
        self._offset += end
        if end < len(data) and self._torn_warned != (self._inode, self._offset):
            self._torn_warned = (self._inode, self._offset)
            log.warning("%s: an incomplete last line (%d bytes: a write in progress, or a crash in the middle of one); skipped", self.path, len(data) - end)
        return self._offset + len(data) - end

    def _load(self) -> list[dict]:
        with self._mem:
            self._refresh()
            return list(self._records)

    def _lock(self) -> int:
        """The exclusive lock shared with every process using this folder, waited for at most
        `lock_timeout_s` (non-blocking attempts: a blocked flock could not be given up);
        returns the locked descriptor."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # The lock file is never replaced, so every process locks the same inode.
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + self.lock_timeout_s
        pause = 0.002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return fd
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise StoreLocked(f"{self.lock_path}: lock held by another process for over {self.lock_timeout_s:g}s") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.05)

    def _unlock(self, fd: int) -> None:
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _open(self) -> None:
        fd = self._lock()  # no writer of ours is between writing and renaming while we hold it
        try:
            # Temporaries of the whole-file rewrites of earlier versions, left by a crash.
            if removed := remove_stale_temporaries(self.path):
                fsync_dir(self.path.parent)
                log.warning("removed %d stale temporary file(s) beside %s: %s", len(removed), self.path, ", ".join(p.name for p in removed))
        finally:
            self._unlock(fd)
        self._load()

    def _check_room(self) -> None:
        if self.max_entities is not None and len(self._ids) >= self.max_entities:
            raise _too_many(self.max_entities)

    def _ensure_writable(self) -> None:
        with self._mem:
            self._refresh()
            self._check_room()

    def _add(self, record: dict) -> None:
        line = (json.dumps(record) + "\n").encode("utf-8")  # json escapes newlines: one line
        fd = self._lock()
        try:
            with self._mem:
                size = self._refresh()
                if record["id"] in self._ids:
                    raise DuplicateId(record["id"])
                self._check_room()
                created = not self.path.exists()
                out = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
                try:
                    if size > self._offset:
                        # A torn line left by a writer that died mid-write (we hold the lock:
                        # nobody is writing): never acknowledged, cut off so that our line
                        # does not continue it.
                        os.ftruncate(out, self._offset)
                        log.warning("%s: cut off an incomplete last line of %d bytes", self.path, size - self._offset)
                    try:
                        view = memoryview(line)
                        while view:
                            view = view[os.write(out, view):]
                        os.fsync(out)  # on disk before the 201
                    except BaseException:
                        os.ftruncate(out, self._offset)  # a full disk: no half line stays behind
                        raise
                finally:
                    os.close(out)
                if created:
                    fsync_dir(self.path.parent)  # the new file's name on disk too
                self._offset += len(line)
                self._records.append(record)
                self._ids.add(record["id"])
        finally:
            self._unlock(fd)

    # ---------------------------------------------------------------- the event loop's side

    async def open(self) -> None:
        await anyio.to_thread.run_sync(self._open)

    async def ensure_writable(self) -> None:
        await anyio.to_thread.run_sync(self._ensure_writable)

    async def load(self) -> list[dict]:
        return await anyio.to_thread.run_sync(self._load)

    async def add(self, record: dict) -> None:
        await anyio.to_thread.run_sync(self._add, record)

    async def version(self) -> str:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "none"
        return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"

    async def close(self) -> None:
        return None


# KEYS: the hash, the counter, the epoch. ARGV: the id, the record's JSON without its closing
# brace (the sequence number is added here, in the same atomic step), the cap (0: none), a
# fresh epoch token (kept only if the store has none). Returns the sequence number, -1 when the
# id is taken, -2 when the store is full.
_ADD_SCRIPT = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return -1 end
local cap = tonumber(ARGV[3])
if cap > 0 and redis.call('HLEN', KEYS[1]) >= cap then return -2 end
redis.call('SETNX', KEYS[3], ARGV[4])
local seq = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '"seq": ' .. seq .. '}')
return seq
"""

DURABLE_FLAGS = "--appendonly yes --appendfsync always --maxmemory-policy noeviction"


def _where(url: str) -> str:
    """Where a Redis URL points, for logs (no credentials)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    """Added entities in a durable Redis (see the module docstring)."""

    def __init__(self, url: str, fingerprint: str, timeout_s: float, *, max_entities: int | None = None) -> None:
        self.url = url
        self.client = redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.key = f"imf:entities:{fingerprint[:16]}"
        self.seq_key = self.key + ":seq"
        self.epoch_key = self.key + ":epoch"
        self.max_entities = max_entities
        self._script = self.client.register_script(_ADD_SCRIPT)
        self.checked = False  # the durability check ran (it is retried until Redis answers)
        self.refusal: str | None = None  # why additions are refused, when the check failed

    async def open(self) -> None:
        """Check the Redis keeps what it acknowledges: AOF on (a restart keeps every write) and
        no allkeys-* eviction (a full Redis would delete entities; the volatile-* policies only
        evict keys with a TTL, which entities never have). A Redis that fails refuses additions
        (`refusal`, logged as an error naming the fix); one that forbids CONFIG (a managed
        service) cannot be checked and is used with a warning. Redis errors propagate (down at
        start: `ensure_writable` checks again)."""
        where = _where(self.url)
        try:
            config = {}
            for name in ("maxmemory-policy", "appendonly", "appendfsync"):
                config.update({_text(k): _text(v) for k, v in (await self.client.config_get(name)).items()})
        except ResponseError as exc:  # CONFIG renamed or forbidden (managed Redis)
            log.warning(
                "entity store %s: CONFIG GET is not allowed (%s), so it cannot be checked: make sure it persists every write "
                "(append-only file) and never evicts (maxmemory-policy noeviction), or added entities can be lost", where, exc,
            )
            self.checked = True
            return
        policy, aof, fsync = config.get("maxmemory-policy", "?"), config.get("appendonly", "?"), config.get("appendfsync", "?")
        problems = []
        if policy.startswith("allkeys-"):
            problems.append(f"maxmemory-policy is {policy} (it evicts entities when memory is full)")
        if aof != "yes":
            problems.append(f"appendonly is {aof} (a restart loses the entities)")
        if problems:
            # The client learns what is wrong and the fix; the log also says where (no URL in answers).
            self.refusal = (
                f"adding entities is disabled on this server: its entity store (Redis) is not durable: {'; '.join(problems)}. "
                f"Point IMF_STORE_REDIS_URL at a Redis started with {DURABLE_FLAGS}"
            )
            log.error("entity store %s refused: %s", where, self.refusal)
        else:
            self.refusal = None
            if fsync != "always":
                log.warning("entity store %s: appendfsync is %s: an acknowledged entity can be lost if the host fails (use appendfsync always)", where, fsync)
        self.checked = True

    async def ensure_writable(self) -> None:
        if not self.checked:
            await self.open()
        if self.refusal is not None:
            raise Unsupported(self.refusal)
        if self.max_entities is not None and await self.client.hlen(self.key) >= self.max_entities:
            raise _too_many(self.max_entities)

    async def load(self) -> list[dict]:
        raw = await self.client.hgetall(self.key)
        records = [json.loads(v) for v in raw.values()]
        return sorted(records, key=lambda r: r.get("seq", 0))

    async def add(self, record: dict) -> None:
        if not self.checked:
            await self.open()
        if self.refusal is not None:
            raise Unsupported(self.refusal)
        head = json.dumps({k: v for k, v in record.items() if k != "seq"})[:-1]
        head += ", " if head != "{" else ""
        keys = [self.key, self.seq_key, self.epoch_key]
        seq = int(await self._script(keys=keys, args=[record["id"], head, self.max_entities or 0, uuid.uuid4().hex]))
        if seq == -1:
            raise DuplicateId(record["id"])
        if seq == -2:
            raise _too_many(self.max_entities or 0)

    async def version(self) -> str:
        epoch, seq = await self.client.mget(self.epoch_key, self.seq_key)
        if epoch is None and seq is None:
            return "none"
        return f"{_text(epoch) if epoch is not None else '-'}:{_text(seq) if seq is not None else 0}"

    async def close(self) -> None:
        await self.client.aclose()
