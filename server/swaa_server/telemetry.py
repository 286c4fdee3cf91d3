"""Prometheus metrics and structured (structlog JSON) request logs, both fed by AsyncEngine listeners."""

from __future__ import annotations

import logging
import sys

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from swaa_engine.outputs import StreamChunk

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)
# the engine's own step count and step wall time (counters: exposed with a ``_total`` suffix); named once here for the
# collector and for ``step_totals``, which reads them back from a scrape
STEPS_METRIC = "swaa_engine_steps"
STEP_SECONDS_METRIC = "swaa_engine_step_seconds"


class _EngineCollector:
    """Gauges read at scrape time (never stale): one sample set per engine, labelled by replica when there are several."""

    def __init__(self, metrics: "Metrics"):
        self.metrics = metrics

    def collect(self):
        names = list(self.metrics.labels) + list(self.metrics.extra_label_names)
        loads = self.metrics.loads() if self.metrics.loads is not None else []
        fams = {
            "running": GaugeMetricFamily("swaa_num_requests_running", "requests running in the engine", labels=names),
            "waiting": GaugeMetricFamily("swaa_num_requests_waiting", "requests waiting in the engine", labels=names),
            "perc": GaugeMetricFamily("swaa_cache_usage_ratio", "fraction of the KV pool in use (paged blocks or rings)",
                                      labels=names + ["pool"]),
            "used": GaugeMetricFamily("swaa_cache_used", "KV pool units in use (blocks or rings)", labels=names + ["pool"]),
            "total": GaugeMetricFamily("swaa_cache_capacity", "KV pool units (blocks or rings)", labels=names + ["pool"]),
            "pre": CounterMetricFamily("swaa_preemptions", "sequences preempted for lack of cache, by what became of "
                                       "their KV: swapped to host memory, or dropped and recomputed", labels=names + ["kind"]),
            "swapped": CounterMetricFamily("swaa_swapped_bytes", "KV bytes copied to host memory by preemptions",
                                           labels=names),
            "recomputed": CounterMetricFamily("swaa_recomputed_tokens", "tokens whose KV preemption dropped (computed "
                                              "again)", labels=names),
            "swap_used": GaugeMetricFamily("swaa_swap_used_bytes", "host memory holding swapped KV now", labels=names),
            "cached": GaugeMetricFamily("swaa_cache_cached", "KV pool units holding cached prefixes only (freed on "
                                        "demand)", labels=names + ["pool"]),
            "pfx_q": CounterMetricFamily("swaa_prefix_cache_queried_tokens", "prompt tokens looked up in the prefix "
                                         "cache at admission", labels=names),
            "pfx_h": CounterMetricFamily("swaa_prefix_cache_hit_tokens", "prompt tokens reused from the prefix cache "
                                         "(rate / queried rate = hit rate)", labels=names),
            "steps": CounterMetricFamily(STEPS_METRIC, "engine steps that ran a batch", labels=names),
            "step_s": CounterMetricFamily(STEP_SECONDS_METRIC, "time spent in those steps (rate / steps rate = "
                                          "mean step time)", labels=names),
        }
        for extra, snap in loads:
            values = list(self.metrics.labels.values()) + [extra.get(n, "") for n in self.metrics.extra_label_names]
            fams["running"].add_metric(values, snap.running)
            fams["waiting"].add_metric(values, snap.waiting)
            for pool, u in snap.usage.items():
                fams["perc"].add_metric(values + [pool], u["used"] / u["total"] if u["total"] else 0.0)
                fams["used"].add_metric(values + [pool], u["used"])
                fams["total"].add_metric(values + [pool], u["total"])
                fams["cached"].add_metric(values + [pool], u.get("cached", 0))
            prefix = snap.prefix
            fams["pfx_q"].add_metric(values, prefix.get("queried_tokens", 0))
            fams["pfx_h"].add_metric(values, prefix.get("hit_tokens", 0))
            pre = snap.preemptions
            fams["pre"].add_metric(values + ["swap"], pre.get("swapped", 0))
            fams["pre"].add_metric(values + ["recompute"], pre.get("recomputed", 0))
            fams["swapped"].add_metric(values, pre.get("swapped_bytes", 0))
            fams["recomputed"].add_metric(values, pre.get("recomputed_tokens", 0))
            fams["swap_used"].add_metric(values, pre.get("swap_used_bytes", 0))
            fams["steps"].add_metric(values, snap.steps)
            fams["step_s"].add_metric(values, snap.step_seconds)
        yield from fams.values()
        if self.metrics.ready is not None:
            g = GaugeMetricFamily("swaa_replicas_ready", "engine replicas answering now", labels=list(self.metrics.labels))
            g.add_metric(list(self.metrics.labels.values()), self.metrics.ready())
            yield g


