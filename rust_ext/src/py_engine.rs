//! Binding of the framing, parsing and decision stages as `zonegate._engine`.
//!
//! Converts types and maps errors, nothing more: frames are borrowed from `bytes` without a copy,
//! rule ids are Python strings made once per engine, and batch and compile calls release the GIL.
//! Semantics: docs/engine.md; Python API: zonegate/_engine.pyi.

// PyO3 0.22's generated wrappers convert PyErr into itself.
#![allow(clippy::useless_conversion)]

use std::sync::Arc;

use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyList, PyString, PyTuple};

use zonegate_core::modbus::frame::{split as core_split, Split};
use zonegate_core::modbus::request::parse_request as core_parse_request;
use zonegate_core::modbus::response::parse_response as core_parse_response;
use zonegate_core::policy::{Decision, Engine};

/// `split()` status values.
const COMPLETE: u8 = 0;
const INCOMPLETE: u8 = 1;
const INVALID: u8 = 2;

/// CLOCK_MONOTONIC in nanoseconds: the clock of Python's `time.monotonic_ns()`.
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC is always available on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Python's spelling of an optional value, for reprs.
fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "None".to_owned(), |x| x.to_string())
}

/// IR indices arrive as Python ints; any int outside u32 (negative, or too large even for i64) is
/// an unknown index, decided as such rather than raised.
#[inline]
pub(crate) fn index(i: &Bound<'_, PyAny>) -> PyResult<u32> {
    match i.extract::<i64>() {
        Ok(i) => Ok(u32::try_from(i).unwrap_or(u32::MAX)),
        Err(_) if i.is_instance_of::<PyInt>() => Ok(u32::MAX),
        Err(e) => Err(e),
    }
}

fn split_status(s: Split) -> (u8, usize) {
    match s {
        Split::Complete { used } => (COMPLETE, used),
        Split::Incomplete { needed } => (INCOMPLETE, needed),
        Split::Invalid(reason) => (INVALID, reason as usize),
    }
}

/// Looks at the start of a stream: `(COMPLETE, adu_len)`, `(INCOMPLETE, needed)` or
/// `(INVALID, reason)`.
#[pyfunction]
#[pyo3(signature = (buf, /))]
fn split(buf: &[u8]) -> (u8, usize) {
    split_status(core_split(buf))
}

#[pyclass(module = "zonegate._engine", name = "Request", frozen)]
pub struct PyRequest {
    #[pyo3(get)]
    transaction_id: u16,
    #[pyo3(get)]
    unit: u8,
    #[pyo3(get)]
    function: u8,
    #[pyo3(get)]
    sub: Option<u16>,
    #[pyo3(get)]
    malformed: u8,
    #[pyo3(get)]
    known_function: bool,
    #[pyo3(get)]
    quantity: u32,
    ranges: Py<PyList>,
    values: Py<PyList>,
}

#[pymethods]
impl PyRequest {
    #[getter]
    fn ranges(&self, py: Python<'_>) -> Py<PyList> {
        self.ranges.clone_ref(py)
    }

    #[getter]
    fn values(&self, py: Python<'_>) -> Py<PyList> {
        self.values.clone_ref(py)
    }

    fn __repr__(&self) -> String {
        format!(
            "Request(transaction_id={}, unit={}, function={}, sub={}, malformed={}, known_function={}, quantity={})",
            self.transaction_id,
            self.unit,
            self.function,
            opt(self.sub),
            self.malformed,
            if self.known_function { "True" } else { "False" },
            self.quantity
        )
    }
}

/// Parses one request ADU into plain data (`malformed` is 0 when it is well formed).
#[pyfunction]
#[pyo3(signature = (frame, /))]
fn parse_request(py: Python<'_>, frame: &[u8]) -> PyResult<PyRequest> {
    let ranges = PyList::empty_bound(py);
    let values = PyList::empty_bound(py);
    let req = match core_parse_request(frame) {
        Ok(r) => {
            for g in r.ranges() {
                ranges.append((g.table as u8, g.start, g.end, g.write))?;
            }
            for v in r.values() {
                if let Some(value) = v.value {
                    values.append((v.table as u8, v.address, value))?;
                }
            }
            PyRequest {
                transaction_id: r.transaction_id,
                unit: r.unit,
                function: r.function,
                sub: r.sub,
                malformed: 0,
                known_function: r.code.is_some(),
                quantity: r.quantity,
                ranges: ranges.unbind(),
                values: values.unbind(),
            }
        }
        Err(e) => PyRequest {
            transaction_id: e.transaction_id,
            unit: e.unit,
            function: e.function,
            sub: e.sub,
            malformed: e.kind as u8,
            known_function: zonegate_core::modbus::FunctionCode::from_u8(e.function).is_some(),
            quantity: 0,
            ranges: ranges.unbind(),
            values: values.unbind(),
        },
    };
    Ok(req)
}

#[pyclass(module = "zonegate._engine", name = "Response", frozen)]
pub struct PyResponse {
    #[pyo3(get)]
    transaction_id: u16,
    #[pyo3(get)]
    unit: u8,
    #[pyo3(get)]
    function: u8,
    #[pyo3(get)]
    exception_code: Option<u8>,
    #[pyo3(get)]
    malformed: u8,
}

