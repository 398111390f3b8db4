"""``GET /operator/api/metrics`` (JSON) and ``GET /metrics`` (Prometheus): the same figures, two faces."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import choose_encoder

from tentaculo import __version__, keys
from tentaculo.auth.tokens import PUBLIC, requires
from tentaculo.http.errors import ValidationFailed
from tentaculo.http.jsonio import json_response
from tentaculo.status.features import feature
from tentaculo.status.metrics import LATENCY_BOUNDS_MS, Series
from tentaculo.status.rollup import QUANTILES, WINDOWS, Figures, summarize

DEFAULT_WINDOW = "5m"
_LE = (*tuple(f"{b / 1000:g}" for b in LATENCY_BOUNDS_MS), "+Inf")


def window_of(request: web.Request) -> str:
    """``?window=`` (default 5m); 422 naming the accepted values."""
    name = request.query.get("window", DEFAULT_WINDOW)
    if name not in WINDOWS:
        raise ValidationFailed([{"field": "window", "message": f"must be one of {', '.join(WINDOWS)}"}],
                               detail=f"unknown window {name!r}")
    return name


def dropped(app: web.Application) -> dict[str, int]:
    """What this instance had to drop, by kind: never silent."""
    return {
        "audit_rows": app[keys.AUDIT].dropped,
        "chat_actions": app[keys.CHAT_LOG].dropped,
        "events": app[keys.EVENTS].publish_dropped,
        "metric_buckets": app[keys.ROLLUP].dropped_buckets,
    }


@feature("metrics")
@requires("read")
async def metrics(request: web.Request) -> web.Response:
    """Request and provider figures of every instance over ``?window=`` (1m, 5m, 1h, 24h)."""
    name = window_of(request)
    rollup = request.app[keys.ROLLUP]
    figures = await rollup.window(WINDOWS[name])
    return json_response({
        "window": name,
        "window_seconds": WINDOWS[name],
        "bucket_seconds": rollup.bucket_seconds,
        **summarize(figures),
        "instance": request.app[keys.SETTINGS].instance,
        "dropped": dropped(request.app),
    })


def _scrape_scope(request: web.Request) -> str:
    return PUBLIC if request.app[keys.SETTINGS].metrics_public else "read"


class _Families:
    """A collector over metric families built for one scrape."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self._families)


def _buckets(s: Series) -> list[tuple[str, float]]:
    running = 0
    out = []
    for le, n in zip(_LE, s.histogram, strict=False):
        running += n
        out.append((le, float(running)))
    return out


def _instance_families(app: web.Application) -> list[Metric]:
    http, providers = app[keys.METRICS].since_start()
    requests = CounterMetricFamily("tentaculo_http_requests", "Requests this instance answered since it started.",
                                   labels=["route", "method", "status_class"])
    latency = HistogramMetricFamily("tentaculo_http_request_duration_seconds",
                                    "Request durations on this instance since it started.",
                                    labels=["route", "method", "status_class"])
    for (route, method, status_class), s in sorted(http.items()):
        requests.add_metric([route, method, status_class], s.count)
        latency.add_metric([route, method, status_class], _buckets(s), s.latency_sum_ms / 1000)
    calls = CounterMetricFamily("tentaculo_provider_calls", "Provider calls of chats on this instance since it started.",
                                labels=["provider", "outcome", "route"])
    call_latency = HistogramMetricFamily("tentaculo_provider_call_duration_seconds",
                                         "Provider call durations on this instance since it started.",
                                         labels=["provider", "outcome", "route"])
    merged: dict[tuple[str, str, str], Series] = {}
    for (route, _method, outcome, provider), s in providers.items():
        merged.setdefault((provider, outcome, route), Series()).merge(s)
    for key, s in sorted(merged.items()):
        calls.add_metric(list(key), s.count)
        call_latency.add_metric(list(key), _buckets(s), s.latency_sum_ms / 1000)
    lost = CounterMetricFamily("tentaculo_dropped", "Records this instance had to drop since it started.",
                               labels=["kind"])
    for kind, n in dropped(app).items():
        lost.add_metric([kind], n)
    info = GaugeMetricFamily("tentaculo_info", "This gateway instance.", labels=["instance", "version"])
    info.add_metric([app[keys.SETTINGS].instance, __version__], 1)
    queued = GaugeMetricFamily("tentaculo_audit_queued", "Audit rows waiting to be written.")
    queued.add_metric([], app[keys.AUDIT].queued)
    clients = GaugeMetricFamily("tentaculo_event_clients", "Event streams this instance serves.")
    clients.add_metric([], app[keys.EVENTS].clients)
    return [requests, latency, calls, call_latency, lost, info, queued, clients]


def _cluster_families(figures: Figures, window: str) -> list[Metric]:
    doc = summarize(figures)
    instances = GaugeMetricFamily("tentaculo_cluster_instances", "Instances with figures in the window.",
                                  labels=["window"])
    instances.add_metric([window], len(doc["instances"]))
    complete = GaugeMetricFamily("tentaculo_cluster_figures_complete",
                                 "1 when every instance's rollups could be read, else 0 (this instance's only).",
                                 labels=["window"])
    complete.add_metric([window], 1 if figures.complete else 0)
    requests = GaugeMetricFamily("tentaculo_cluster_requests", "Requests of every instance in the window.",
                                 labels=["window", "route", "method", "status_class"])
    errors = GaugeMetricFamily("tentaculo_cluster_request_error_ratio", "Share of 5xx answers in the window.",
                               labels=["window", "route", "method"])
    latency = GaugeMetricFamily("tentaculo_cluster_request_latency_seconds",
                                "Latency quantiles (histogram estimates) and max in the window.",
                                labels=["window", "route", "method", "quantile"])
    for r in doc["routes"]:
        for status_class, n in r["status_classes"].items():
            requests.add_metric([window, r["route"], r["method"], status_class], n)
        errors.add_metric([window, r["route"], r["method"]], r["error_rate"])
        _quantiles(latency, [window, r["route"], r["method"]], r["latency_ms"])
    calls = GaugeMetricFamily("tentaculo_cluster_provider_calls", "Provider calls of every instance in the window.",
                              labels=["window", "provider", "outcome"])
    call_latency = GaugeMetricFamily("tentaculo_cluster_provider_latency_seconds",
                                     "Provider call latency quantiles and max in the window.",
                                     labels=["window", "provider", "quantile"])
    for p in doc["providers"]:
        for outcome, n in p["outcomes"].items():
            calls.add_metric([window, p["provider"], outcome], n)
        _quantiles(call_latency, [window, p["provider"]], p["latency_ms"])
    return [instances, complete, requests, errors, latency, calls, call_latency]


def _quantiles(family: GaugeMetricFamily, labels: list[str], view: dict[str, Any]) -> None:
    for name, q in (*QUANTILES, ("max", 1.0)):
        value = view.get(name)
        if value is not None:
            family.add_metric([*labels, f"{q:g}"], value / 1000)


@feature("metrics")
@requires(_scrape_scope)
async def prometheus(request: web.Request) -> web.Response:
    """Prometheus exposition: this instance's counters since start, and every instance's ``?window=``."""
    name = window_of(request)
    figures = await request.app[keys.ROLLUP].window(WINDOWS[name])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(_instance_families(request.app) + _cluster_families(figures, name)))
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encode(registry), headers={"Content-Type": content_type})
