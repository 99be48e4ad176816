//! zonegate's pure core: frames in, decisions out. No Python, no I/O.
//!
//! Pipeline order: `modbus` and `enip` (framing and parsing) -> `policy` (compiled rules, decide, rate).
//! `capture` (pcap reading and TCP reassembly) feeds recorded traffic to the same stages for replay.

pub mod capture;
pub mod enip;
pub mod modbus;
pub mod policy;