#[pymethods]
impl PyResponse {
    fn __repr__(&self) -> String {
        format!(
            "Response(transaction_id={}, unit={}, function={}, exception_code={}, malformed={})",
            self.transaction_id,
            self.unit,
            self.function,
            opt(self.exception_code),
            self.malformed
        )
    }
}

/// Parses one reply ADU (`malformed` is 0 when it is well formed).
#[pyfunction]
#[pyo3(signature = (frame, /))]
fn parse_response(frame: &[u8]) -> PyResponse {
    let r = core_parse_response(frame);
    PyResponse {
        transaction_id: r.transaction_id,
        unit: r.unit,
        function: r.function,
        exception_code: r.exception,
        malformed: r.malformed.map_or(0, |m| m as u8),
    }
}

/// True when `response` answers `request`: same transaction id, same unit, and the request's
/// function code or its exception form.
#[pyfunction]
#[pyo3(signature = (request, response, /))]
fn response_matches(request: &[u8], response: &[u8]) -> bool {
    let (tid, unit, function) = match core_parse_request(request) {
        Ok(r) => (r.transaction_id, r.unit, r.function),
        Err(e) => (e.transaction_id, e.unit, e.function),
    };
    if request.len() < 8 {
        return false;
    }
    let r = core_parse_response(response);
    r.malformed.is_none()
        && r.transaction_id == tid
        && r.unit == unit
        && (r.function == function || r.function == function | 0x80)
}

#[pyclass(module = "zonegate._engine", name = "Decision", frozen)]
pub struct PyDecision {
    #[pyo3(get)]
    verdict: u8,
    #[pyo3(get)]
    reason: u8,
    #[pyo3(get)]
    malformed: u8,
    rule_id: Py<PyString>,
    #[pyo3(get)]
    exception_code: Option<u8>,
    #[pyo3(get)]
    function: u8,
    #[pyo3(get)]
    sub: Option<u16>,
    #[pyo3(get)]
    unit: u8,
}

#[pymethods]
impl PyDecision {
    #[getter]
    fn rule_id(&self, py: Python<'_>) -> Py<PyString> {
        self.rule_id.clone_ref(py)
    }

    /// True unless the request must be refused.
    #[getter]
    fn forward(&self) -> bool {
        self.verdict != 1
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Decision(verdict={}, reason={}, malformed={}, rule_id={:?}, exception_code={}, function={}, sub={}, unit={})",
            self.verdict,
            self.reason,
            self.malformed,
            self.rule_id.bind(py).to_string(),
            opt(self.exception_code),
            self.function,
            opt(self.sub),
            self.unit
        )
    }
}

#[pyclass(module = "zonegate._engine", name = "BatchSummary", frozen)]
pub struct PyBatchSummary {
    #[pyo3(get)]
    frames: u64,
    #[pyo3(get)]
    allowed: u64,
    #[pyo3(get)]
    denied: u64,
    #[pyo3(get)]
    would_deny: u64,
    #[pyo3(get)]
    consumed: usize,
    /// Invalid reason (1 protocol_id, 2 length) when deciding stopped at an invalid header, else 0.
    #[pyo3(get)]
    invalid: u8,
    verdicts: Py<PyBytes>,
}

#[pymethods]
impl PyBatchSummary {
    #[getter]
    fn verdicts(&self, py: Python<'_>) -> Py<PyBytes> {
        self.verdicts.clone_ref(py)
    }

    fn __repr__(&self) -> String {
        format!(
            "BatchSummary(frames={}, allowed={}, denied={}, would_deny={}, consumed={}, invalid={})",
            self.frames, self.allowed, self.denied, self.would_deny, self.consumed, self.invalid
        )
    }
}

#[pyclass(module = "zonegate._engine", name = "Engine", frozen)]
pub struct PyEngine {
    /// Shared with the relays built from this engine (`zonegate._engine.Relay`).
    pub(crate) inner: Arc<Engine>,
    pub(crate) rule_ids: Vec<Py<PyString>>,
    pub(crate) empty: Py<PyString>,
}

impl PyEngine {
    #[inline]
    fn wrap(&self, py: Python<'_>, d: Decision) -> PyDecision {
        let rule_id = match d.rule.and_then(|i| self.rule_ids.get(i as usize)) {
            Some(s) => s.clone_ref(py),
            None => self.empty.clone_ref(py),
        };
        PyDecision {
            verdict: d.verdict as u8,
            reason: d.reason as u8,
            malformed: d.malformed.map_or(0, |m| m as u8),
            rule_id,
            exception_code: d.exception,
            function: d.function,
            sub: d.sub,
            unit: d.unit,
        }
    }
}

