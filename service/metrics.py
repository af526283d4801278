"""Prometheus metrics of one app instance (its own registry, so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("imf_requests", "HTTP requests", ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram("imf_request_seconds", "HTTP request latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.cache_hits = Counter("imf_cache_hits", "answers served from the cache", registry=self.registry)
        self.cache_misses = Counter("imf_cache_misses", "answers computed (cache miss)", registry=self.registry)
        self.cache_errors = Counter("imf_cache_errors", "cache backend errors (Redis down or failing)", registry=self.registry)
        self.shared = Counter("imf_singleflight_shared", "misses answered by an identical in-flight computation", registry=self.registry)
        self.shed = Counter("imf_shed", "requests refused with 503: queue full or waited too long", ["reason"], registry=self.registry)
        self.inflight = Gauge("imf_inflight_requests", "admitted API requests not yet answered", registry=self.registry)
        self.pending = Gauge("imf_pending_jobs", "model jobs running or queued", registry=self.registry)
        self.batch_size = Histogram("imf_batch_queries", "queries per scoring pass (the batcher of cache misses)", buckets=BATCH_BUCKETS, registry=self.registry)
        self.ready = Gauge("imf_ready", "1 when the model and index are loaded", registry=self.registry)
        self.cache_up = Gauge("imf_cache_up", "1 when the cache backend answered its last health check", registry=self.registry)
        self.startup = Gauge("imf_startup_seconds", "seconds from start to ready", registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