class Metrics:
    """Request histograms and token counters (a listener), engine gauges (a collector), one registry.

    ``extra_label_names`` (e.g. ``("replica",)``) label every series; the router passes their values to
    ``on_finish``. ``loads``/``ready`` are set once the frontend exists (``watch``)."""

    def __init__(self, labels: dict[str, str] | None = None, registry: CollectorRegistry | None = None,
                 extra_label_names: tuple[str, ...] = ()):
        self.labels = dict(labels or {})
        self.extra_label_names = tuple(extra_label_names)
        self.registry = registry or CollectorRegistry()
        self.loads = None
        self.ready = None
        names = list(self.labels) + list(self.extra_label_names)

        def hist(name, doc, buckets):
            return Histogram(name, doc, names, registry=self.registry, buckets=buckets)

        self.ttft = hist("swaa_time_to_first_token_seconds", "arrival to first generated token", _LATENCY_BUCKETS)
        self.tpot = hist("swaa_time_per_output_token_seconds", "mean time between generated tokens of a request", _TPOT_BUCKETS)
        self.e2e = hist("swaa_e2e_request_latency_seconds", "arrival to finish", _LATENCY_BUCKETS)
        self.queue = hist("swaa_request_queue_time_seconds", "arrival to first scheduled", _LATENCY_BUCKETS)
        self.prompt_tokens = Counter("swaa_prompt_tokens", "prompt tokens of finished requests", names, registry=self.registry)
        self.generation_tokens = Counter("swaa_generation_tokens", "generated tokens", names, registry=self.registry)
        self.requests = Counter("swaa_requests", "finished requests by finish reason", names + ["finish_reason"],
                                registry=self.registry)
        self.registry.register(_EngineCollector(self))
        self._http = None

    def watch(self, loads, ready=None) -> None:
        """``loads()`` → [(extra labels, EngineSnapshot)]; ``ready()`` → replicas ready (replica mode only)."""
        self.loads, self.ready = loads, ready

    def _l(self, m, extra: dict, **more):
        labels = {**self.labels, **{n: extra.get(n, "") for n in self.extra_label_names}, **more}
        return m.labels(**labels) if labels else m

    def on_accept(self, request_id, prompt, params) -> None:
        pass

    def on_finish(self, chunk: StreamChunk, **extra) -> None:
        t, u = chunk.timings, chunk.usage
        self._l(self.requests, extra, finish_reason=chunk.finish_reason.value).inc()
        self._l(self.prompt_tokens, extra).inc(u.prompt_tokens)
        self._l(self.generation_tokens, extra).inc(u.completion_tokens)
        self._l(self.e2e, extra).observe(t.total_s)
        self._l(self.queue, extra).observe(t.queue_s)
        if t.ttft_s is not None:
            self._l(self.ttft, extra).observe(t.ttft_s)
            if u.completion_tokens > 1:
                self._l(self.tpot, extra).observe((t.total_s - t.ttft_s) / (u.completion_tokens - 1))

    def serve_http(self, host: str, port: int) -> int:
        """Expose /metrics; returns the bound port (``port`` 0 picks a free one)."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()


def step_totals(text: str) -> dict[str, tuple[int, float]]:
    """A /metrics scrape → {replica label: (engine steps, step seconds)} so far; one in-process engine (no replica
    label) is ``"0"``. Replicas that are not ready are absent from the scrape, hence from the result."""
    from prometheus_client.parser import text_string_to_metric_families

    got: dict[str, dict[str, float]] = {}
    for fam in text_string_to_metric_families(text):
        if fam.name not in (STEPS_METRIC, STEP_SECONDS_METRIC):
            continue
        for s in fam.samples:
            if s.name == fam.name + "_total":  # not the ``_created`` sample
                got.setdefault(s.labels.get("replica", "0"), {})[fam.name] = s.value
    return {r: (int(v.get(STEPS_METRIC, 0)), float(v.get(STEP_SECONDS_METRIC, 0.0))) for r, v in sorted(got.items())}


def configure_logging(fmt: str = "json", level: str = "info") -> None:
    """structlog to stderr: one JSON object per line (``fmt="console"`` for humans). Also routes stdlib logging."""
    lvl = getattr(logging, level.upper())
    if fmt == "json" or not sys.stderr.isatty():
        # progress bars (transformers/huggingface_hub tqdm) are for a person at a terminal; in a JSON log they are noise
        import os

        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    shared = [structlog.contextvars.merge_contextvars, structlog.processors.add_log_level,
              structlog.processors.TimeStamper(fmt="iso", utc=True)]
    structlog.configure(processors=shared + [structlog.processors.format_exc_info, renderer],
                        wrapper_class=structlog.make_filtering_bound_logger(lvl),
                        logger_factory=structlog.PrintLoggerFactory(sys.stderr), cache_logger_on_first_use=False)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(processors=[
        structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer], foreign_pre_chain=shared))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(lvl)


class RequestLog:
    """One event when a request is accepted and one when it ends, each with its request id.
    Prompt text is left out unless ``log_prompts`` (it may hold personal data)."""

    def __init__(self, log_prompts: bool = False, **bind):
        self.log = structlog.get_logger("swaa.request").bind(**bind)
        self.log_prompts = log_prompts

    def on_accept(self, request_id, prompt, params) -> None:
        kind = "text" if isinstance(prompt, str) else "chat" if prompt and isinstance(prompt[0], dict) else "token_ids"
        extra = {"prompt": prompt} if self.log_prompts else {}
        self.log.info("request.accepted", request_id=request_id, prompt_kind=kind,
                      max_tokens=getattr(params, "max_tokens", None), temperature=getattr(params, "temperature", None), **extra)

    def on_finish(self, chunk: StreamChunk, **extra) -> None:
        t, u = chunk.timings, chunk.usage
        self.log.info("request.finished", request_id=chunk.request_id, finish_reason=chunk.finish_reason.value, **extra,
                      prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                      queue_s=round(t.queue_s, 4), ttft_s=None if t.ttft_s is None else round(t.ttft_s, 4),
                      total_s=round(t.total_s, 4))
