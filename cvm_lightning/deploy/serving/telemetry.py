"""What a server tells about itself: Prometheus metrics, the drift window's state, the models it served.

Three kinds of process write metrics into one ``PROMETHEUS_MULTIPROC_DIR``
(set by :func:`~cvm_lightning.deploy.serving.server.serve` before any of them
imports ``prometheus_client``): the HTTP servers (requests by path and
status, latency, through :class:`HTTPMetrics`), and LitServe's logger
process, whose :class:`ServeLogger` hears of every batch from the inference
workers (``LitAPI.log``) and keeps the drift window, the batch sizes and the
model version. It also writes the server's state (``telemetry.json``) for
``GET /drift`` and the status page.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import time
from pathlib import Path

import litserve as ls

from cvm_lightning.atomic import atomic_write_text
from cvm_lightning.deploy.serving.drift_window import ALL, DriftWindow

log = logging.getLogger("cvm_lightning.serve")
STATE_FILE = "telemetry.json"
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                   0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
ROUTES = ("/", "/predict", "/drift", "/model", "/metrics", "/health", "/info")  # others count as "other"


def configure_logging() -> None:
    """``cvm serve:`` lines on stderr from the package's serving logger, in whichever process logs."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("cvm serve: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


@functools.cache
def http_metrics():
    """This process's request counter and latency histogram."""
    from prometheus_client import Counter, Histogram

    return (Counter("cvm_requests", "HTTP requests answered, by path and status code", ["path", "status"]),
            Histogram("cvm_request_duration_seconds", "Time from request to response", ["path"],
                      buckets=LATENCY_BUCKETS))


@functools.cache
def model_metrics():
    """The logger process's batch-size histogram, drift gauges, model-version gauge and swap counter."""
    from prometheus_client import Counter, Gauge, Histogram

    return {
        "batch": Histogram("cvm_batch_size", "Images per inference batch", buckets=BATCH_BUCKETS),
        "z": Gauge("cvm_drift_z", "Drift statistic of each class's window: standard errors from the reference",
                   ["class_name", "signal"], multiprocess_mode="mostrecent"),
        "drift": Gauge("cvm_drift", "1 while a class's served images drift from the reference, else 0",
                       ["class_name"], multiprocess_mode="mostrecent"),
        "model": Gauge("cvm_model_info", "1 for the model version being served, 0 for those it replaced",
                       ["name", "version"], multiprocess_mode="mostrecent"),
        "swaps": Counter("cvm_model_swaps", "Model files checked for a swap, by outcome", ["outcome"]),
    }


class HTTPMetrics:
    """ASGI middleware: counts each response by path and status code and times it."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def send_and_note(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            path = scope["path"] if scope["path"] in ROUTES else "other"
            requests, latency = http_metrics()
            requests.labels(path, str(status[0])).inc()
            latency.labels(path).observe(time.perf_counter() - start)


class ServeLogger(ls.Logger):
    """LitServe's logger for ``cvm serve``: runs in its own process, fed by the workers' ``self.log`` calls.

    Keys: ``"batch"`` (a batch's predicted ids and drift signals),
    ``"reference"`` (a model's class names and reference statistics) and
    ``"model"`` (a load, swap or refusal).
    """

    def __init__(self, folder: Path, window: int, z_threshold: float) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.window = DriftWindow({}, window, z_threshold)
        self.state: dict = {"started": time.time(), "model": None, "last_swap": None, "last_refusal": None,
                            "events": []}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_config"] = {}  # the /metrics app it mounted stays with the HTTP servers
        return state

    def __setstate__(self, state: dict) -> None:
        # Unpickled in the logger process LitServe spawns, before it reads its queue: a stop signal may reach every
        # process of the server, whose main process stops this one once the HTTP servers have drained.
        self.__dict__.update(state)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        configure_logging()

    def process(self, key: str, value: dict) -> None:
        metrics = model_metrics()
        if key == "batch":
            metrics["batch"].observe(len(value["class_ids"]))
            for event in self.window.add(value["class_ids"], value["nearest"], value["margin"]):
                self._event(event)
        elif key == "reference":
            self.window.set_reference(value["stats"], {int(k): v for k, v in value["classes"].items()})
        elif key == "model":
            self._model_event(value, metrics)
        report = self.window.report()
        for name, judged in [(ALL, report["all"]), *report["classes"].items()]:
            if "z_nearest" in judged:
                metrics["z"].labels(name, "nearest").set(judged["z_nearest"])
                metrics["z"].labels(name, "margin").set(judged["z_margin"])
            metrics["drift"].labels(name).set(1.0 if judged["state"] == "drift" else 0.0)
        atomic_write_text(self.folder / STATE_FILE, json.dumps({**self.state, "drift": report}))

    def _model_event(self, event: dict, metrics: dict) -> None:
        if event["event"] == "refused":
            metrics["swaps"].labels("refused").inc()
            self.state["last_refusal"] = event
            self._event(event)
            return
        if event["event"] == "swapped":
            metrics["swaps"].labels("swapped").inc()
            self.state["last_swap"] = event
            previous = event["previous"]
            if previous["version"] != event["model"]["version"]:
                metrics["model"].labels(previous["name"], previous["version"]).set(0.0)
            self._event(event)
        metrics["model"].labels(event["model"]["name"], event["model"]["version"]).set(1.0)
        self.state["model"] = {**event["model"], "classes": event["classes"], "since": event["time"]}

    def _event(self, event: dict) -> None:
        self.state["events"] = [*self.state["events"], event][-20:]
        if event["event"] == "drift started":
            report = self.window.report()
            judged = report["all"] if event["window"] == ALL else report["classes"][event["window"]]
            log.warning("drift started (%s): the latest images sit %.1f (nearest) and %.1f (margin) standard errors "
                        "from the reference. %s", event["window"], judged.get("z_nearest", 0.0),
                        judged.get("z_margin", 0.0), report["next_step"])
        elif event["event"] == "drift ended":
            log.warning("drift ended (%s): the latest images look like the reference again", event["window"])


def read_state(folder: Path) -> dict:
    """The logger's last state (an empty one before it wrote any)."""
    try:
        return json.loads((Path(folder) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {"model": None, "last_swap": None, "last_refusal": None, "events": [], "drift": None}


def metrics_registry():
    """A registry that gathers every process's metrics, for ``GET /metrics`` and the status page."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    return registry


def request_summary(registry) -> dict:
    """``/predict``'s answers so far: how many succeeded, how many failed, and the latency's p50 and p99 (seconds,
    from the histogram's buckets)."""
    served = failed = 0
    buckets: dict[float, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.labels.get("path") != "/predict":
                continue
            if sample.name == "cvm_requests_total":
                if sample.labels["status"] == "200":
                    served += sample.value
                else:
                    failed += sample.value
            elif sample.name == "cvm_request_duration_seconds_bucket":
                buckets[float(sample.labels["le"])] = sample.value
    return {"served": int(served), "failed": int(failed), "p50": bucket_quantile(buckets, 0.5),
            "p99": bucket_quantile(buckets, 0.99)}


def bucket_quantile(buckets: dict[float, float], q: float) -> float | None:
    """The ``q`` quantile of a cumulative histogram ``{upper bound: count}``, interpolated within its bucket
    (Prometheus' ``histogram_quantile``).

    >>> bucket_quantile({0.01: 50.0, 0.02: 100.0, float("inf"): 100.0}, 0.75)
    0.015
    """
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if not total:
        return None
    rank, low, below = q * total, 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return low
            return low + (bound - low) * (rank - below) / max(count - below, 1e-12)
        low, below = bound, count
    return low
