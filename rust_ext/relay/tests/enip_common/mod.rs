//! A fake EtherNet/IP device on 127.0.0.1, a small CIP policy, and EtherNet/IP clients of the relay, for the
//! relay's EtherNet/IP tests. Every wait is bounded.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU16, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use zonegate_core::policy::Engine;
use zonegate_relay::config::{EnipDeviceConfig, ListenerConfig, ListenerKind, RelayConfig};
use zonegate_relay::enip::frames::{self, HEADER_LEN};

/// Upper bound on any wait: a failure shows up as a timeout, never as a hang.
pub const BOUND: Duration = Duration::from_secs(10);

/// The session handle the fake device gives every RegisterSession.
pub const DEVICE_SESSION: u32 = 0xD0D0_0001;

/// Read Tag / Write Tag (CIP services).
pub const READ_TAG: u8 = 0x4C;
pub const WRITE_TAG: u8 = 0x4D;

// -- policy ---------------------------------------------------------------------------------------------------

/// The operator's Read Tag of `recipe`: the CIP entry `engine()` allows.
const READ_RECIPE: &str = r#"{"services": ["read_tag"], "tags": [{"parts": [{"name": "recipe", "elements": null}]}]}"#;

/// Principal `operator` (index 0) on device `press-plc` (index 0), allowed the CIP entries `cip` (JSON).
fn engine_allowing(cip: &[&str]) -> Arc<Engine> {
    let ir = format!(
        r#"{{"version": 1, "mode": "enforce",
        "principals": [{{"name": "operator", "tls_roles": [], "subjects": [], "opcua_users": [], "sources": []}}],
        "devices": [{{"name": "press-plc", "zone": "cell-a", "host": "127.0.0.1", "port": 502, "units": null,
                     "enip": {{"host": "127.0.0.1", "port": 44818}}}}],
        "rules": [{{"id": "operator-reads-recipe", "principals": [0], "devices": [0], "units": null, "allow": [],
                   "cip": [{}]}}]}}"#,
        cip.join(", ")
    );
    Arc::new(Engine::from_json(&ir).expect("valid IR"))
}

/// Principal `operator` may Read Tag `recipe` on device `press-plc`; nothing else.
pub fn engine() -> Arc<Engine> {
    engine_allowing(&[READ_RECIPE])
}

