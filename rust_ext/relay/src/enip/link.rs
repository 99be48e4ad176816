//! A client connection's link to its device: zonegate's own session there, owned and polled by the client's
//! task (docs/relay.md, "EtherNet/IP"; docs/enip-conduit.md, "Sessions", "Device faults").
