//! Binding of capture replay (`zonegate replay`) as `zonegate._engine.replay_capture`.
//!
//! The whole loop (file read, pcap walk, TCP reassembly, MBAP split, decisions) runs in Rust with the
//! GIL released; Python gets one report object and formats it. Only the optional progress callback
//! takes the GIL back, every few megabytes.

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use zonegate_core::capture::pcap::{CaptureError, Format};
use zonegate_core::capture::replay::{compile_ir, replay_stream as core_replay, Denial, Report, Targets, UNKNOWN};
use zonegate_core::modbus::functions::Malformed;
use zonegate_core::policy::{Ir, Reason};

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
}

#[pymethods]
impl PyReplayReport {
    fn __repr__(&self) -> String {
        format!(
            "ReplayReport(requests={}, allowed={}, denied={}, would_deny={}, malformed={}, invalid_streams={})",
            self.requests, self.allowed, self.denied, self.would_deny, self.malformed, self.invalid_streams
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
    m.add_function(wrap_pyfunction!(replay_capture, m)?)?;
    Ok(())
}
