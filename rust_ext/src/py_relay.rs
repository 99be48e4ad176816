//! Binding of the Modbus relay (rust_ext/relay, docs/relay.md "Binding") as `zonegate._engine.Relay`.
//!
//! Converts the configuration dict and the events, maps errors, nothing more. Calls that block (start, reload,
//! stop) release the GIL; the relay's threads never take it.

// PyO3 0.22's generated wrappers convert PyErr into itself.
#![allow(clippy::useless_conversion)]

use std::time::Duration;

use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use zonegate_relay::config::{DeviceConfig, EnipDeviceConfig, ListenerConfig, ListenerKind, RelayConfig, TlsMaterial};
use zonegate_relay::events::Event;
use zonegate_relay::metrics::Series;
use zonegate_relay::Relay;

use crate::py_engine::PyEngine;

fn invalid(owner: &str, message: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(format!("{owner}: {message}"))
}

fn item<'py>(d: &Bound<'py, PyDict>, key: &str, owner: &str) -> PyResult<Bound<'py, PyAny>> {
    d.get_item(key)?.ok_or_else(|| invalid(owner, format_args!("missing {key:?}")))
}

fn value<'py, T: FromPyObject<'py>>(d: &Bound<'py, PyDict>, key: &str, owner: &str) -> PyResult<T> {
    item(d, key, owner)?.extract::<T>().map_err(|e| invalid(owner, format_args!("{key}: {e}")))
}

fn seconds(d: &Bound<'_, PyDict>, key: &str, owner: &str) -> PyResult<Duration> {
    let s: f64 = value(d, key, owner)?;
    Duration::try_from_secs_f64(s).map_err(|_| invalid(owner, format_args!("{key}: {s} is not a duration")))
}

fn pem(d: &Bound<'_, PyDict>, key: &str, owner: &str) -> PyResult<Option<Vec<u8>>> {
    match d.get_item(key)? {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) => Ok(Some(
            v.downcast::<PyBytes>()
                .map_err(|_| invalid(owner, format_args!("tls {key}: expected bytes")))?
                .as_bytes()
                .to_vec(),
        )),
    }
}

fn tls(d: &Bound<'_, PyDict>, owner: &str) -> PyResult<Option<TlsMaterial>> {
    let Some(t) = d.get_item("tls")? else { return Ok(None) };
    if t.is_none() {
        return Ok(None);
    }
    let t = t.downcast::<PyDict>().map_err(|_| invalid(owner, "tls: expected a dict or None"))?;
    let required = |key: &str| pem(t, key, owner)?.ok_or_else(|| invalid(owner, format_args!("tls: missing {key:?}")));
    Ok(Some(TlsMaterial {
        cert_pem: required("cert")?,
        key_pem: required("key")?,
        ca_pem: required("ca")?,
        crl_pem: pem(t, "crl", owner)?,
    }))
}

fn dict<'py>(v: &Bound<'py, PyAny>, what: &str) -> PyResult<Bound<'py, PyDict>> {
    Ok(v.downcast::<PyDict>().map_err(|_| PyValueError::new_err(format!("{what}: expected a dict")))?.clone())
}

/// Inclusive unit ranges as `[lo, hi]` lists or `(lo, hi)` tuples.
fn units_of(u: &Bound<'_, PyAny>) -> PyResult<Vec<(u8, u8)>> {
    let mut ranges = Vec::new();
    for range in u.iter()? {
        let range: Vec<u8> = range?.extract()?;
        match range[..] {
            [lo, hi] if lo <= hi => ranges.push((lo, hi)),
            _ => return Err(PyValueError::new_err(format!("{range:?} is not a range [lo, hi] of unit ids"))),
        }
    }
    Ok(ranges)
}

fn device(engine: &PyEngine, d: &Bound<'_, PyAny>) -> PyResult<DeviceConfig> {
    let d = dict(d, "device")?;
    let name: String = value(&d, "name", "device")?;
    let owner = format!("device {name}");
    let units = match d.get_item("units")? {
        None => None,
        Some(u) if u.is_none() => None,
        Some(u) => Some(units_of(&u).map_err(|e| invalid(&owner, format_args!("units: {e}")))?),
    };
    let engine_index = engine.inner.device_index(&name).unwrap_or(u32::MAX);
    Ok(DeviceConfig {
        host: value(&d, "host", &owner)?,
        port: value(&d, "port", &owner)?,
        units,
        max_connections: value::<usize>(&d, "max_connections", &owner)?.max(1),
        pipelining: value(&d, "pipelining", &owner)?,
        pipeline_depth: value(&d, "pipeline_depth", &owner)?,
        timeout: seconds(&d, "timeout", &owner)?,
        tls: tls(&d, &owner)?,
        engine_index,
        name,
    })
}

