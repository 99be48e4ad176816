//! One EtherNet/IP client connection (docs/relay.md, "EtherNet/IP"; docs/enip-conduit.md, "A message's
//! path"): frame, check the session, decide, refuse / answer / forward on the client's link, reply.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::listener::ClientStream;
use crate::Shared;

/// Serves one EtherNet/IP connection until it closes; sets `asked` when an `identify` event goes out.
/// `local`: the address the client dialled (ListIdentity names it instead of the device's).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve<S: ClientStream>(
    shared: &Arc<Shared>,
    index: usize,
    label: &Arc<str>,
    stream: S,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    conn_id: u64,
    der: Option<Vec<u8>>,
    asked: &AtomicBool,
) {
    let _ = (shared, index, label, stream, peer, local, conn_id, der, asked);
    todo!()
}