/// `engine()`, and the operator may also open and close connections.
pub fn engine_with_connections() -> Arc<Engine> {
    engine_allowing(&[READ_RECIPE, r#"{"services": ["forward_open", "forward_close"]}"#])
}

pub fn enip_device_config(port: u16, max_connections: usize, timeout: Duration) -> EnipDeviceConfig {
    EnipDeviceConfig {
        name: "press-plc".to_owned(),
        host: "127.0.0.1".to_owned(),
        port,
        timeout,
        max_connections,
        engine_index: 0,
    }
}

/// A plain EtherNet/IP listener `cell-enip` whose device is `enip_devices[0]`.
pub fn enip_listener_config() -> ListenerConfig {
    ListenerConfig {
        name: "cell-enip".to_owned(),
        kind: ListenerKind::Enip,
        tls: None,
        devices: vec![0],
        max_outstanding: 10,
        idle_timeout: Duration::from_secs(30),
        request_timeout: Duration::from_secs(5),
    }
}

pub fn enip_relay_config(device: EnipDeviceConfig) -> RelayConfig {
    RelayConfig {
        listeners: vec![enip_listener_config()],
        devices: Vec::new(),
        enip_devices: vec![device],
        latency_bounds: vec![0.0005, 0.001, 0.01, 0.1, 1.0],
    }
}

// -- messages -------------------------------------------------------------------------------------------------

pub fn message(command: u16, session: u32, context: &[u8; 8], data: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER_LEN + data.len());
    m.extend_from_slice(&command.to_le_bytes()); // command
    m.extend_from_slice(&(data.len() as u16).to_le_bytes()); // length
    m.extend_from_slice(&session.to_le_bytes()); // session handle
    m.extend_from_slice(&0u32.to_le_bytes()); // status
    m.extend_from_slice(context); // sender context
    m.extend_from_slice(&0u32.to_le_bytes()); // options
    m.extend_from_slice(data);
    m
}

pub fn register_session(context: &[u8; 8]) -> Vec<u8> {
    message(frames::REGISTER_SESSION, 0, context, &[1, 0, 0, 0]) // protocol version 1, options 0
}

/// SendRRData carrying `cip` in an unconnected data item after a null address item.
pub fn send_rr(session: u32, context: &[u8; 8], cip: &[u8]) -> Vec<u8> {
    let mut data = vec![0, 0, 0, 0, 0, 0]; // interface handle, timeout
    data.extend_from_slice(&2u16.to_le_bytes()); // item count
    data.extend_from_slice(&[0, 0, 0, 0]); // null address item, length 0
    data.extend_from_slice(&frames::ITEM_UNCONNECTED_DATA.to_le_bytes()); // unconnected data item
    data.extend_from_slice(&(cip.len() as u16).to_le_bytes()); // its length
    data.extend_from_slice(cip);
    message(frames::SEND_RR_DATA, session, context, &data)
}

fn symbol(tag: &str) -> Vec<u8> {
    let mut v = vec![0x91, tag.len() as u8]; // ANSI extended symbol segment
    v.extend_from_slice(tag.as_bytes());
    if tag.len() % 2 == 1 {
        v.push(0); // pad to a word
    }
    v
}

/// Read Tag of one element of `tag`.
pub fn read_tag(tag: &str) -> Vec<u8> {
    read_elements(tag, 1)
}

/// Read Tag of `count` elements of `tag` (the fake device echoes the count: a reply tells which read it is).
pub fn read_elements(tag: &str, count: u16) -> Vec<u8> {
    let path = symbol(tag);
    [vec![READ_TAG, (path.len() / 2) as u8], path, count.to_le_bytes().to_vec()].concat()
}

/// The element count the fake device echoed in its reply to a Read Tag.
pub fn echoed_count(reply: &[u8]) -> Option<u16> {
    let cip = frames::items(reply).and_then(|i| i.cip())?;
    let data = cip.get(4 + 2 * usize::from(*cip.get(3)?)..)?;
    match data {
        [0xC4, 0x00, lo, hi] => Some(u16::from_le_bytes([*lo, *hi])),
        _ => None,
    }
}

/// Write Tag of one DINT `value` to `tag`.
pub fn write_tag(tag: &str, value: i32) -> Vec<u8> {
    let path = symbol(tag);
    [vec![WRITE_TAG, (path.len() / 2) as u8], path, vec![0xC4, 0x00, 1, 0], value.to_le_bytes().to_vec()].concat()
}

/// The CIP message of a SendRRData reply: (service, general status, extended status words).
pub fn cip_status(reply: &[u8]) -> (u8, u8, Vec<u16>) {
    let cip = frames::items(reply).and_then(|i| i.cip()).expect("a CIP reply");
    let words = cip[3] as usize;
    let extended = (0..words).map(|i| u16::from_le_bytes([cip[4 + 2 * i], cip[5 + 2 * i]])).collect();
    (cip[0], cip[2], extended)
}

/// A class 3 Forward Open (to the Message Router, slot 0) with connection serial `serial`.
pub fn forward_open(serial: u16) -> Vec<u8> {
    let mut v = vec![0x54, 0x02, 0x20, 0x06, 0x24, 0x01]; // service, path: Connection Manager, instance 1
    v.extend_from_slice(&[0x0A, 0x0E]); // priority / time tick, timeout ticks
    v.extend_from_slice(&0u32.to_le_bytes()); // O->T connection id: the target picks it
    v.extend_from_slice(&0x0002_0001u32.to_le_bytes()); // T->O connection id
    v.extend_from_slice(&serial.to_le_bytes()); // connection serial
    v.extend_from_slice(&0x4Du16.to_le_bytes()); // originator vendor
    v.extend_from_slice(&0x1234_5678u32.to_le_bytes()); // originator serial
    v.extend_from_slice(&[0x03, 0, 0, 0]); // timeout multiplier, reserved
    v.extend_from_slice(&5_000_000u32.to_le_bytes()); // O->T RPI
    v.extend_from_slice(&0x43F8u16.to_le_bytes()); // O->T parameters: 504 bytes, point to point
    v.extend_from_slice(&5_000_000u32.to_le_bytes()); // T->O RPI
    v.extend_from_slice(&0x43F8u16.to_le_bytes()); // T->O parameters
    v.push(0xA3); // transport: server, application trigger, class 3
    v.extend_from_slice(&[0x02, 0x01, 0x00, 0x20, 0x02]); // path, 2 words: port 1 slot 0, Message Router
    v
}

/// The fake device's O->T connection id for a Forward Open with connection serial `serial`.
pub fn o_t_id(serial: u16) -> u32 {
    0xAA00_0000 | u32::from(serial)
}

/// The Forward Open reply data for `request` (the CIP request): the ids, the request's triad, its RPIs.
fn forward_open_reply(request: &[u8]) -> Vec<u8> {
    let data = &request[6..];
    let serial = u16::from_le_bytes([data[10], data[11]]);
    let mut v = o_t_id(serial).to_le_bytes().to_vec(); // O->T connection id, the device's
    v.extend_from_slice(&data[6..10]); // T->O connection id, as asked
    v.extend_from_slice(&data[10..18]); // connection serial, vendor, originator serial
    v.extend_from_slice(&data[22..26]); // O->T API: the RPI
    v.extend_from_slice(&data[28..32]); // T->O API
    v.extend_from_slice(&[0, 0]); // application reply size, reserved
    v
}

/// Reads one whole encapsulation message (bounded).
pub async fn read_message<S: AsyncRead + Unpin>(stream: &mut S) -> Vec<u8> {
    let mut header = vec![0u8; HEADER_LEN];
    tokio::time::timeout(BOUND, stream.read_exact(&mut header)).await.expect("a message in time").expect("a message");
    let length = frames::header(&header).length as usize;
    header.resize(HEADER_LEN + length, 0);
    tokio::time::timeout(BOUND, stream.read_exact(&mut header[HEADER_LEN..]))
        .await
        .expect("the message's data in time")
        .expect("the message's data");
    header
}

pub async fn write<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
    stream.flush().await.unwrap();
}

