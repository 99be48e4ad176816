//! Binding of the CIP decision stage (docs/cip-engine.md section 8): `Engine.decide_cip`,
//! `Engine.decide_enip` (their entry points sit in py_engine.rs, whose `Engine` class holds the only
//! method block), `EnipSession`, `CipDecision`, and the functions the conduit and the reference model
//! use: `enip_split`, `cip_flatten`, `cip_service_names`.
//!
//! Converts types and maps errors, nothing more; every CIP parse is the core's.

// PyO3 0.22's generated wrappers convert PyErr into itself.
#![allow(clippy::useless_conversion)]

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use std::sync::OnceLock;

use zonegate_core::enip::{flatten, parse_path, split, Port, Split};
use zonegate_core::policy::cip::{cip_texts, leaf_connection, route_text, CipDecision, EnipSession, NAMED_SERVICES};

use crate::py_engine::{index, monotonic_ns, PyEngine};

/// `enip_split()` status values: the same as `split()`'s.
const COMPLETE: u8 = 0;
const INCOMPLETE: u8 = 1;
const INVALID: u8 = 2;

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "None".to_owned(), |x| x.to_string())
}

#[pyclass(module = "zonegate._engine", name = "CipDecision", frozen)]
pub struct PyCipDecision {
    #[pyo3(get)]
    verdict: u8,
    #[pyo3(get)]
    reason: u8,
    rule_id: Py<PyString>,
    malformed: Option<&'static str>,
    #[pyo3(get)]
    general_status: Option<u8>,
    #[pyo3(get)]
    encap_status: Option<u32>,
    #[pyo3(get)]
    command: u16,
    #[pyo3(get)]
    service: u8,
    #[pyo3(get)]
    leaves: u32,
    #[pyo3(get)]
    denied_leaf: Option<u32>,
    texts: Texts,
}

/// `target` and `route`: most decisions are allowed and their texts never read, so `decide_cip` keeps
/// what makes them (the message, the route prefix, the leaf) and makes them on first read.
enum Texts {
    Ready(String, String),
    Lazy { message: Py<PyBytes>, prefix: Vec<Port>, leaf: u32, made: OnceLock<(String, String)> },
}

impl Texts {
    fn get(&self, py: Python<'_>) -> (&str, &str) {
        match self {
            Texts::Ready(t, r) => (t, r),
            Texts::Lazy { message, prefix, leaf, made } => {
                let (t, r) = made.get_or_init(|| cip_texts(message.as_bytes(py), prefix, *leaf));
                (t, r)
            }
        }
    }
}

#[pymethods]
impl PyCipDecision {
    #[getter]
    fn rule_id(&self, py: Python<'_>) -> Py<PyString> {
        self.rule_id.clone_ref(py)
    }

    #[getter]
    fn malformed(&self) -> Option<&'static str> {
        self.malformed
    }

    #[getter]
    fn target(&self, py: Python<'_>) -> &str {
        self.texts.get(py).0
    }

    #[getter]
    fn route(&self, py: Python<'_>) -> &str {
        self.texts.get(py).1
    }

    /// True unless the message must be refused.
    #[getter]
    fn forward(&self) -> bool {
        self.verdict != 1
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "CipDecision(verdict={}, reason={}, rule_id={:?}, malformed={}, general_status={}, encap_status={}, \
             command={}, service={}, leaves={}, denied_leaf={}, target={:?}, route={:?})",
            self.verdict,
            self.reason,
            self.rule_id.bind(py).to_string(),
            self.malformed.map_or_else(|| "None".to_owned(), |m| format!("{m:?}")),
            opt(self.general_status),
            opt(self.encap_status),
            self.command,
            self.service,
            self.leaves,
            opt(self.denied_leaf),
            self.texts.get(py).0,
            self.texts.get(py).1
        )
    }
}

fn wrap(engine: &PyEngine, py: Python<'_>, d: CipDecision, texts: Option<Texts>) -> PyCipDecision {
    let rule_id = match d.rule.and_then(|i| engine.rule_ids.get(i as usize)) {
        Some(s) => s.clone_ref(py),
        None => engine.empty.clone_ref(py),
    };
    PyCipDecision {
        verdict: d.verdict as u8,
        reason: d.reason as u8,
        rule_id,
        malformed: d.malformed,
        general_status: d.general_status,
        encap_status: d.encap_status,
        command: d.command,
        service: d.service,
        leaves: d.leaves,
        denied_leaf: d.denied_leaf,
        texts: texts.unwrap_or(Texts::Ready(d.target, d.route)),
    }
}

/// `Engine.decide_cip`: `route` is a connection path EPATH whose port segments prefix every leaf's route.
pub(crate) fn decide_cip(
    engine: &PyEngine,
    py: Python<'_>,
    principal: &Bound<'_, PyAny>,
    device: &Bound<'_, PyAny>,
    message: &Bound<'_, PyBytes>,
    now_ns: Option<u64>,
    route: Option<&[u8]>,
) -> PyResult<PyCipDecision> {
    let (p, d) = (index(principal)?, index(device)?);
    let prefix = match route {
        None => Vec::new(),
        Some(bytes) => {
            let path = parse_path(bytes).map_err(|e| PyValueError::new_err(e.name()))?;
            if path.tag.is_some() {
                return Err(PyValueError::new_err("bad_route"));
            }
            path.route
        }
    };
    let now = now_ns.unwrap_or_else(monotonic_ns);
    let (out, leaf) = engine.inner.decide_cip_lazy(p, d, message.as_bytes(), &prefix, now);
    let texts = match leaf {
        Some(leaf) => Texts::Lazy { message: message.clone().unbind(), prefix, leaf, made: OnceLock::new() },
        None => Texts::Ready(String::new(), String::new()),
    };
    Ok(wrap(engine, py, out, Some(texts)))
}

