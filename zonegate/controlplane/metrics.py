"""Control plane, telemetry: the Prometheus metrics of a running conduit.

Every label has a bounded set of values: conduits, principals and devices come from the policy (one
`unknown` stands for every unresolved principal), functions are the public Modbus function names or
`other`, verdicts and reasons are the engine's. No client address or register number is ever a label.

The per-request metrics (request counter, latency histograms) are plain integers and lists updated on
the event loop thread without locks, and turned into metric families only when Prometheus scrapes:
prometheus-client's own children take a lock per increment, which costs more than the decision.
Under the Rust relay (`zonegate run --relay rust`) the Modbus conduits count in the relay itself; a scrape
reads its snapshot once and adds it, label set by label set, to what Python counts (the EtherNet/IP
conduit, the OPC UA converter), so every metric stays one family whichever relay runs.
"""

from __future__ import annotations

import bisect
import datetime as dt
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from zonegate.controlplane.pki import load_certificate
from zonegate.controlplane.policy.functions import FUNCTION_NAMES
from zonegate.dataplane.upstream import LATENCY_BOUNDS, PoolObserver
from zonegate.engine import REASONS, VERDICTS

LATENCY_BUCKETS: Final = LATENCY_BOUNDS  # the data plane updates its series in place with these


def function_name(fc: int) -> str:
    return FUNCTION_NAMES.get(fc, "other")


