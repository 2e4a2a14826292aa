"""A real Prometheus on loopback scraping every second, and a tiny exporter whose numbers a test sets."""

from __future__ import annotations

import http.server
import json
import math
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml

from tests.e2e.processes import ManagedProcess, free_port, http_ok, wait_until

# Prometheus 3 refuses a scrape whose Content-Type it cannot read; this is the classic text format.
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


class MetricsExporter:
    """An HTTP server on 127.0.0.1 answering /metrics with the samples a test `set`s (text format 0.0.4)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._types: dict[str, str] = {}
        exporter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.render().encode()
                self.send_response(200 if self.path.startswith("/metrics") else 404)
                self.send_header("Content-Type", TEXT_FORMAT)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass  # one line per scrape every second would drown the test output

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-exporter", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        """host:port, as a Prometheus static target."""
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def set(
        self, name: str, value: float, labels: Mapping[str, str] | None = None, *, metric_type: str = "gauge"
    ) -> None:
        """Set one sample (name + labels) to `value`; `metric_type` is the # TYPE line (gauge, counter...)."""
        with self._lock:
            self._types[name] = metric_type
            self._samples[(name, tuple(sorted((labels or {}).items())))] = value

    def render(self) -> str:
        """The current samples in Prometheus text format."""
        with self._lock:
            lines: list[str] = []
            for name, metric_type in sorted(self._types.items()):
                lines.append(f"# TYPE {name} {metric_type}")
                for (sample, labels), value in sorted(self._samples.items()):
                    if sample == name:
                        lines.append(f"{name}{_labels(labels)} {_number(value)}")
            return "\n".join(lines) + "\n"

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    esc = [(k, v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")) for k, v in labels]
    return "{" + ",".join(f'{k}="{v}"' for k, v in esc) + "}"


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class Prometheus:
    """The pinned Prometheus on 127.0.0.1 with a scrape config the test writes; queried over its HTTP API."""

    def __init__(self, binary: Path, work_dir: Path, log_dir: Path, scrape_interval: str = "1s") -> None:
        self.binary = binary
        self.work_dir = work_dir
        self.log_dir = log_dir
        self.scrape_interval = scrape_interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_file = work_dir / "prometheus.yml"
        self.process: ManagedProcess | None = None

    @classmethod
    def start(
        cls,
        binary: Path,
        work_dir: Path,
        log_dir: Path,
        targets: Sequence[str] = (),
        *,
        scrape_configs: Sequence[Mapping[str, Any]] | None = None,
        scrape_interval: str = "1s",
    ) -> Prometheus:
        """Start scraping `targets` (host:port, job "e2e") or the given scrape_configs; wait until ready."""
        work_dir.mkdir(parents=True, exist_ok=True)
        prom = cls(binary, work_dir, log_dir, scrape_interval)
        prom._write_config(targets, scrape_configs)
        prom.process = ManagedProcess(
            f"prometheus-{prom.port}",
            [
                str(binary),
                f"--config.file={prom.config_file}",
                f"--storage.tsdb.path={work_dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom.port}",
                "--web.enable-lifecycle",  # lets reload() swap the scrape config
                # (hidden flag) Scrape new targets within 0.2 s of a (re)load instead of the default 5 s.
                "--scrape.discovery-reload-interval=200ms",
            ],
            log_dir,
        )
        try:
            wait_until("prometheus /-/ready", lambda: http_ok(f"{prom.url}/-/ready"), watch=[prom.process])
        except BaseException:
            prom.stop()
            raise
        return prom

    def _write_config(self, targets: Sequence[str], scrape_configs: Sequence[Mapping[str, Any]] | None) -> None:
        if scrape_configs is None:
            scrape_configs = [{"job_name": "e2e", "static_configs": [{"targets": list(targets)}]}]
        interval = self.scrape_interval
        config = {
            # scrape_timeout defaults to 10s, which Prometheus refuses when it exceeds the interval.
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "scrape_configs": [{"fallback_scrape_protocol": "PrometheusText0.0.4", **dict(c)} for c in scrape_configs],
        }
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))

    def reload(self, targets: Sequence[str] = (), *, scrape_configs: Sequence[Mapping[str, Any]] | None = None) -> None:
        """Replace the scrape config (as `start` takes it) and make Prometheus load it."""
        self._write_config(targets, scrape_configs)
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/-/reload", method="POST"), timeout=10).close()

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path> with query parameters; return its `data` (raise if status is not success)."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise RuntimeError(f"prometheus {path} {params}: {body}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query: the result list, each {"metric": {labels}, "value": [time, "string value"]}."""
        data = self.api("query", query=promql)
        result: list[dict[str, Any]] = data["result"] if data["resultType"] in ("vector", "matrix") else []
        return result

    def query_value(self, promql: str) -> float | None:
        """The value of the query's first sample, or None when it returns nothing."""
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def wait_for_value(
        self, promql: str, predicate: Callable[[float], bool] = lambda _: True, *, timeout: float = 30.0
    ) -> float:
        """Poll the query until it returns a sample whose value satisfies `predicate`; return that value."""

        def probe() -> float | None:
            value = self.query_value(promql)
            return value if value is not None and predicate(value) else None

        return wait_until(f"prometheus: {promql}", probe, timeout=timeout, interval=0.25)

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets with their health and last error."""
        active: list[dict[str, Any]] = self.api("targets", state="active")["activeTargets"]
        return active

    def stop(self) -> None:
        """Stop the Prometheus process; idempotent."""
        if self.process is not None:
            self.process.stop()


class StartPrometheus(Protocol):
    """The `start_prometheus` fixture's type: starts a Prometheus (stopped after the test) and returns it."""

    def __call__(
        self,
        targets: Sequence[str] = (),
        *,
        scrape_configs: Sequence[Mapping[str, Any]] | None = None,
        scrape_interval: str = "1s",
    ) -> Prometheus: ...


def wait_for_scrape(prom: Prometheus, address: str, timeout: float = 30.0) -> None:
    """Wait until Prometheus has scraped `address` successfully at least once."""

    def scraped() -> bool:
        return any(t["health"] == "up" and t["labels"].get("instance") == address for t in prom.targets())

    wait_until(f"a successful scrape of {address}", scraped, timeout=timeout)
