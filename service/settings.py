"""Runtime settings of the service, from `IMF_*` environment variables (pydantic-settings).

Validated when the app is created, so a typo in a port or a negative TTL stops the process at
start with a message naming the variable, instead of failing on the first request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.index import DEFAULT_CANDIDATES, DEFAULT_NPROBE, DEFAULT_REFINE_FACTOR, EXHAUSTIVE_MAX_ENTITIES

DEFAULT_BUNDLE = Path("artifacts/default")
MAX_BATCH_LIMIT = 10_000  # the largest IMF_MAX_BATCH (also the schema's bound on a batch)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMF_", extra="ignore", frozen=True)

    bundle: Path = Field(DEFAULT_BUNDLE, description="checkpoint bundle directory (IMF_BUNDLE)")
    host: str = Field("127.0.0.1", description="listen address (IMF_HOST); 0.0.0.0 in containers")
    port: int = Field(8000, ge=1, le=65535, description="listen port (IMF_PORT)")
    redis_url: str | None = Field(None, description="redis://host:port/db; unset = in-process LRU cache (IMF_REDIS_URL)")
    store_redis_url: str | None = Field(None, description="durable Redis for added entities (append-only file, noeviction); unset: IMF_REDIS_URL, which must then be configured so (checked at start) (IMF_STORE_REDIS_URL)")
    redis_timeout_s: float = Field(0.25, gt=0, le=30, description="socket timeout of each Redis call")
    api_key: SecretStr | None = Field(None, description="when set, required as X-API-Key or Bearer token (IMF_API_KEY)")
    cache_ttl_s: int = Field(3600, ge=1, description="lifetime of a cached answer, seconds (IMF_CACHE_TTL_S)")
    cache_size: int = Field(50_000, ge=1, description="entries of the in-process LRU cache (IMF_CACHE_SIZE)")
    cache_bytes: int = Field(256 * 2**20, ge=1024, description="bytes (keys + answers) of the in-process LRU cache (IMF_CACHE_BYTES)")
    candidates: int = Field(DEFAULT_CANDIDATES, ge=1, le=100_000, description="K': candidates retrieved by FAISS, then rescored exactly (IMF_CANDIDATES)")
    max_k: int = Field(100, ge=1, le=10_000, description="largest k a request may ask for (IMF_MAX_K)")
    max_batch: int = Field(64, ge=1, le=MAX_BATCH_LIMIT, description="most queries in one /predict/batch request (IMF_MAX_BATCH)")
    max_body_bytes: int = Field(1_000_000, ge=1_000, description="largest request body; larger gets 413 (IMF_MAX_BODY_BYTES)")
    body_timeout_s: float = Field(5.0, gt=0, le=600, description="longest a request body may take to arrive; slower gets 408, and it holds no slot meanwhile (IMF_BODY_TIMEOUT_S)")
    max_connections: int = Field(1024, ge=1, le=1_000_000, description="open connections at once; beyond, new requests get 503 from the HTTP server (IMF_MAX_CONNECTIONS)")
    trusted_hosts: str = Field("", description="comma list of Host header values accepted (DNS-rebinding guard); empty: localhost, 127.0.0.1, ::1 and IMF_HOST; * accepts any (IMF_TRUSTED_HOSTS)")
    index: Literal["auto", "exact", "flat", "ivf", "ivfpq", "hnsw"] = Field("auto", description=f"candidate retrieval: a FAISS index type, or exact (score every entity); auto = exact below {EXHAUSTIVE_MAX_ENTITIES:,} entities, ivfpq from there (IMF_INDEX)")
    nprobe: int = Field(DEFAULT_NPROBE, ge=1, description="IVF lists visited per search (IMF_NPROBE)")
    refine_factor: int = Field(DEFAULT_REFINE_FACTOR, ge=1, le=64, description="ivfpq: exact re-ranking of refine_factor x K' codes (IMF_REFINE_FACTOR)")
    table_dtype: Literal["auto", "float32", "float16"] = Field("auto", description=f"how the entity tables are stored; auto = float32 up to {EXHAUSTIVE_MAX_ENTITIES:,} entities, float16 above (half the memory; queries and scores stay float32/float64) (IMF_TABLE_DTYPE)")
    torch_threads: int = Field(1, ge=1, le=256, description="intra-op threads per request (IMF_TORCH_THREADS)")
    faiss_threads: int = Field(1, ge=1, le=256, description="OpenMP threads of FAISS (IMF_FAISS_THREADS)")
    workers: int = Field(2, ge=1, le=256, description="requests computed at once, off the event loop (IMF_WORKERS)")
    batch_size: int = Field(64, ge=1, le=4096, description="most queries scored in one pass: the cache misses of concurrent requests are batched up to this; 1 turns batching off (IMF_BATCH_SIZE)")
    batch_wait_ms: float = Field(0.0, ge=0, le=100, description="how long a batch waits for more queries while a worker is free; 0: it goes at once, and batches form from what waits while every worker is busy (IMF_BATCH_WAIT_MS)")
    max_pending: int = Field(64, ge=1, le=100_000, description="API requests in progress at once; more get 503 + Retry-After at once (IMF_MAX_PENDING)")
    request_timeout_s: float = Field(10.0, gt=0, le=600, description="longest a request waits for its model job; then 503 + Retry-After (IMF_REQUEST_TIMEOUT_S)")
    keepalive_s: float = Field(30.0, gt=0, le=3600, description="idle keep-alive connections are closed after this long; above common clients' own expiry (httpx 5 s) so a client never reuses a connection the server is closing (IMF_KEEPALIVE_S)")
    shutdown_timeout_s: float = Field(10.0, gt=0, le=600, description="on SIGTERM: in-flight requests get this long to finish (IMF_SHUTDOWN_TIMEOUT_S)")
    allow_new_entities: bool = Field(False, description="enable POST /entities: new entities from a name, description and numbers (IMF_ALLOW_NEW_ENTITIES)")
    allow_keyless_entities: bool = Field(False, description="allow IMF_ALLOW_NEW_ENTITIES without IMF_API_KEY on a non-loopback IMF_HOST (otherwise refused at start) (IMF_ALLOW_KEYLESS_ENTITIES)")
    max_new_entities: int = Field(10_000, ge=1, le=10_000_000, description="most entities that may be added to one model; beyond, POST /entities answers 409 (IMF_MAX_NEW_ENTITIES)")
    state_dir: Path = Field(Path("state"), description="writable folder for added entities when Redis is not configured; never inside the bundle (IMF_STATE_DIR)")
    entity_sync_s: float = Field(1.0, gt=0, le=3600, description="how often a replica looks for entities added by others (IMF_ENTITY_SYNC_S)")
    max_entity_text: int = Field(2000, ge=10, le=100_000, description="most characters of a new entity's name + description (IMF_MAX_ENTITY_TEXT)")
    save_index: bool = Field(True, description="write a built index into the bundle when writable (IMF_SAVE_INDEX)")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="IMF_LOG_LEVEL")

    @field_validator("redis_url", "store_redis_url")
    @classmethod
    def _redis_scheme(cls, v: str | None) -> str | None:
        if v is None or v.strip() == "":
            return None
        if not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return v

    @field_validator("api_key")
    @classmethod
    def _key_not_blank(cls, v: SecretStr | None) -> SecretStr | None:
        # An empty key would match an empty X-API-Key header: refuse it rather than guess.
        if v is not None and not v.get_secret_value().strip():
            raise ValueError("must not be empty or blank; unset IMF_API_KEY to serve without a key")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.allow_new_entities and self.redis_url is None:
            bundle, state = self.bundle.resolve(), self.state_dir.resolve()
            if state == bundle or state.is_relative_to(bundle):
                raise ValueError(f"IMF_STATE_DIR ({self.state_dir}) must not be inside the bundle ({self.bundle}): bundles are read-only")
        if self.max_k > self.candidates:
            raise ValueError(f"IMF_MAX_K ({self.max_k}) must not exceed IMF_CANDIDATES ({self.candidates})")
        if self.allow_new_entities and self.api_key is None and not self.allow_keyless_entities and not _loopback(self.host):
            raise ValueError(
                f"IMF_ALLOW_NEW_ENTITIES on {self.host} without IMF_API_KEY would let anyone who reaches the port add entities: "
                "set IMF_API_KEY, bind IMF_HOST to 127.0.0.1, or set IMF_ALLOW_KEYLESS_ENTITIES=true to say so explicitly"
            )
        return self

    @property
    def allowed_hosts(self) -> list[str]:
        """The Host header values accepted: IMF_TRUSTED_HOSTS, or the loopback names and IMF_HOST."""
        given = [h.strip() for h in self.trusted_hosts.split(",") if h.strip()]
        if given:
            return given
        hosts = ["localhost", "127.0.0.1", "::1", "[::1]"]
        if self.host not in ("0.0.0.0", "::", "") and self.host not in hosts:
            hosts.append(self.host)
        return hosts


def _loopback(host: str) -> bool:
    """Whether a listen address is reachable from this machine only."""
    return host in ("localhost", "::1") or host.startswith("127.")