fn listener(l: &Bound<'_, PyAny>) -> PyResult<ListenerConfig> {
    let l = dict(l, "listener")?;
    let name: String = value(&l, "name", "listener")?;
    let owner = format!("listener {name}");
    let kind = match value::<String>(&l, "kind", &owner)?.as_str() {
        "modbus_tls" => ListenerKind::ModbusTls,
        "modbus" => ListenerKind::Modbus,
        "enip_tls" => ListenerKind::EnipTls,
        "enip" => ListenerKind::Enip,
        other => {
            return Err(invalid(&owner, format_args!("kind {other:?} is not modbus_tls, modbus, enip_tls or enip")))
        }
    };
    Ok(ListenerConfig {
        kind,
        tls: tls(&l, &owner)?,
        devices: value(&l, "devices", &owner)?,
        max_outstanding: value::<usize>(&l, "max_outstanding", &owner)?.max(1),
        idle_timeout: seconds(&l, "idle_timeout", &owner)?,
        request_timeout: seconds(&l, "request_timeout", &owner)?,
        name,
    })
}

fn enip_device(engine: &PyEngine, d: &Bound<'_, PyAny>) -> PyResult<EnipDeviceConfig> {
    let d = dict(d, "enip device")?;
    let name: String = value(&d, "name", "enip device")?;
    let owner = format!("device {name}");
    let engine_index = engine.inner.device_index(&name).unwrap_or(u32::MAX);
    Ok(EnipDeviceConfig {
        host: value(&d, "host", &owner)?,
        port: value(&d, "port", &owner)?,
        timeout: seconds(&d, "timeout", &owner)?,
        max_connections: value::<usize>(&d, "max_connections", &owner)?.max(1),
        engine_index,
        name,
    })
}

fn relay_config(engine: &PyEngine, config: &Bound<'_, PyDict>) -> PyResult<RelayConfig> {
    let listeners = item(config, "listeners", "config")?;
    let devices = item(config, "devices", "config")?;
    let enip_devices = match config.get_item("enip_devices")? {
        Some(e) if !e.is_none() => e.iter()?.map(|d| enip_device(engine, &d?)).collect::<PyResult<_>>()?,
        _ => Vec::new(),
    };
    Ok(RelayConfig {
        listeners: listeners.iter()?.map(|l| listener(&l?)).collect::<PyResult<_>>()?,
        devices: devices.iter()?.map(|d| device(engine, &d?)).collect::<PyResult<_>>()?,
        enip_devices,
        latency_bounds: value(config, "latency_bounds", "config")?,
    })
}

fn bytes(py: Python<'_>, b: &[u8]) -> PyObject {
    PyBytes::new_bound(py, b).into_any().unbind()
}

fn event(py: Python<'_>, e: Event) -> PyObject {
    match e {
        Event::Identify { conn_id, listener, peer, der } => {
            ("identify", conn_id, &*listener, peer, der.map(|d| bytes(py, &d))).into_py(py)
        }
        Event::Closed { conn_id } => ("closed", conn_id).into_py(py),
        Event::Audit(a) => (
            "audit",
            a.conn_id,
            &*a.listener,
            a.device.as_deref(),
            bytes(py, &a.adu),
            a.verdict,
            a.reason,
            a.rule,
            a.exception,
            a.malformed,
            a.time_ns,
        )
            .into_py(py),
        Event::EnipAudit(a) => {
            let fields: [PyObject; 17] = [
                "enip_audit".into_py(py),
                a.conn_id.into_py(py),
                (*a.listener).into_py(py),
                a.device.as_deref().into_py(py),
                bytes(py, &a.frame),
                a.verdict.into_py(py),
                a.reason.into_py(py),
                a.rule.into_py(py),
                a.service.into_py(py),
                a.target.into_py(py),
                a.route.into_py(py),
                a.leaves.into_py(py),
                a.denied_leaf.into_py(py),
                a.malformed.into_py(py),
                a.general_status.into_py(py),
                a.encap_status.into_py(py),
                a.time_ns.into_py(py),
            ];
            PyTuple::new_bound(py, fields).into_any().unbind()
        }
        Event::Log { level, message } => ("log", level, message).into_py(py),
        Event::Reply { token, adu, exception } => ("reply", token, adu.map(|a| bytes(py, &a)), exception).into_py(py),
        Event::Dropped { audits, logs } => ("dropped", audits, logs).into_py(py),
    }
}

fn series_dict<'py>(py: Python<'py>, items: Vec<(std::sync::Arc<str>, Series)>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new_bound(py);
    for (k, v) in items {
        d.set_item(&*k, v)?;
    }
    Ok(d)
}

/// The Modbus relay on tokio: accepts on the listening sockets Python bound, decides with `engine`, forwards
/// to the devices; Python answers `identify` events and takes audit and log events (docs/relay.md).
#[pyclass(module = "zonegate._engine", name = "Relay", frozen)]
pub struct PyRelay {
    inner: Relay,
}