// -- the fake device ------------------------------------------------------------------------------------------

/// How the fake device treats SendRRData.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// A CIP reply (service | 0x80, status 0) with the request's sender context and the device's handle.
    Answer = 0,
    /// Nothing (sessions and ListIdentity are still answered).
    Silent = 1,
    /// The connection is closed.
    Close = 2,
}

/// An identity item body: version, socket address (the device's own), ids, revision, status, serial, name.
pub const IDENTITY: &[u8] = b"\x01\x00\x00\x02\xaf\x12\xc0\xa8\x0a\x0c\0\0\0\0\0\0\0\0\x01\x00\x0e\x00\x5a\x00\x0b\x02\x30\x00\x78\x56\x34\x12\x07PLC-5/1\x03";

/// What the fake device saw, and how it answers.
#[derive(Default)]
pub struct Seen {
    /// Every message it received, whole, in arrival order, with the number of the connection it came on
    /// (0 for the first accepted).
    pub frames: Mutex<Vec<(usize, Vec<u8>)>>,
    pub accepted: AtomicUsize,
    mode: AtomicU8,
    /// A Read Tag of a multiple of this many elements (0: none) is answered only after `SLOW_FOR`, and the
    /// device reads nothing more on that connection meanwhile, as a device busy with a slow request.
    pub slow_every: AtomicU16,
}

