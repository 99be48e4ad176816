//! A device's shared session (docs/relay.md, "Shared session"): the unconnected messages of every client
//! connection that holds no CIP connection of its own travel on one session of zonegate's with the device,
//! as Modbus requests of many clients share a device connection. One task owns that link (link.rs).
//!
//! ```text
//!  client task --Pending (reply_to: the client's channel)--> mpsc --> task --> link (sender context: its own)
//!                                                                                   --> device
//!  client task <--Done: the reply under the client's handle and context, or the gateway's answer-- link <-- device
//! ```
//!
//! A device returns the sender context unchanged, and the link gives each message one no other message in
//! flight has (clients pick theirs alone), so a reply is checked against its request as on a client's own
//! link (`accept_reply`). What needs a connection (Forward Open, Large Forward Open, Forward Close,
//! SendUnitData) never comes here: the device ties connections to the session they were opened on (session.rs
//! decides which link a message takes).

use std::collections::HashMap;

use tokio::sync::{mpsc, watch};
use zonegate_core::policy::EnipSession;

use super::link::{Done, Link, Pending};

/// Serves the shared session until its link ends (every message still held gets the gateway's answer), or,
/// once the device is retired (or no longer takes messages), until what is in flight is answered; then
/// unregisters and closes.
pub(crate) async fn run(mut link: Link, mut rx: mpsc::UnboundedReceiver<Pending>, mut retired: watch::Receiver<bool>) {
    // Checks replies only: no connection is opened on this session, so its table stays empty.
    let mut checker = EnipSession::new();
    let no_connections = HashMap::new();
    let mut done: Vec<Done> = Vec::new();
    let mut taking = true;
    loop {
        route(&mut done);
        if link.is_closed() {
            break;
        }
        let ending = !taking || *retired.borrow();
        if ending && !link.busy() && rx.is_empty() {
            rx.close();
            // `recv` ends only once every send that had begun has landed: a message sent while the session
            // was deciding to close is served, not lost.
            match rx.recv().await {
                None => {
                    link.close().await;
                    return;
                }
                Some(pending) => {
                    link.submit(pending, &mut done);
                    continue;
                }
            }
        }
        link.flush(&mut done);
        route(&mut done);
        if link.is_closed() {
            break;
        }
        tokio::select! {
            biased;
            io = std::future::poll_fn(|cx| link.poll_io(cx)) => {
                link.on_io(io, &mut checker, &no_connections, &mut done);
            }
            first = rx.recv(), if taking => match first {
                Some(pending) => {
                    link.submit(pending, &mut done);
                    // Let the other tasks ready on this worker (clients answered by the last read, say) hand
                    // over their messages first: they then go out in this session's next write, not one
                    // write each (as a Modbus device connection does).
                    tokio::task::yield_now().await;
                    while let Ok(pending) = rx.try_recv() {
                        link.submit(pending, &mut done);
                    }
                }
                None => taking = false,
            },
            changed = retired.changed(), if !*retired.borrow() => {
                if changed.is_err() {
                    taking = false;
                }
            }
        }
    }
    // The link ended. Its slot is free before the receiver closes, so the next message can start a session
    // at once; what was sent to this one meanwhile gets the gateway's answer.
    drop(link);
    rx.close();
    // Until every send that had begun has landed (see above).
    while let Some(pending) = rx.recv().await {
        done.push(Done { pending, reply: None });
    }
    route(&mut done);
}

/// Every answer to the client task waiting for it.
fn route(done: &mut Vec<Done>) {
    for answer in done.drain(..) {
        // Every shared message has an owner: nothing comes back.
        let _ = answer.route();
    }
}