/// `Engine.decide_enip`.
pub(crate) fn decide_enip(
    engine: &PyEngine,
    py: Python<'_>,
    principal: &Bound<'_, PyAny>,
    device: &Bound<'_, PyAny>,
    session: &Bound<'_, PyEnipSession>,
    frame: &[u8],
    now_ns: Option<u64>,
) -> PyResult<PyCipDecision> {
    let (p, d) = (index(principal)?, index(device)?);
    let now = now_ns.unwrap_or_else(monotonic_ns);
    let mut s = session.try_borrow_mut()?;
    Ok(wrap(engine, py, engine.inner.decide_enip(p, d, &mut s.inner, frame, now), None))
}

/// The connection table of one client connection; pass it to every `Engine.decide_enip` and
/// `observe_reply` of that connection.
#[pyclass(module = "zonegate._engine", name = "EnipSession")]
pub struct PyEnipSession {
    inner: EnipSession,
}

#[pymethods]
impl PyEnipSession {
    #[new]
    fn new() -> Self {
        PyEnipSession { inner: EnipSession::new() }
    }

    /// Pending and open connections.
    #[getter]
    fn connections(&self) -> usize {
        self.inner.connections()
    }

    /// False when `reply` does not answer `request`; otherwise applies Forward Open replies and
    /// Forward Close to the table and returns True.
    #[pyo3(signature = (request, reply, /))]
    fn observe_reply(&mut self, request: &[u8], reply: &[u8]) -> bool {
        self.inner.observe_reply(request, reply)
    }

    /// `request` got the gateway's answer, not the device's: a Forward Open in it is forgotten.
    #[pyo3(signature = (request, /))]
    fn unanswered(&mut self, request: &[u8]) {
        self.inner.unanswered(request)
    }

    fn __repr__(&self) -> String {
        format!("EnipSession(connections={})", self.inner.connections())
    }
}

/// Looks at the start of an EtherNet/IP stream: `(COMPLETE, used)`, `(INCOMPLETE, needed)` or
/// `(INVALID, 1)` (length beyond the bound).
#[pyfunction]
#[pyo3(signature = (buf, /))]
fn enip_split(buf: &[u8]) -> (u8, usize) {
    match split(buf) {
        Split::Complete { used } => (COMPLETE, used),
        Split::Incomplete { needed } => (INCOMPLETE, needed),
        Split::Invalid(reason) => (INVALID, reason as usize),
    }
}

/// Every service name a policy may use.
#[pyfunction]
fn cip_service_names(py: Python<'_>) -> Bound<'_, PyTuple> {
    let names: Vec<&str> = NAMED_SERVICES.iter().filter_map(|s| s.name()).collect();
    PyTuple::new_bound(py, names)
}

/// The leaves of one message router request, as 14-tuples (docs/cip-engine.md section 8);
/// ValueError(kind) when the message does not flatten.
#[pyfunction]
#[pyo3(signature = (message, /))]
fn cip_flatten<'py>(py: Python<'py>, message: &[u8]) -> PyResult<Bound<'py, PyList>> {
    let leaves = flatten(message).map_err(|e| PyValueError::new_err(e.name()))?;
    let out = PyList::empty_bound(py);
    for leaf in &leaves {
        let req = &leaf.request;
        let path = &req.path;
        let hops: Vec<_> = leaf.route.iter().chain(&path.route).collect();
        let hop_tuples = PyTuple::new_bound(
            py,
            hops.iter().map(|h| -> PyObject { (h.port, PyBytes::new_bound(py, &h.link)).into_py(py) }),
        );
        let tag_parts = path.tag.as_ref().map(|t| {
            PyTuple::new_bound(
                py,
                t.parts
                    .iter()
                    .map(|p| -> PyObject { (p.name.as_str(), PyTuple::new_bound(py, &p.elements)).into_py(py) }),
            )
        });
        let (transport_class, data_error) = match leaf_connection(req) {
            Ok(c) => (c, None),
            Err(e) => (None, Some(e.name())),
        };
        let fields: [PyObject; 14] = [
            req.service.name().into_py(py),
            req.code.into_py(py),
            route_text(hops.iter().copied()).into_py(py),
            path.tag.as_ref().map(|t| t.text()).into_py(py),
            path.class.into_py(py),
            path.instance.into_py(py),
            path.attribute.into_py(py),
            req.elements.into_py(py),
            req.anomalies.0.into_py(py),
            hop_tuples.into_py(py),
            tag_parts.into_py(py),
            leaf.depth.into_py(py),
            transport_class.into_py(py),
            data_error.into_py(py),
        ];
        out.append(PyTuple::new_bound(py, fields))?;
    }
    Ok(out)
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(enip_split, m)?)?;
    m.add_function(wrap_pyfunction!(cip_flatten, m)?)?;
    m.add_function(wrap_pyfunction!(cip_service_names, m)?)?;
    m.add_class::<PyEnipSession>()?;
    m.add_class::<PyCipDecision>()?;
    Ok(())
}
