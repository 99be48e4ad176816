//! Capture replay, the offline stage beside the data plane: recorded traffic is read from pcap or pcapng
//! (`pcap`), cut into TCP segments (`segment`), put back into per-direction byte streams (`reassembly`),
//! split into Modbus ADUs or EtherNet/IP messages and decided by the same engine the conduit uses
//! (`replay`, with the EtherNet/IP session state in `enip_flow`).
//!
//! Nothing here does I/O: the caller hands in the capture's bytes.

pub mod enip_flow;
pub mod pcap;
pub mod reassembly;
pub mod replay;
pub mod segment;