/// How long a slow Read Tag keeps the fake device busy.
pub const SLOW_FOR: Duration = Duration::from_millis(400);

impl Seen {
    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            0 => Mode::Answer,
            1 => Mode::Silent,
            _ => Mode::Close,
        }
    }

    pub fn frames(&self) -> Vec<Vec<u8>> {
        self.frames.lock().unwrap().iter().map(|(_, f)| f.clone()).collect()
    }

    /// Received messages of `command`.
    pub fn of(&self, command: u16) -> Vec<Vec<u8>> {
        self.frames().into_iter().filter(|f| frames::header(f).command == command).collect()
    }

    /// Received messages of `command`, with the connection each came on.
    pub fn on(&self, command: u16) -> Vec<(usize, Vec<u8>)> {
        let frames = self.frames.lock().unwrap();
        frames.iter().filter(|(_, f)| frames::header(f).command == command).cloned().collect()
    }
}

/// A fake EtherNet/IP device on 127.0.0.1:0: its port and what it saw.
pub async fn enip_device() -> (u16, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let shared = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let connection = shared.accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, connection, shared.clone()));
        }
    });
    (port, seen)
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, connection: usize, seen: Arc<Seen>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let got = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..got]);
        let mut out = Vec::new();
        while buf.len() >= HEADER_LEN && buf.len() >= HEADER_LEN + frames::header(&buf).length as usize {
            let used = HEADER_LEN + frames::header(&buf).length as usize;
            let frame: Vec<u8> = buf.drain(..used).collect();
            seen.frames.lock().unwrap().push((connection, frame.clone()));
            let header = frames::header(&frame);
            match header.command {
                frames::REGISTER_SESSION => out.extend(message(
                    frames::REGISTER_SESSION,
                    DEVICE_SESSION,
                    &header.sender_context,
                    &frame[HEADER_LEN..],
                )),
                frames::LIST_IDENTITY => {
                    let mut data = 1u16.to_le_bytes().to_vec(); // item count
                    data.extend_from_slice(&frames::ITEM_IDENTITY.to_le_bytes()); // identity item
                    data.extend_from_slice(&(IDENTITY.len() as u16).to_le_bytes()); // its length
                    data.extend_from_slice(IDENTITY);
                    out.extend(message(frames::LIST_IDENTITY, 0, &header.sender_context, &data));
                }
                frames::UNREGISTER_SESSION => return,
                frames::SEND_RR_DATA => match seen.mode() {
                    Mode::Answer => {
                        let cip = frames::items(&frame).and_then(|i| i.cip()).map(<[u8]>::to_vec).unwrap_or_default();
                        let service = cip.first().copied();
                        let mut reply = vec![service.unwrap_or(0) | 0x80, 0, 0, 0]; // reply, reserved, status 0
                        if service == Some(0x54) {
                            reply.extend(forward_open_reply(&cip));
                        } else if service == Some(READ_TAG) {
                            // Type DINT, then the request's element count where the values would be.
                            let data = cip.get(2 + 2 * usize::from(cip[1])..).unwrap_or_default();
                            reply.extend_from_slice(&[0xC4, 0x00]);
                            reply.extend_from_slice(data);
                            let every = seen.slow_every.load(Ordering::SeqCst);
                            if let (true, [lo, hi]) = (every > 0, data) {
                                if u16::from_le_bytes([*lo, *hi]).is_multiple_of(every) {
                                    if stream.write_all(&out).await.is_err() {
                                        return;
                                    }
                                    out.clear();
                                    tokio::time::sleep(SLOW_FOR).await;
                                }
                            }
                        }
                        let mut r = send_rr(DEVICE_SESSION, &header.sender_context, &reply);
                        r[4..8].copy_from_slice(&DEVICE_SESSION.to_le_bytes());
                        out.extend(r);
                    }
                    Mode::Silent => {}
                    Mode::Close => return,
                },
                _ => {}
            }
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
    }
}
