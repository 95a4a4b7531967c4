"""Prometheus metrics of one server (its own registry, so several servers in one process,
as in the tests, do not collide). Latencies come from the control plane's request times,
the same numbers the per-request record holds; gauges are read at scrape time."""
from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Seconds; wide enough for a CPU rank (slow) and a GPU (fast).
TTFT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                  120.0)
TPOT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
E2E_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServerMetrics:
    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"model_name": model_name}
        r = self.registry
        self.ttft = Histogram("flying_time_to_first_token_seconds", "Arrival to first token",
                              ["model_name"], buckets=TTFT_BUCKETS_S, registry=r).labels(**labels)
        self.tpot = Histogram("flying_time_per_output_token_seconds",
                              "(E2E - TTFT) / (output tokens - 1), per finished request",
                              ["model_name"], buckets=TPOT_BUCKETS_S, registry=r).labels(**labels)
        self.e2e = Histogram("flying_e2e_request_latency_seconds", "Arrival to last token",
                             ["model_name"], buckets=E2E_BUCKETS_S, registry=r).labels(**labels)
        self.prompt_tokens = Counter("flying_prompt_tokens", "Prompt tokens of admitted requests",
                                     ["model_name"], registry=r).labels(**labels)
        self.generation_tokens = Counter("flying_generation_tokens", "Tokens generated",
                                         ["model_name"], registry=r).labels(**labels)
        self._finished = Counter("flying_request_success", "Requests finished, by reason",
                                 ["model_name", "finished_reason"], registry=r)
        self._failed = Counter("flying_request_failure", "Requests that did not finish",
                               ["model_name", "reason"], registry=r)
        self.model_name = model_name
        self._gauges: dict[str, Gauge] = {}
        for name, doc in (("flying_num_requests_waiting", "Requests queued, not yet running"),
                          ("flying_num_requests_running", "Requests running in a batch"),
                          ("flying_kv_cache_usage_ratio", "KV blocks in use / usable blocks"),
                          ("flying_healthy", "1 while every worker is alive, else 0")):
            self._gauges[name] = Gauge(name, doc, ["model_name"], registry=r)

    def read_gauges_from(self, waiting: Callable[[], float], running: Callable[[], float],
                         kv_usage: Callable[[], float], healthy: Callable[[], float]) -> None:
        """Gauges are computed when scraped (the callables run on the scraping thread, which
        for an async route is the event loop that owns the state)."""
        for name, fn in (("flying_num_requests_waiting", waiting),
                         ("flying_num_requests_running", running),
                         ("flying_kv_cache_usage_ratio", kv_usage), ("flying_healthy", healthy)):
            self._gauges[name].labels(model_name=self.model_name).set_function(fn)

    def first_token(self, ttft_s: float) -> None:
        self.ttft.observe(ttft_s)

    def finished(self, reason: str, tpot_s: float | None, e2e_s: float) -> None:
        self._finished.labels(self.model_name, reason).inc()
        self.e2e.observe(e2e_s)
        if tpot_s is not None:
            self.tpot.observe(tpot_s)

    def failed(self, reason: str) -> None:
        self._failed.labels(self.model_name, reason).inc()
