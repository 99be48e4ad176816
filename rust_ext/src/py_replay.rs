//! Binding of capture replay (`zonegate replay`) as `zonegate._engine.replay_capture`.
//!
//! The whole loop (file read, pcap walk, TCP reassembly, MBAP / encapsulation split, decisions) runs in
//! Rust with the
//! GIL released; Python gets one report object and formats it. Only the optional progress callback
//! takes the GIL back, every few megabytes.

// Clippy flags the error conversion `#[pyfunction]` generates for `replay_capture` (not code written here).
#![allow(clippy::useless_conversion)]

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use zonegate_core::capture::enip_flow::{command_label, CipCounts};
use zonegate_core::capture::pcap::{CaptureError, Format};
use zonegate_core::capture::replay::{
    compile_ir, replay_stream as core_replay, CipDenial, Denial, Report, Targets, UNKNOWN,
};
use zonegate_core::modbus::functions::Malformed;
use zonegate_core::policy::{CipReason, Ir, Reason};

const CIP_REASONS: [CipReason; 9] = [
    CipReason::Allowed,
    CipReason::UnknownPrincipal,
    CipReason::Malformed,
    CipReason::NoMatchingRule,
    CipReason::RateExceeded,
    CipReason::RouteNotAllowed,
    CipReason::ServiceNotAllowed,
    CipReason::TargetNotAllowed,
    CipReason::CommandNotAllowed,
];

fn cip_reason_name(code: u8) -> &'static str {
    CIP_REASONS.iter().find(|r| **r as u8 == code).map_or("unknown", |r| r.name())
}

const REASONS: [Reason; 10] = [
    Reason::Allowed,
    Reason::UnknownPrincipal,
    Reason::Malformed,
    Reason::NoMatchingRule,
    Reason::UnitNotAllowed,
    Reason::FunctionNotAllowed,
    Reason::AddressOutOfRange,
    Reason::QuantityExceeded,
    Reason::ValueOutOfBounds,
    Reason::RateExceeded,
];

const MALFORMED: [Malformed; 11] = [
    Malformed::Truncated,
    Malformed::TrailingBytes,
    Malformed::BadQuantity,
    Malformed::BadByteCount,
    Malformed::AddressOverflow,
    Malformed::BadCoilValue,
    Malformed::BadSubfunction,
    Malformed::BadMeiType,
    Malformed::BadReferenceType,
    Malformed::BadRecord,
    Malformed::BadDeviceIdCode,
];

fn reason_name(code: u8) -> &'static str {
    REASONS.iter().find(|r| **r as u8 == code).map_or("unknown", |r| r.name())
}

fn malformed_name(code: u8) -> Option<&'static str> {
    MALFORMED.iter().find(|m| **m as u8 == code).map(|m| m.name())
}

fn verdict_name(code: u8) -> &'static str {
    match code {
        0 => "allow",
        2 => "would_deny",
        _ => "deny",
    }
}

/// One request the policy would have refused.
#[pyclass(module = "zonegate._engine", name = "ReplayDenial", frozen, get_all)]
pub struct PyReplayDenial {
    /// Capture frame that completed the request (numbered from 1, as Wireshark does).
    frame: u64,
    ts_ns: u64,
    client: String,
    client_port: u16,
    server: String,
    server_port: u16,
    /// Principal name, empty when no principal matched the client.
    principal: String,
    /// Device name, empty when no device matched the server.
    device: String,
    unit: u8,
    function: u8,
    verdict: &'static str,
    reason: &'static str,
    malformed: Option<&'static str>,
    rule_id: String,
}

#[pymethods]
impl PyReplayDenial {
    fn __repr__(&self) -> String {
        format!(
            "ReplayDenial(frame={}, client='{}:{}', server='{}:{}', function={}, unit={}, verdict='{}', reason='{}', rule_id='{}')",
            self.frame,
            self.client,
            self.client_port,
            self.server,
            self.server_port,
            self.function,
            self.unit,
            self.verdict,
            self.reason,
            self.rule_id
        )
    }
}

