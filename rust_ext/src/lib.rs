//! The thin PyO3 binding: converts types and maps errors, nothing more.

use pyo3::prelude::*;

mod py_cip;
mod py_engine;
mod py_relay;
mod py_replay;

#[pymodule]
fn _engine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    py_engine::register(m)?;
    py_replay::register(m)?;
    py_cip::register(m)?;
    py_relay::register(m)?;
    Ok(())
}
