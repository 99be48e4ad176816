//! The EtherNet/IP conduit on the relay (docs/relay.md, "EtherNet/IP"; behaviour: docs/enip-conduit.md).
//!
//! ```text
//!  client message --session.rs: frame, check the session, decide (core decide_enip)--> refuse | answer | forward
//!    forward --link.rs: the client's own link (zonegate's session with the device)--> device
//!         or --shared.rs: the device's shared session, for a client with no connection of its own--> device
//!    reply   <--link.rs: matched by the client's EnipSession (observe_reply), handle swapped back-- device
//!  frames.rs  the messages zonegate writes itself (refusals, RegisterSession, List*, the gateway's answer)
//!  device.rs  per device: how many links, connect backoff, the identity learned for ListIdentity
//! ```
//!
//! A CIP device ties a session and the connections opened on it to one TCP connection, so each client
//! connection gets one link of its own, owned and polled by the client's task: a reply wakes that task and
//! nothing else.

pub mod device;
pub mod frames;
pub(crate) mod link;
pub(crate) mod session;
pub(crate) mod shared;