#[pymethods]
impl PyEngine {
    /// Compiles a policy IR (JSON text). An invalid IR raises ValueError naming the field.
    #[new]
    #[pyo3(signature = (ir_json, /))]
    fn new(py: Python<'_>, ir_json: &str) -> PyResult<Self> {
        let inner =
            py.allow_threads(|| Engine::from_json(ir_json)).map_err(|e| PyValueError::new_err(e.to_string()))?;
        let rule_ids =
            (0..inner.rule_count() as u32).map(|i| PyString::new_bound(py, inner.rule_id(i)).unbind()).collect();
        Ok(PyEngine { inner: Arc::new(inner), rule_ids, empty: PyString::new_bound(py, "").unbind() })
    }

    /// `"enforce"` or `"monitor"`.
    #[getter]
    fn mode(&self) -> &'static str {
        self.inner.mode().name()
    }

    /// IR index of a principal; KeyError when the policy has none by that name.
    #[pyo3(signature = (name, /))]
    fn principal_index(&self, name: &str) -> PyResult<u32> {
        self.inner.principal_index(name).ok_or_else(|| PyKeyError::new_err(name.to_owned()))
    }

    /// IR index of a device; KeyError when the policy has none by that name.
    #[pyo3(signature = (name, /))]
    fn device_index(&self, name: &str) -> PyResult<u32> {
        self.inner.device_index(name).ok_or_else(|| PyKeyError::new_err(name.to_owned()))
    }

    /// Rule ids in policy order (a decision's `rule_id` is one of these, or empty).
    #[getter]
    fn rule_ids<'py>(&self, py: Python<'py>) -> Bound<'py, PyTuple> {
        PyTuple::new_bound(py, self.rule_ids.iter().map(|s| s.clone_ref(py)))
    }

    /// Decides one request ADU; `now_ns=None` reads `time.monotonic_ns()`'s clock.
    #[pyo3(signature = (principal, device, frame, now_ns = None))]
    fn decide(
        &self,
        py: Python<'_>,
        principal: &Bound<'_, PyAny>,
        device: &Bound<'_, PyAny>,
        frame: &[u8],
        now_ns: Option<u64>,
    ) -> PyResult<PyDecision> {
        let (p, d) = (index(principal)?, index(device)?);
        let now = now_ns.unwrap_or_else(monotonic_ns);
        Ok(self.wrap(py, self.inner.decide(p, d, frame, now)))
    }

    /// Splits `buf` and decides every complete ADU at its start, all at one instant, without the
    /// GIL. Stops at the first incomplete or invalid header (`consumed` says how far it got).
    #[pyo3(signature = (principal, device, buf, now_ns = None))]
    fn decide_batch(
        &self,
        py: Python<'_>,
        principal: &Bound<'_, PyAny>,
        device: &Bound<'_, PyAny>,
        buf: &[u8],
        now_ns: Option<u64>,
    ) -> PyResult<PyBatchSummary> {
        let (p, d) = (index(principal)?, index(device)?);
        let now = now_ns.unwrap_or_else(monotonic_ns);
        let s = py.allow_threads(|| self.inner.decide_batch(p, d, buf, now));
        Ok(PyBatchSummary {
            frames: s.frames,
            allowed: s.allowed,
            denied: s.denied,
            would_deny: s.would_deny,
            consumed: s.consumed,
            invalid: match s.stop {
                Some(Split::Invalid(r)) => r as u8,
                _ => 0,
            },
            verdicts: PyBytes::new_bound(py, &s.verdicts).unbind(),
        })
    }

    /// Decides one CIP message router request (docs/cip-engine.md section 8).
    #[pyo3(signature = (principal, device, message, now_ns = None, route = None))]
    fn decide_cip(
        &self,
        py: Python<'_>,
        principal: &Bound<'_, PyAny>,
        device: &Bound<'_, PyAny>,
        message: &Bound<'_, PyBytes>,
        now_ns: Option<u64>,
        route: Option<&[u8]>,
    ) -> PyResult<crate::py_cip::PyCipDecision> {
        crate::py_cip::decide_cip(self, py, principal, device, message, now_ns, route)
    }

    /// Decides one EtherNet/IP encapsulation message of a client session.
    #[pyo3(signature = (principal, device, session, frame, now_ns = None))]
    fn decide_enip(
        &self,
        py: Python<'_>,
        principal: &Bound<'_, PyAny>,
        device: &Bound<'_, PyAny>,
        session: &Bound<'_, crate::py_cip::PyEnipSession>,
        frame: &[u8],
        now_ns: Option<u64>,
    ) -> PyResult<crate::py_cip::PyCipDecision> {
        crate::py_cip::decide_enip(self, py, principal, device, session, frame, now_ns)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("COMPLETE", COMPLETE)?;
    m.add("INCOMPLETE", INCOMPLETE)?;
    m.add("INVALID", INVALID)?;
    m.add_function(wrap_pyfunction!(split, m)?)?;
    m.add_function(wrap_pyfunction!(parse_request, m)?)?;
    m.add_function(wrap_pyfunction!(parse_response, m)?)?;
    m.add_function(wrap_pyfunction!(response_matches, m)?)?;
    m.add_class::<PyRequest>()?;
    m.add_class::<PyResponse>()?;
    m.add_class::<PyDecision>()?;
    m.add_class::<PyBatchSummary>()?;
    m.add_class::<PyEngine>()?;
    Ok(())
}