/// One EtherNet/IP message the policy would have refused.
#[pyclass(module = "zonegate._engine", name = "ReplayCipDenial", frozen, get_all)]
pub struct PyReplayCipDenial {
    /// Capture frame that completed the message (numbered from 1, as Wireshark does).
    frame: u64,
    ts_ns: u64,
    client: String,
    client_port: u16,
    server: String,
    server_port: u16,
    principal: String,
    device: String,
    /// Encapsulation command name (`send_rr_data`, ...), or its word in hex.
    command: String,
    /// Service of the denied CIP request (a leaf, inside any container), "" when none was read.
    service: String,
    verdict: &'static str,
    reason: &'static str,
    malformed: Option<&'static str>,
    rule_id: String,
    /// The denied request's target: tag name, `class 0x01 instance 1 attribute 7`, or "".
    target: String,
    /// Its route (docs/cip-engine.md section 4 syntax).
    route: String,
    denied_leaf: Option<u32>,
    general_status: Option<u8>,
    encap_status: Option<u32>,
}

#[pymethods]
impl PyReplayCipDenial {
    fn __repr__(&self) -> String {
        format!(
            "ReplayCipDenial(frame={}, client='{}:{}', server='{}:{}', command='{}', service='{}', target='{}', route='{}', verdict='{}', reason='{}', rule_id='{}')",
            self.frame,
            self.client,
            self.client_port,
            self.server,
            self.server_port,
            self.command,
            self.service,
            self.target,
            self.route,
            self.verdict,
            self.reason,
            self.rule_id
        )
    }
}

/// What a policy would have done to a capture.
#[pyclass(module = "zonegate._engine", name = "ReplayReport", frozen, get_all)]
pub struct PyReplayReport {
    /// "pcap" or "pcapng".
    format: &'static str,
    frames: u64,
    tcp_segments: u64,
    flows: u64,
    requests: u64,
    allowed: u64,
    denied: u64,
    would_deny: u64,
    malformed: u64,
    replies: u64,
    exception_replies: u64,
    /// reason name -> requests (reasons seen only).
    by_reason: Py<PyDict>,
    /// function code -> requests.
    by_function: Py<PyDict>,
    /// unit id -> requests.
    by_unit: Py<PyDict>,
    /// rule id -> requests it allowed (every rule of the policy, in policy order).
    by_rule: Py<PyDict>,
    /// rule id -> requests denied with it as the closest match (rules that denied something).
    by_rule_denied: Py<PyDict>,
    invalid_streams: u64,
    /// (frame, client, client_port, server, server_port, "requests" | "replies", reason), first ones.
    invalid_list: Vec<(u64, String, u16, String, u16, &'static str, &'static str)>,
    /// The first denials, in capture order.
    denials: Vec<Py<PyReplayDenial>>,
    /// anomaly name -> count.
    anomalies: Py<PyDict>,
    bytes_read: u64,
    /// Why the capture could not be read to its end, if it could not.
    capture_error: Option<String>,
    /// EtherNet/IP connections.
    cip_flows: u64,
    /// Encapsulation messages from clients, each decided once.
    cip_requests: u64,
    cip_allowed: u64,
    cip_denied: u64,
    cip_would_deny: u64,
    cip_malformed: u64,
    /// Encapsulation messages from devices, and those with an error status.
    cip_replies: u64,
    cip_error_replies: u64,
    /// CIP requests inside the decided messages (containers opened).
    cip_leaves: u64,
    /// command name -> requests / replies.
    cip_by_command: Py<PyDict>,
    cip_replies_by_command: Py<PyDict>,
    /// Outer service name of each CIP message -> messages; leaf service name -> requests.
    cip_by_service: Py<PyDict>,
    cip_by_leaf_service: Py<PyDict>,
    /// reason name -> messages; malformed kind -> messages.
    cip_by_reason: Py<PyDict>,
    cip_by_malformed: Py<PyDict>,
    /// rule id -> messages it allowed (every rule, in policy order) / denied as the closest match.
    cip_by_rule: Py<PyDict>,
    cip_by_rule_denied: Py<PyDict>,
    /// `unseen_connection_requests`, `unmatched_replies`.
    cip_anomalies: Py<PyDict>,
    /// The first EtherNet/IP denials, in capture order.
    cip_denials: Vec<Py<PyReplayCipDenial>>,
}

