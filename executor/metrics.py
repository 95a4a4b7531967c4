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
# A flip is milliseconds (views and a handle); a drain is as long as the work it waits for.
FLIP_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)
DRAIN_BUCKETS_S = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


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
        # Layout switches (one observation per completed switch, its SwitchRecord).
        self._switches = Counter("flying_switches", "Layout switches completed, by merge "
                                 "strategy and kind (merge | split | reshape)",
                                 ["model_name", "strategy", "kind"], registry=r)
        self._switch_drain = Histogram("flying_switch_drain_seconds", "Switch requested to "
                                       "every affected group at its switch point",
                                       ["model_name", "strategy"], buckets=DRAIN_BUCKETS_S,
                                       registry=r)
        self.switch_flip = Histogram("flying_switch_flip_seconds", "The flip: every member "
                                     "of the new groups re-pointed (SetWidth round trip)",
                                     ["model_name"], buckets=FLIP_BUCKETS_S,
                                     registry=r).labels(**labels)
        self.switch_recomputed_tokens = Counter(
            "flying_switch_recomputed_tokens", "KV tokens dropped at switches, to be computed "
            "again (soft pre-runs, recompute splits)", ["model_name"], registry=r).labels(**labels)
        self.switch_paused_requests = Counter(
            "flying_switch_paused_requests", "Requests paused by hard preempt, their KV kept",
            ["model_name"], registry=r).labels(**labels)
        self._switch_refused = Counter("flying_switch_refused", "Admin switch requests "
                                       "refused, by reason", ["model_name", "reason"],
                                       registry=r)
        self._gauges: dict[str, Gauge] = {}
        for name, doc in (("flying_num_requests_waiting", "Requests queued, not yet running"),
                          ("flying_num_requests_running", "Requests running in a batch"),
                          ("flying_kv_cache_usage_ratio", "KV blocks in use / usable blocks"),
                          ("flying_healthy", "1 while every worker is alive, else 0"),
                          ("flying_switch_in_progress", "1 while a layout switch is under way"),
                          ("flying_switches_queued", "Switches waiting behind the one under "
                                                     "way"),
                          ("flying_num_requests_paused", "Requests paused by hard preempt, "
                                                         "waiting for their group")):
            self._gauges[name] = Gauge(name, doc, ["model_name"], registry=r)

    def read_gauges_from(self, waiting: Callable[[], float], running: Callable[[], float],
                         kv_usage: Callable[[], float], healthy: Callable[[], float]) -> None:
        """Gauges are computed when scraped (the callables run on the scraping thread, which
        for an async route is the event loop that owns the state)."""
        for name, fn in (("flying_num_requests_waiting", waiting),
                         ("flying_num_requests_running", running),
                         ("flying_kv_cache_usage_ratio", kv_usage), ("flying_healthy", healthy)):
            self._gauges[name].labels(model_name=self.model_name).set_function(fn)

    def read_switch_gauges_from(self, in_progress: Callable[[], float],
                                queued: Callable[[], float], paused: Callable[[], float]) -> None:
        for name, fn in (("flying_switch_in_progress", in_progress),
                         ("flying_switches_queued", queued), ("flying_num_requests_paused", paused)):
            self._gauges[name].labels(model_name=self.model_name).set_function(fn)

    def switch_done(self, kind: str, record) -> None:
        """One completed switch (``policies.switch.SwitchRecord``; ``kind``: merge | split |
        reshape)."""
        self._switches.labels(self.model_name, record.strategy, kind).inc()
        if record.drain_s is not None:
            self._switch_drain.labels(self.model_name, record.strategy).observe(record.drain_s)
        self.switch_flip.observe(record.flip_s)
        self.switch_recomputed_tokens.inc(record.recomputed_tokens)
        self.switch_paused_requests.inc(record.paused_requests)

    def switch_refused(self, reason: str) -> None:
        self._switch_refused.labels(self.model_name, reason).inc()

    def first_token(self, ttft_s: float) -> None:
        self.ttft.observe(ttft_s)

    def finished(self, reason: str, tpot_s: float | None, e2e_s: float) -> None:
        self._finished.labels(self.model_name, reason).inc()
        self.e2e.observe(e2e_s)
        if tpot_s is not None:
            self.tpot.observe(tpot_s)

    def failed(self, reason: str) -> None:
        self._failed.labels(self.model_name, reason).inc()
