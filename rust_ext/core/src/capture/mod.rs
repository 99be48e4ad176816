//! Capture replay, the offline stage beside the data plane: recorded traffic is read from pcap or pcapng
//! (`pcap`), cut into TCP segments (`segment`), put back into per-direction byte streams (`reassembly`),
//! split into Modbus ADUs and decided by the same engine the conduit uses (`replay`).
//!
//! Nothing here does I/O: the caller hands in the capture's bytes.

pub mod pcap;
pub mod reassembly;
pub mod replay;
pub mod segment;