#[pymethods]
impl PyReplayReport {
    fn __repr__(&self) -> String {
        format!(
            "ReplayReport(requests={}, allowed={}, denied={}, would_deny={}, malformed={}, cip_requests={}, cip_allowed={}, cip_denied={}, cip_would_deny={}, cip_malformed={}, invalid_streams={})",
            self.requests,
            self.allowed,
            self.denied,
            self.would_deny,
            self.malformed,
            self.cip_requests,
            self.cip_allowed,
            self.cip_denied,
            self.cip_would_deny,
            self.cip_malformed,
            self.invalid_streams
        )
    }
}

fn name_of(names: &[String], index: u32) -> String {
    if index == UNKNOWN {
        return String::new();
    }
    names.get(index as usize).cloned().unwrap_or_default()
}

fn denial(py: Python<'_>, d: &Denial, ir: &Ir) -> PyResult<Py<PyReplayDenial>> {
    let principals: Vec<String> = ir.principals.iter().map(|p| p.name.clone()).collect();
    let devices: Vec<String> = ir.devices.iter().map(|p| p.name.clone()).collect();
    Py::new(
        py,
        PyReplayDenial {
            frame: d.frame,
            ts_ns: d.ts_ns,
            client: d.client.to_string(),
            client_port: d.client_port,
            server: d.server.to_string(),
            server_port: d.server_port,
            principal: name_of(&principals, d.principal),
            device: name_of(&devices, d.device),
            unit: d.unit,
            function: d.function,
            verdict: verdict_name(d.outcome.verdict),
            reason: reason_name(d.outcome.reason),
            malformed: malformed_name(d.outcome.malformed),
            rule_id: d.outcome.rule.and_then(|i| ir.rules.get(i as usize)).map_or_else(String::new, |r| r.id.clone()),
        },
    )
}

fn cip_denial(py: Python<'_>, d: &CipDenial, ir: &Ir) -> PyResult<Py<PyReplayCipDenial>> {
    let principals: Vec<String> = ir.principals.iter().map(|p| p.name.clone()).collect();
    let devices: Vec<String> = ir.devices.iter().map(|p| p.name.clone()).collect();
    let c = &d.decision;
    Py::new(
        py,
        PyReplayCipDenial {
            frame: d.frame,
            ts_ns: d.ts_ns,
            client: d.client.to_string(),
            client_port: d.client_port,
            server: d.server.to_string(),
            server_port: d.server_port,
            principal: name_of(&principals, d.principal),
            device: name_of(&devices, d.device),
            command: command_label(c.command).into_owned(),
            service: d.leaf_service.as_deref().unwrap_or("").to_owned(),
            verdict: verdict_name(c.verdict as u8),
            reason: c.reason.name(),
            malformed: c.malformed,
            rule_id: c.rule.and_then(|i| ir.rules.get(i as usize)).map_or_else(String::new, |r| r.id.clone()),
            target: c.target.clone(),
            route: c.route.clone(),
            denied_leaf: c.denied_leaf,
            general_status: c.general_status,
            encap_status: c.encap_status,
        },
    )
}

fn counts_dict<'py, K: ToString>(
    py: Python<'py>,
    items: impl IntoIterator<Item = (K, u64)>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new_bound(py);
    for (k, n) in items {
        d.set_item(k.to_string(), n)?;
    }
    Ok(d)
}

/// The EtherNet/IP fields of the report, in the order `PyReplayReport` declares them.
struct CipFields {
    by_command: Py<PyDict>,
    replies_by_command: Py<PyDict>,
    by_service: Py<PyDict>,
    by_leaf_service: Py<PyDict>,
    by_reason: Py<PyDict>,
    by_malformed: Py<PyDict>,
    by_rule: Py<PyDict>,
    by_rule_denied: Py<PyDict>,
    anomalies: Py<PyDict>,
}