#[pymethods]
impl PyRelay {
    /// Starts the runtime and one accept loop per listener; `fds[i]` is `config["listeners"][i]`'s bound
    /// listening socket, owned by the relay once this returns. ValueError names the listener or device whose
    /// settings or TLS material do not load (the fds then stay the caller's).
    #[new]
    #[pyo3(signature = (engine, config, fds, threads = 2))]
    fn new(
        py: Python<'_>,
        engine: PyRef<'_, PyEngine>,
        config: &Bound<'_, PyDict>,
        fds: Vec<i32>,
        threads: usize,
    ) -> PyResult<Self> {
        let relay_config = relay_config(&engine, config)?;
        let engine = engine.inner.clone();
        let inner =
            py.allow_threads(|| Relay::start(engine, relay_config, &fds, threads)).map_err(PyValueError::new_err)?;
        Ok(PyRelay { inner })
    }

    /// The eventfd to register with the event loop: readable when events wait; read it, then call `events()`.
    fn event_fd(&self) -> i32 {
        self.inner.event_fd()
    }

    /// Every event queued since the last call, oldest first.
    fn events<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let events = self.inner.events();
        Ok(PyList::new_bound(py, events.into_iter().map(|e| event(py, e))))
    }

    /// The answer to an `identify` event: the principal's name, or None when unknown.
    #[pyo3(signature = (conn_id, principal, /))]
    fn identify(&self, conn_id: u64, principal: Option<String>) {
        self.inner.identify(conn_id, principal);
    }

    /// Swaps in a new engine and configuration once all of it builds; raises ValueError keeping the old one.
    fn reload(&self, py: Python<'_>, engine: PyRef<'_, PyEngine>, config: &Bound<'_, PyDict>) -> PyResult<()> {
        let relay_config = relay_config(&engine, config)?;
        let engine = engine.inner.clone();
        py.allow_threads(|| self.inner.reload(engine, relay_config)).map_err(PyValueError::new_err)
    }

    /// Forwards `adu` to `device`; the answer comes as a `("reply", token, adu | None, exception | None)` event.
    #[pyo3(signature = (device, adu, /))]
    fn submit(&self, device: &str, adu: &[u8]) -> PyResult<u64> {
        self.inner.submit(device, adu.to_vec()).map_err(|e| {
            if e.starts_with("unknown device") {
                PyKeyError::new_err(device.to_owned())
            } else {
                PyValueError::new_err(e)
            }
        })
    }

    /// The relay's counters, shaped as zonegate.controlplane.metrics keeps them.
    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.snapshot();
        let d = PyDict::new_bound(py);
        let requests = PyList::empty_bound(py);
        for ((conduit, principal, device, fc, verdict, reason), n) in s.requests {
            requests.append((&*conduit, &*principal, &*device, fc, verdict, reason, n))?;
        }
        // EtherNet/IP counts by service and reason name, as the Python conduit does.
        for ((conduit, principal, device, function, verdict, reason), n) in s.named_requests {
            requests.append((&*conduit, &*principal, &*device, function, verdict, reason, n))?;
        }
        d.set_item("requests", requests)?;
        d.set_item("gateway_latency", series_dict(py, s.gateway_latency)?)?;
        d.set_item("upstream_latency", series_dict(py, s.upstream_latency)?)?;
        let active = PyDict::new_bound(py);
        for (k, n) in s.active_connections {
            active.set_item(&*k, n)?;
        }
        d.set_item("active_connections", active)?;
        let triples = |items: Vec<((std::sync::Arc<str>, &'static str), u64)>| -> PyResult<Bound<'py, PyList>> {
            let l = PyList::empty_bound(py);
            for ((owner, reason), n) in items {
                l.append(PyTuple::new_bound(py, [owner.into_py(py), reason.into_py(py), n.into_py(py)]))?;
            }
            Ok(l)
        };
        d.set_item("handshake_failures", triples(s.handshake_failures)?)?;
        d.set_item("framing_errors", triples(s.framing_errors)?)?;
        let up = PyDict::new_bound(py);
        for (k, v) in s.upstream_up {
            up.set_item(&*k, v)?;
        }
        d.set_item("upstream_up", up)?;
        d.set_item("upstream_faults", triples(s.upstream_faults)?)?;
        Ok(d)
    }

    /// Stops accepting, waits up to `timeout` seconds for forwarded requests, then closes everything.
    fn stop(&self, py: Python<'_>, timeout: f64) {
        let timeout = Duration::try_from_secs_f64(timeout).unwrap_or(Duration::ZERO);
        py.allow_threads(|| self.inner.stop(timeout));
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRelay>()
}