class _Histograms:
    """Latency histograms by one label, kept as bucket counts (non-cumulative) and a sum."""

    def __init__(self, name: str, documentation: str, label: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.bounds = list(buckets)
        self.series: dict[str, list[float]] = {}  # value -> [count per bucket..., +Inf count, sum]

    def observe(self, value: str, seconds: float) -> None:
        series = self.series_for(value)
        series[bisect.bisect_left(self.bounds, seconds)] += 1
        series[-1] += seconds

    def series_for(self, value: str) -> list[float]:
        """The live series of one label value, for a caller that updates it in place (see `observe`)."""
        series = self.series.get(value)
        if series is None:
            series = self.series[value] = [0.0] * (len(self.bounds) + 2)
        return series

    def family(self, relay: Mapping[str, Sequence[float]] | None = None) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        every = self.series if relay is None else _merged_series(self.series, relay)
        for value, series in sorted(dict(every).items()):
            snapshot = list(series)
            cumulative, buckets = 0.0, []
            for bound, count in zip([*map(str, self.bounds), "+Inf"], snapshot[:-1]):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric([value], buckets, snapshot[-1])
        return family


# What the Rust relay counts itself (`zonegate._engine.Relay.snapshot()`, docs/relay.md "Binding").
RelaySnapshot = Mapping[str, Any]


def _merged_series(own: Mapping[str, list[float]], relay: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    merged = {value: list(series) for value, series in dict(own).items()}
    for value, series in relay.items():
        mine = merged.get(value)
        if mine is None:
            merged[value] = [float(x) for x in series]
        elif len(mine) == len(series):  # both built with LATENCY_BUCKETS; anything else is not summable
            merged[value] = [a + float(b) for a, b in zip(mine, series)]
    return merged


class _RequestMetrics(Collector):
    """zonegate_requests_total and the latency histograms, exported at scrape time."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str, int | str, int, int | str], int] = {}
        # Decisions counted with verdict and reason by name: the OPC UA converter's writes, whose refusals
        # before the engine (tag limits, wrong type) have reasons of their own.
        self.named: dict[tuple[str, str, str, int, str, str], int] = {}
        self.gateway = _Histograms("zonegate_gateway_latency_seconds",
                                   "Time zonegate added to a forwarded request (total minus upstream)",
                                   "conduit", LATENCY_BUCKETS)
        self.upstream = _Histograms("zonegate_upstream_latency_seconds",
                                    "Time from sending a request to a device to its reply", "device", LATENCY_BUCKETS)

    def collect(self) -> Iterator[Metric]:
        yield from self.families(None)

    def families(self, relay: RelaySnapshot | None) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "zonegate_requests", "Requests decided, by conduit, principal, device, function, verdict and reason",
            labels=["conduit", "principal", "device", "function", "verdict", "reason"],
        )
        requests: dict[tuple[str, str, str, int | str, int, int | str], int] = dict(self.requests)
        for conduit, principal, device, fc, verdict, reason, count in (relay or {}).get("requests", ()):
            key = (conduit, principal, device, fc, verdict, reason)
            requests[key] = requests.get(key, 0) + count
        for (conduit, principal, device, fc, verdict, reason), count in sorted(requests.items(), key=_sort_key):
            family.add_metric(  # the EtherNet/IP conduit counts by service and reason name
                [conduit, principal, device, fc if isinstance(fc, str) else function_name(fc), VERDICTS[verdict],
                 reason if isinstance(reason, str) else REASONS[reason]], count
            )
        for (conduit, principal, device, fc, verdict_name, reason_name), count in sorted(dict(self.named).items()):
            family.add_metric([conduit, principal, device, function_name(fc), verdict_name, reason_name], count)
        yield family
        yield self.gateway.family(relay.get("gateway_latency", {}) if relay is not None else None)
        yield self.upstream.family(relay.get("upstream_latency", {}) if relay is not None else None)


def _sort_key(item: tuple[tuple[Any, ...], int]) -> tuple[str, ...]:
    # The EtherNet/IP conduit's keys hold names where the Modbus conduits' hold codes: sort them as text.
    return tuple(str(x) for x in item[0])


def _merged_family(metric: Counter | Gauge, kind: str, relay: Iterable[tuple[tuple[str, ...], float]],
                   *, replace: bool = False) -> Metric:
    """`metric`'s family with the relay's values added (`replace`: the relay's value wins for its labels)."""
    values: dict[tuple[str, ...], float] = {}
    name = documentation = ""
    for collected in metric.collect():
        name, documentation = collected.name, collected.documentation
        for sample in collected.samples:
            if kind == "counter" and not sample.name.endswith("_total"):
                continue  # _created: meaningless for a sum of two counters
            key = tuple(sample.labels.values())
            values[key] = values.get(key, 0.0) + sample.value
    labels = list(metric._labelnames)  # noqa: SLF001 - the names are needed before any sample exists
    for key, value in relay:
        values[key] = float(value) if replace else values.get(key, 0.0) + float(value)
    family: CounterMetricFamily | GaugeMetricFamily
    if kind == "counter":
        family = CounterMetricFamily(name, documentation, labels=labels)
    else:
        family = GaugeMetricFamily(name, documentation, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


class _DataPlaneMetrics(Collector):
    """The request path's metrics: what Python counts, plus, under the Rust relay, what the relay counts
    (read once per scrape from its snapshot and summed with Python's by label set)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self.relay: Callable[[], RelaySnapshot] | None = None

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        source = self.relay
        snap: RelaySnapshot | None = None
        if source is not None:
            try:
                snap = source()
            except Exception:  # a relay stopping under the scrape: export what Python has
                snap = None
        yield from m.per_request.families(snap)
        plain: tuple[Counter | Gauge, ...] = (
            m.connections, m.handshake_failures, m.framing_errors, m.upstream_up, m.upstream_faults)
        if snap is None:
            for metric in plain:
                yield from metric.collect()
            return
        yield _merged_family(m.connections, "gauge",
                             (((k,), v) for k, v in snap.get("active_connections", {}).items()))
        yield _merged_family(m.handshake_failures, "counter",
                             (((c, r), n) for c, r, n in snap.get("handshake_failures", ())))
        yield _merged_family(m.framing_errors, "counter", (((c, r), n) for c, r, n in snap.get("framing_errors", ())))
        yield _merged_family(m.upstream_up, "gauge",
                             (((k,), 1.0 if up else 0.0) for k, up in snap.get("upstream_up", {}).items()),
                             replace=True)
        yield _merged_family(m.upstream_faults, "counter",
                             (((d, k), n) for d, k, n in snap.get("upstream_faults", ())))


class _CertificateExpiry(Collector):
    """Seconds until each configured certificate expires, computed at scrape time."""

    def __init__(self) -> None:
        self.files: dict[tuple[str, str], Path] = {}
        self.lock = threading.Lock()

    def set_files(self, files: Iterable[tuple[str, str, Path]]) -> None:
        with self.lock:
            self.files = {(owner, role): path for owner, role, path in files}

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "zonegate_certificate_expiry_seconds",
            "Seconds until a configured certificate expires (negative once expired)",
            labels=["owner", "certificate"],
        )
        now = dt.datetime.now(dt.timezone.utc)
        with self.lock:
            files = dict(self.files)
        for (owner, role), path in sorted(files.items()):
            try:
                cert = load_certificate(path)
            except (OSError, ValueError):
                continue
            family.add_metric([owner, role], (cert.not_valid_after_utc - now).total_seconds())
        yield family


# The OPC UA converter's own write refusals, before the engine (besides the engine's REASONS).
CONVERTER_REASONS: Final = ("not_writable", "type_mismatch", "tag_limits", "bad_value")
OpcuaSnapshot = Mapping[str, Any]
"""What the OPC UA converter reports at scrape time (`OpcuaConverter.snapshot`): `sessions` (int),
`refused` (reason -> count), `cycles` ((device, scan class) -> (count, sum, per-bucket counts)),
`bad` (device -> variables not Good), `buckets` (the cycle histogram's upper bounds)."""


class _OpcuaMetrics(Collector):
    """The OPC UA converter's sessions, refusals, poll cycles and Bad variables, read at scrape time.

    Labels are bounded by the policy: devices and scan classes are the policy's, reasons a fixed set.
    """

    def __init__(self) -> None:
        self.source: Callable[[], OpcuaSnapshot] | None = None

    def collect(self) -> Iterator[Metric]:
        source = self.source
        if source is None:
            return
        try:
            snap = source()
        except RuntimeError:  # the converter's maps changed under the scrape thread: skip this scrape
            return
        yield GaugeMetricFamily("zonegate_opcua_sessions", "OPC UA sessions activated and open",
                                value=snap["sessions"])
        refused = CounterMetricFamily("zonegate_opcua_refused", "OPC UA channels, sessions and users refused, by reason",
                                      labels=["reason"])
        for reason, count in sorted(snap["refused"].items()):
            refused.add_metric([reason], count)
        yield refused
        cycles = HistogramMetricFamily("zonegate_opcua_poll_cycle_seconds",
                                       "Per poll cycle of a device's scan class: the longest any read took from its "
                                       "slot until its values were in the address space",
                                       labels=["device", "scan"])
        bounds = [*map(str, snap["buckets"]), "+Inf"]
        for (device, scan), (_count, total, per_bucket) in sorted(snap["cycles"].items()):
            cumulative, buckets = 0.0, []
            for bound, n in zip(bounds, per_bucket):
                cumulative += n
                buckets.append((bound, cumulative))
            cycles.add_metric([device, scan], buckets, total)
        yield cycles
        bad = GaugeMetricFamily("zonegate_opcua_bad_variables", "OPC UA variables whose status is not Good, by device",
                                labels=["device"])
        for device, count in sorted(snap["bad"].items()):
            bad.add_metric([device], count)
        yield bad


class Metrics(PoolObserver):
    """All metrics of one zonegate process, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.per_request = _RequestMetrics()
        # Not registered themselves: `_DataPlaneMetrics` exports them, summed with the Rust relay's counts.
        self.connections = Gauge(
            "zonegate_active_connections", "Client connections open, by conduit", ["conduit"], registry=None
        )
        self.handshake_failures = Counter(
            "zonegate_tls_handshake_failures", "TLS handshakes refused, by conduit and reason",
            ["conduit", "reason"], registry=None,
        )
        self.framing_errors = Counter(
            "zonegate_framing_errors", "Client connections closed unanswered: invalid framing, overflow, or a transparent connection to no known device",
            ["conduit", "reason"], registry=None,
        )
        self.upstream_up = Gauge("zonegate_upstream_up", "1 when a device is reachable", ["device"], registry=None)
        self.upstream_faults = Counter(
            "zonegate_upstream_faults", "Device faults: connect_failed, timeout, connection_lost, unmatched_reply, ...",
            ["device", "kind"], registry=None,
        )
        self.data_plane = _DataPlaneMetrics(self)
        r.register(self.data_plane)
        self.reloads = Counter("zonegate_policy_reloads", "Policy reloads by result", ["result"], registry=r)
        self.policy_info = Gauge(
            "zonegate_policy_loaded", "1 for the hash of the policy in force", ["hash"], registry=r
        )
        self.audit_suppressed = Counter(
            "zonegate_audit_suppressed", "Audit records dropped by the rate limit", registry=r
        )
        self.expiry = _CertificateExpiry()
        r.register(self.expiry)
        self.opcua = _OpcuaMetrics()
        r.register(self.opcua)
        self._policy_hash: str | None = None
        self._server: WSGIServer | None = None

    # -- per request ----------------------------------------------------------------------------------

    def count_request(self, conduit: str, principal: str, device: str, fc: int | str, verdict: int,
                      reason: int | str) -> None:
        requests = self.per_request.requests
        key = (conduit, principal, device, fc, verdict, reason)
        requests[key] = requests.get(key, 0) + 1

    def count_named_request(self, conduit: str, principal: str, device: str, fc: int, verdict: str,
                            reason: str) -> None:
        """A decision whose verdict and reason are names (engine VERDICTS/REASONS or CONVERTER_REASONS)."""
        named = self.per_request.named
        key = (conduit, principal, device, fc, verdict, reason)
        named[key] = named.get(key, 0) + 1

    def watch_opcua(self, source: Callable[[], OpcuaSnapshot] | None) -> None:
        """Export the converter's state from `source()` at each scrape (None: stop exporting it)."""
        self.opcua.source = source

    def watch_relay(self, source: Callable[[], RelaySnapshot] | None) -> None:
        """Add the Rust relay's counters from `source()` (its snapshot) at each scrape (None: stop)."""
        self.data_plane.relay = source

    def gateway_latency_observe(self, conduit: str, seconds: float) -> None:
        self.per_request.gateway.observe(conduit, seconds)

    # -- cached children: the data plane holds these and updates them in place, no lookup per request ----

    def request_counts(self) -> dict[tuple[str, str, str, int | str, int, int | str], int]:
        """The live request counter: (conduit, principal, device, fc, verdict, reason) -> count (EtherNet/IP
        counts name the function and reason instead of numbering them)."""
        return self.per_request.requests

    def gateway_latency_series(self, conduit: str) -> list[float]:
        """The live gateway latency series of `conduit`: bucket `bisect_left(LATENCY_BUCKETS, s)` += 1,
        then [-1] += s."""
        return self.per_request.gateway.series_for(conduit)

    def upstream_latency_series(self, device: str) -> list[float] | None:
        return self.per_request.upstream.series_for(device)

    # -- PoolObserver -------------------------------------------------------------------------------------

    def upstream_state(self, device: str, up: bool) -> None:
        self.upstream_up.labels(device).set(1 if up else 0)

    def upstream_fault(self, device: str, kind: str) -> None:
        self.upstream_faults.labels(device, kind).inc()

    def upstream_latency(self, device: str, seconds: float) -> None:
        self.per_request.upstream.observe(device, seconds)

    # -- control plane ---------------------------------------------------------------------------------

    def policy_loaded(self, source_hash: str) -> None:
        if self._policy_hash is not None and self._policy_hash != source_hash:
            self.policy_info.remove(self._policy_hash)
        self._policy_hash = source_hash
        self.policy_info.labels(source_hash).set(1)

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (port 0 picks one); returns the port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