fn cip_fields(py: Python<'_>, c: &CipCounts, ir: &Ir) -> PyResult<CipFields> {
    let by_rule = PyDict::new_bound(py);
    let by_rule_denied = PyDict::new_bound(py);
    for ((rule, allowed), denied) in ir.rules.iter().zip(&c.by_rule).zip(&c.by_rule_denied) {
        by_rule.set_item(&rule.id, allowed)?;
        if *denied > 0 {
            by_rule_denied.set_item(&rule.id, denied)?;
        }
    }
    let pairs = |m: &std::collections::BTreeMap<std::borrow::Cow<'static, str>, u64>| {
        m.iter().map(|(k, v)| (k.to_string(), *v)).collect::<Vec<_>>()
    };
    Ok(CipFields {
        by_command: counts_dict(py, pairs(&c.by_command))?.unbind(),
        replies_by_command: counts_dict(py, pairs(&c.replies_by_command))?.unbind(),
        by_service: counts_dict(py, pairs(&c.by_service))?.unbind(),
        by_leaf_service: counts_dict(py, pairs(&c.by_leaf_service))?.unbind(),
        by_reason: counts_dict(py, c.by_reason.iter().map(|(k, v)| (cip_reason_name(*k), *v)))?.unbind(),
        by_malformed: counts_dict(py, c.by_malformed.iter().map(|(k, v)| (*k, *v)))?.unbind(),
        by_rule: by_rule.unbind(),
        by_rule_denied: by_rule_denied.unbind(),
        anomalies: counts_dict(
            py,
            [("unseen_connection_requests", c.unseen_connection_requests), ("unmatched_replies", c.unmatched_replies)],
        )?
        .unbind(),
    })
}

fn to_python(py: Python<'_>, r: &Report, ir: &Ir, format: &'static str) -> PyResult<PyReplayReport> {
    let by_reason = PyDict::new_bound(py);
    for (code, n) in r.by_reason.iter().enumerate() {
        if *n > 0 {
            by_reason.set_item(reason_name(code as u8), n)?;
        }
    }
    let by_function = PyDict::new_bound(py);
    for (fc, n) in r.by_function.iter().enumerate() {
        if *n > 0 {
            by_function.set_item(fc, n)?;
        }
    }
    let by_unit = PyDict::new_bound(py);
    for (unit, n) in r.by_unit.iter().enumerate() {
        if *n > 0 {
            by_unit.set_item(unit, n)?;
        }
    }
    let by_rule = PyDict::new_bound(py);
    let by_rule_denied = PyDict::new_bound(py);
    for ((rule, allowed), denied) in ir.rules.iter().zip(&r.by_rule).zip(&r.by_rule_denied) {
        by_rule.set_item(&rule.id, allowed)?;
        if *denied > 0 {
            by_rule_denied.set_item(&rule.id, denied)?;
        }
    }
    let a = &r.anomalies;
    let anomalies = PyDict::new_bound(py);
    for (name, n) in [
        ("truncated_frames", a.truncated_frames),
        ("undecodable_frames", a.undecodable_frames),
        ("ip_fragments", a.ip_fragments),
        ("unsupported_link", a.unsupported_link),
        ("other_tcp_segments", a.other_tcp_segments),
        ("out_of_order", a.out_of_order),
        ("retransmitted", a.retransmitted),
        ("overlapping", a.overlapping),
        ("gaps", a.gaps),
        ("gap_bytes", a.gap_bytes),
        ("resync_dropped_bytes", a.resync_dropped_bytes),
        ("partial_adu_bytes", a.partial_adu_bytes),
        ("trailing_bytes", a.trailing_bytes),
        ("data_after_close", a.data_after_close),
        ("midstream_flows", a.midstream_flows),
    ] {
        anomalies.set_item(name, n)?;
    }
    let invalid_list = r
        .invalid_list
        .iter()
        .map(|s| {
            (
                s.frame,
                s.client.to_string(),
                s.client_port,
                s.server.to_string(),
                s.server_port,
                if s.requests { "requests" } else { "replies" },
                s.reason.name(),
            )
        })
        .collect();
    let denials = r.denials.iter().map(|d| denial(py, d, ir)).collect::<PyResult<Vec<_>>>()?;
    let cip_denials = r.cip_denials.iter().map(|d| cip_denial(py, d, ir)).collect::<PyResult<Vec<_>>>()?;
    let cf = cip_fields(py, &r.cip, ir)?;
    let c = &r.cip;
    Ok(PyReplayReport {
        format,
        frames: r.frames,
        tcp_segments: r.tcp_segments,
        flows: r.flows,
        requests: r.requests,
        allowed: r.allowed,
        denied: r.denied,
        would_deny: r.would_deny,
        malformed: r.malformed,
        replies: r.replies,
        exception_replies: r.exception_replies,
        by_reason: by_reason.unbind(),
        by_function: by_function.unbind(),
        by_unit: by_unit.unbind(),
        by_rule: by_rule.unbind(),
        by_rule_denied: by_rule_denied.unbind(),
        invalid_streams: r.invalid_streams,
        invalid_list,
        denials,
        anomalies: anomalies.unbind(),
        bytes_read: r.bytes_read,
        capture_error: r.capture_error.as_ref().map(|e| e.to_string()),
        cip_flows: c.flows,
        cip_requests: c.requests,
        cip_allowed: c.allowed,
        cip_denied: c.denied,
        cip_would_deny: c.would_deny,
        cip_malformed: c.malformed,
        cip_replies: c.replies,
        cip_error_replies: c.error_replies,
        cip_leaves: c.leaves,
        cip_by_command: cf.by_command,
        cip_replies_by_command: cf.replies_by_command,
        cip_by_service: cf.by_service,
        cip_by_leaf_service: cf.by_leaf_service,
        cip_by_reason: cf.by_reason,
        cip_by_malformed: cf.by_malformed,
        cip_by_rule: cf.by_rule,
        cip_by_rule_denied: cf.by_rule_denied,
        cip_anomalies: cf.anomalies,
        cip_denials,
    })
}

fn lookup(names: impl Iterator<Item = String>, wanted: &str, what: &str) -> PyResult<u32> {
    let names: Vec<String> = names.collect();
    names.iter().position(|n| n == wanted).map(|i| i as u32).ok_or_else(|| {
        PyValueError::new_err(format!("no {what} named {wanted:?} in the policy (it has: {})", names.join(", ")))
    })
}

/// Replays a pcap or pcapng file through a policy given as IR JSON (docs/engine.md section 3).
///
/// `principal` / `device` decide every flow as that principal / against that device instead of
/// matching addresses. `max_listed` bounds the denials and invalid streams listed (all are counted).
/// `progress(done_bytes, total_bytes)` is called every few megabytes.
#[pyfunction]
#[pyo3(signature = (ir_json, path, /, principal=None, device=None, max_listed=20, progress=None))]
fn replay_capture(
    py: Python<'_>,
    ir_json: &str,
    path: &str,
    principal: Option<&str>,
    device: Option<&str>,
    max_listed: usize,
    progress: Option<PyObject>,
) -> PyResult<PyReplayReport> {
    let (ir, mut engine) = compile_ir(ir_json).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let mut targets = Targets::from_ir(&ir);
    if let Some(name) = principal {
        targets = targets.with_principal(lookup(ir.principals.iter().map(|p| p.name.clone()), name, "principal")?);
    }
    if let Some(name) = device {
        targets = targets.with_device(lookup(ir.devices.iter().map(|d| d.name.clone()), name, "device")?);
    }
    let path_owned = path.to_owned();
    let rules = ir.rules.len();
    let mut callback_error: Option<PyErr> = None;
    let outcome = py.allow_threads(|| {
        let file = std::fs::File::open(&path_owned).map_err(Failure::Io)?;
        let total = file.metadata().map_err(Failure::Io)?.len() as usize;
        let input = file;
        let report = core_replay(input, total, &mut engine, targets, rules, max_listed, |done, total| {
            if let (Some(cb), None) = (progress.as_ref(), callback_error.as_ref()) {
                Python::with_gil(|py| {
                    if let Err(e) = cb.call1(py, (done, total)) {
                        callback_error = Some(e);
                    }
                });
            }
        })
        .map_err(Failure::Capture)?;
        let format = match report.format {
            Some(Format::PcapNg) => "pcapng",
            _ => "pcap",
        };
        Ok((report, format))
    });
    if let Some(e) = callback_error {
        return Err(e);
    }
    match outcome {
        Ok((report, format)) => to_python(py, &report, &ir, format),
        Err(Failure::Io(e)) => Err(PyOSError::new_err(format!("{path}: {e}"))),
        Err(Failure::Capture(e)) => Err(PyValueError::new_err(format!("{path}: {e}"))),
    }
}

/// Why a capture could not be replayed at all.
enum Failure {
    Io(std::io::Error),
    Capture(CaptureError),
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyReplayReport>()?;
    m.add_class::<PyReplayDenial>()?;
    m.add_class::<PyReplayCipDenial>()?;
    m.add_function(wrap_pyfunction!(replay_capture, m)?)?;
    Ok(())
}
