//! Parsing stage: CIP message router requests and responses (Vol. 1, 2-4), with meaning precomputed.
//!
//! ```text
//!  request:  | service u8 | path size u8 (words) | path (2*size bytes) | request data ... |
//!  response: | service|0x80 u8 | reserved u8 | general status u8 | extra status size u8 (words) |
//!            | extra status (2*size bytes) | response data ... |
//! ```
//!
//! Service codes 0x01..=0x1C mean the same for every object; codes from 0x4B up are object specific,
//! so the service a request names is resolved against its path: 0x52 is Unconnected Send to the
//! Connection Manager (class 0x06) and Read Tag Fragmented to a Logix tag. The result carries the
//! resolved [`Service`], the [`Path`], the [`Access`] kind and [`Anomalies`]: what the policy matches on.

use super::epath::{walk_path, Address, Path, PathBuilder, PathError, PathSink};
use super::le16;

/// Anomaly flags set on a request while parsing: not errors, but worth a policy's or an auditor's eye.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub struct Anomalies(pub u32);

impl Anomalies {
    /// A pad byte in the path is not 0.
    pub const NONZERO_PAD: Anomalies = Anomalies(1 << 0);
    /// A path names both a logical class/instance and a tag symbol.
    pub const MIXED_ADDRESSING: Anomalies = Anomalies(1 << 1);
    /// A data segment in the path (normal in Forward Open, odd in a request path).
    pub const DATA_SEGMENT: Anomalies = Anomalies(1 << 2);
    /// A network segment in the path (normal in Forward Open, odd in a request path).
    pub const NETWORK_SEGMENT: Anomalies = Anomalies(1 << 3);
    /// The path names neither a class nor a tag.
    pub const NO_TARGET: Anomalies = Anomalies(1 << 4);
    /// An object-specific service code that zonegate cannot name for the path's object.
    pub const UNKNOWN_SERVICE: Anomalies = Anomalies(1 << 5);
    /// Request data shorter than the service needs (Read Tag without its count, Write Tag without a value, ...).
    pub const SHORT_DATA: Anomalies = Anomalies(1 << 6);
    /// An attribute service without an attribute id in its path.
    pub const MISSING_ATTRIBUTE: Anomalies = Anomalies(1 << 7);

    pub const fn empty() -> Self {
        Anomalies(0)
    }
    pub const fn contains(self, o: Anomalies) -> bool {
        self.0 & o.0 == o.0
    }
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Anomalies {
    type Output = Anomalies;
    fn bitor(self, o: Anomalies) -> Anomalies {
        Anomalies(self.0 | o.0)
    }
}

impl std::ops::BitOrAssign for Anomalies {
    fn bitor_assign(&mut self, o: Anomalies) {
        self.0 |= o.0;
    }
}

/// Class ids the resolver needs.
pub mod class {
    /// 0x01: Identity.
    pub const IDENTITY: u32 = 0x01;
    /// 0x02: Message Router (Multiple Service Packet).
    pub const MESSAGE_ROUTER: u32 = 0x02;
    /// 0x06: Connection Manager (Unconnected Send, Forward Open/Close).
    pub const CONNECTION_MANAGER: u32 = 0x06;
    /// 0x6B: Logix Symbol object (tags addressed by instance).
    pub const SYMBOL: u32 = 0x6B;
    /// 0x6C: Logix Template object.
    pub const TEMPLATE: u32 = 0x6C;
}

/// What a request does, resolved from the service code and the object it is sent to. Each variant
/// names its wire code; policies name services by [`Service::name`] or by number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    /// 0x01
    GetAttributeAll,
    /// 0x02
    SetAttributeAll,
    /// 0x03
    GetAttributeList,
    /// 0x04
    SetAttributeList,
    /// 0x05
    Reset,
    /// 0x06
    Start,
    /// 0x07
    Stop,
    /// 0x08
    Create,
    /// 0x09
    Delete,
    /// 0x0A to the Message Router: a container of requests.
    MultipleServicePacket,
    /// 0x0D
    ApplyAttributes,
    /// 0x0E
    GetAttributeSingle,
    /// 0x10
    SetAttributeSingle,
    /// 0x11
    FindNextObjectInstance,
    /// 0x15
    Restore,
    /// 0x16
    Save,
    /// 0x17
    NoOperation,
    /// 0x18
    GetMember,
    /// 0x19
    SetMember,
    /// 0x1A
    InsertMember,
    /// 0x1B
    RemoveMember,
    /// 0x1C
    GroupSync,
    /// 0x4C to a tag
    ReadTag,
    /// 0x4D to a tag
    WriteTag,
    /// 0x4E to a tag
    ReadModifyWriteTag,
    /// 0x52 to a tag
    ReadTagFragmented,
    /// 0x53 to a tag
    WriteTagFragmented,
    /// 0x55 to the Symbol or Template class
    GetInstanceAttributeList,
    /// 0x4E to the Connection Manager
    ForwardClose,
    /// 0x52 to the Connection Manager: a container of one request and its route.
    UnconnectedSend,
    /// 0x54 to the Connection Manager
    ForwardOpen,
    /// 0x5B to the Connection Manager
    LargeForwardOpen,
    /// 0x56 to the Connection Manager
    GetConnectionData,
    /// 0x57 to the Connection Manager
    SearchConnectionData,
    /// 0x5A to the Connection Manager
    GetConnectionOwner,
    /// Any other code (reserved, vendor or object specific): matched by number only.
    Other(u8),
}

impl Service {
    /// Resolves a request's service code against its path.
    pub fn resolve(code: u8, path: &Path) -> Service {
        Service::resolve_address(code, path.class, path.tag.is_some())
    }

    /// [`Service::resolve`] from what the resolution looks at: the path's class and whether it names a tag.
    #[inline]
    pub(crate) fn resolve_address(code: u8, class: Option<u32>, tagged: bool) -> Service {
        use Service::*;
        let common = match code {
            0x01 => Some(GetAttributeAll),
            0x02 => Some(SetAttributeAll),
            0x03 => Some(GetAttributeList),
            0x04 => Some(SetAttributeList),
            0x05 => Some(Reset),
            0x06 => Some(Start),
            0x07 => Some(Stop),
            0x08 => Some(Create),
            0x09 => Some(Delete),
            0x0D => Some(ApplyAttributes),
            0x0E => Some(GetAttributeSingle),
            0x10 => Some(SetAttributeSingle),
            0x11 => Some(FindNextObjectInstance),
            0x15 => Some(Restore),
            0x16 => Some(Save),
            0x17 => Some(NoOperation),
            0x18 => Some(GetMember),
            0x19 => Some(SetMember),
            0x1A => Some(InsertMember),
            0x1B => Some(RemoveMember),
            0x1C => Some(GroupSync),
            _ => None,
        };
        if let Some(s) = common {
            return s;
        }
        if code == 0x0A && class == Some(class::MESSAGE_ROUTER) && !tagged {
            return MultipleServicePacket;
        }
        if class == Some(class::CONNECTION_MANAGER) && !tagged {
            return match code {
                0x4E => ForwardClose,
                0x52 => UnconnectedSend,
                0x54 => ForwardOpen,
                0x5B => LargeForwardOpen,
                0x56 => GetConnectionData,
                0x57 => SearchConnectionData,
                0x5A => GetConnectionOwner,
                other => Other(other),
            };
        }
        let tag_like = tagged || class == Some(class::SYMBOL);
        if tag_like {
            match code {
                0x4C => return ReadTag,
                0x4D => return WriteTag,
                0x4E => return ReadModifyWriteTag,
                0x52 => return ReadTagFragmented,
                0x53 => return WriteTagFragmented,
                _ => {}
            }
        }
        if code == 0x55 && (class == Some(class::SYMBOL) || class == Some(class::TEMPLATE)) {
            return GetInstanceAttributeList;
        }
        Other(code)
    }

    /// The wire code.
    pub const fn code(self) -> u8 {
        use Service::*;
        match self {
            GetAttributeAll => 0x01,
            SetAttributeAll => 0x02,
            GetAttributeList => 0x03,
            SetAttributeList => 0x04,
            Reset => 0x05,
            Start => 0x06,
            Stop => 0x07,
            Create => 0x08,
            Delete => 0x09,
            MultipleServicePacket => 0x0A,
            ApplyAttributes => 0x0D,
            GetAttributeSingle => 0x0E,
            SetAttributeSingle => 0x10,
            FindNextObjectInstance => 0x11,
            Restore => 0x15,
            Save => 0x16,
            NoOperation => 0x17,
            GetMember => 0x18,
            SetMember => 0x19,
            InsertMember => 0x1A,
            RemoveMember => 0x1B,
            GroupSync => 0x1C,
            ReadTag => 0x4C,
            WriteTag => 0x4D,
            ReadModifyWriteTag => 0x4E,
            ReadTagFragmented => 0x52,
            WriteTagFragmented => 0x53,
            GetInstanceAttributeList => 0x55,
            ForwardClose => 0x4E,
            UnconnectedSend => 0x52,
            ForwardOpen => 0x54,
            LargeForwardOpen => 0x5B,
            GetConnectionData => 0x56,
            SearchConnectionData => 0x57,
            GetConnectionOwner => 0x5A,
            Other(c) => c,
        }
    }

    /// Stable snake_case name, as policies spell it; `None` for [`Service::Other`].
    pub const fn name(self) -> Option<&'static str> {
        use Service::*;
        Some(match self {
            GetAttributeAll => "get_attribute_all",
            SetAttributeAll => "set_attribute_all",
            GetAttributeList => "get_attribute_list",
            SetAttributeList => "set_attribute_list",
            Reset => "reset",
            Start => "start",
            Stop => "stop",
            Create => "create",
            Delete => "delete",
            MultipleServicePacket => "multiple_service_packet",
            ApplyAttributes => "apply_attributes",
            GetAttributeSingle => "get_attribute_single",
            SetAttributeSingle => "set_attribute_single",
            FindNextObjectInstance => "find_next_object_instance",
            Restore => "restore",
            Save => "save",
            NoOperation => "no_operation",
            GetMember => "get_member",
            SetMember => "set_member",
            InsertMember => "insert_member",
            RemoveMember => "remove_member",
            GroupSync => "group_sync",
            ReadTag => "read_tag",
            WriteTag => "write_tag",
            ReadModifyWriteTag => "read_modify_write_tag",
            ReadTagFragmented => "read_tag_fragmented",
            WriteTagFragmented => "write_tag_fragmented",
            GetInstanceAttributeList => "get_instance_attribute_list",
            ForwardClose => "forward_close",
            UnconnectedSend => "unconnected_send",
            ForwardOpen => "forward_open",
            LargeForwardOpen => "large_forward_open",
            GetConnectionData => "get_connection_data",
            SearchConnectionData => "search_connection_data",
            GetConnectionOwner => "get_connection_owner",
            Other(_) => return None,
        })
    }

    /// What the service does to the device's data.
    pub const fn access(self) -> Access {
        use Service::*;
        match self {
            GetAttributeAll
            | GetAttributeList
            | GetAttributeSingle
            | FindNextObjectInstance
            | NoOperation
            | GetMember
            | ReadTag
            | ReadTagFragmented
            | GetInstanceAttributeList
            | GetConnectionData
            | SearchConnectionData
            | GetConnectionOwner => Access::Read,
            SetAttributeAll | SetAttributeList | SetAttributeSingle | Create | Delete | ApplyAttributes | Restore
            | Save | SetMember | InsertMember | RemoveMember | WriteTag | WriteTagFragmented | ReadModifyWriteTag => {
                Access::Write
            }
            Reset
            | Start
            | Stop
            | GroupSync
            | MultipleServicePacket
            | UnconnectedSend
            | ForwardOpen
            | LargeForwardOpen
            | ForwardClose
            | Other(_) => Access::Other,
        }
    }

    /// True for the services that carry other requests (decided one by one).
    pub const fn is_container(self) -> bool {
        matches!(self, Service::MultipleServicePacket | Service::UnconnectedSend)
    }
}

/// What a request does to the device's data. Control services (Reset, Start, Stop), connection
/// management, containers and unknown services are `Other`: a policy names them explicitly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Access {
    Read = 0,
    Write = 1,
    Other = 2,
}

impl Access {
    pub const fn name(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Other => "other",
        }
    }
}

/// Why a request (or a container's content) cannot be parsed. Each maps to the CIP general status a
/// device would answer ([`CipError::general_status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CipError {
    /// Fewer than the service and path size bytes.
    Truncated,
    /// The reply bit (0x80) set in a request's service code.
    ReplyInRequest,
    /// The reply bit (0x80) clear in a response's service code.
    RequestInReply,
    /// The path size says more words than the message holds.
    PathTruncated,
    Path(PathError),
    /// A container or connection request whose data is shorter than its fixed fields.
    DataTruncated,
    /// A container or connection request with bytes after its last field.
    DataTrailing,
    /// Multiple Service Packet: no services, or offsets out of order or outside the packet.
    BadOffsets,
    /// Unconnected Send: a route path that is empty or holds more than port segments.
    BadRoute,
    /// Containers nested deeper than [`super::containers::MAX_DEPTH`].
    TooDeep,
    /// More inner requests than [`super::containers::MAX_LEAVES`].
    TooManyRequests,
}

impl CipError {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::ReplyInRequest => "reply_in_request",
            Self::RequestInReply => "request_in_reply",
            Self::PathTruncated => "path_size",
            Self::Path(p) => p.name(),
            Self::DataTruncated => "data_truncated",
            Self::DataTrailing => "data_trailing",
            Self::BadOffsets => "bad_offsets",
            Self::BadRoute => "bad_route",
            Self::TooDeep => "too_deep",
            Self::TooManyRequests => "too_many_requests",
        }
    }

    /// The CIP general status a device answers for this request: 0x04 path segment error, 0x08
    /// service not supported, 0x13 not enough data, 0x15 too much data, 0x20 invalid parameter.
    pub const fn general_status(self) -> u8 {
        match self {
            Self::Truncated | Self::PathTruncated | Self::BadRoute => 0x04,
            Self::Path(p) => p.general_status(),
            Self::ReplyInRequest | Self::RequestInReply => 0x08,
            Self::DataTruncated => 0x13,
            Self::DataTrailing => 0x15,
            Self::BadOffsets | Self::TooDeep | Self::TooManyRequests => 0x20,
        }
    }
}

/// One message router request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The raw service byte.
    pub code: u8,
    pub service: Service,
    pub path: Path,
    pub access: Access,
    pub anomalies: Anomalies,
    /// Tag services: CIP data type of a write (Write Tag, Write Tag Fragmented).
    pub data_type: Option<u16>,
    /// Tag services: number of elements read or written.
    pub elements: Option<u16>,
    /// Request data after the path.
    pub data: &'a [u8],
}

/// Parses one message router request occupying all of `msg`.
pub fn parse_request(msg: &[u8]) -> Result<Request<'_>, CipError> {
    let mut req = Request::blank();
    read_request(msg, &mut req)?;
    Ok(req)
}

impl Request<'_> {
    /// A request with nothing read yet, for [`read_request`] to fill.
    pub(crate) fn blank() -> Self {
        Request {
            code: 0,
            service: Service::Other(0),
            path: Path::default(),
            access: Access::Other,
            anomalies: Anomalies::empty(),
            data_type: None,
            elements: None,
            data: &[],
        }
    }
}

/// [`parse_request`] into `req` (a [`Request::blank`]), so that a request is read where it is kept.
pub(crate) fn read_request<'a>(msg: &'a [u8], req: &mut Request<'a>) -> Result<(), CipError> {
    let h = read_head(msg, &mut PathBuilder(&mut req.path))?;
    req.path.set_address(&h.address);
    req.code = h.code;
    req.service = h.service;
    req.access = h.service.access();
    req.anomalies = h.anomalies;
    req.data_type = h.data_type;
    req.elements = h.elements;
    req.data = h.data;
    Ok(())
}

/// A request as [`read_head`] reads it: everything but its path's hops and tag, which went to the sink.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Head<'a> {
    pub code: u8,
    pub service: Service,
    pub address: Address,
    /// The path's anomalies and the request's own.
    pub anomalies: Anomalies,
    pub data_type: Option<u16>,
    pub elements: Option<u16>,
    pub data: &'a [u8],
}

/// Reads one message router request occupying all of `msg`; its path's hops and tag go to `sink`.
#[inline]
pub(crate) fn read_head<'a, S: PathSink<'a>>(msg: &'a [u8], sink: &mut S) -> Result<Head<'a>, CipError> {
    if msg.len() < 2 {
        return Err(CipError::Truncated);
    }
    let code = msg[0];
    if code & 0x80 != 0 {
        return Err(CipError::ReplyInRequest);
    }
    let path_len = 2 * msg[1] as usize;
    if msg.len() - 2 < path_len {
        return Err(CipError::PathTruncated);
    }
    let address = walk_path(&msg[2..2 + path_len], sink).map_err(CipError::Path)?;
    let data = &msg[2 + path_len..];
    let service = Service::resolve_address(code, address.class, address.tagged);
    let mut anomalies = address.anomalies;
    if !address.has_target() {
        anomalies |= Anomalies::NO_TARGET;
    }
    if matches!(service, Service::Other(c) if c >= 0x4B) {
        anomalies |= Anomalies::UNKNOWN_SERVICE;
    }
    if matches!(service, Service::GetAttributeSingle | Service::SetAttributeSingle) && address.attribute.is_none() {
        anomalies |= Anomalies::MISSING_ATTRIBUTE;
    }
    let (mut data_type, mut elements) = (None, None);
    let short = match service {
        Service::ReadTag | Service::ReadTagFragmented => {
            if data.len() >= 2 {
                elements = Some(le16(data, 0));
            }
            data.len() < 2
        }
        Service::WriteTag | Service::WriteTagFragmented => {
            // Type u16 (structures: 0x02A0 and a 16-bit handle), element count u16, [offset u32], data.
            let ty = if data.len() >= 2 { le16(data, 0) } else { 0 };
            let head = if ty == 0x02A0 { 4 } else { 2 };
            if data.len() >= head + 2 {
                data_type = Some(ty);
                elements = Some(le16(data, head));
            }
            data.len() < head + 2
        }
        // Mask size u16, then OR and AND masks of that size.
        Service::ReadModifyWriteTag => data.len() < 2 || data.len() < 2 + 2 * le16(data, 0) as usize,
        Service::SetAttributeSingle => data.is_empty(),
        _ => false,
    };
    if short {
        anomalies |= Anomalies::SHORT_DATA;
    }
    Ok(Head { code, service, address, anomalies, data_type, elements, data })
}

/// One message router response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response<'a> {
    /// The service code replied to (reply bit cleared).
    pub code: u8,
    pub general_status: u8,
    /// Extended status words, raw.
    pub extended_status: &'a [u8],
    pub data: &'a [u8],
}

/// Parses one message router response occupying all of `msg`.
pub fn parse_response(msg: &[u8]) -> Result<Response<'_>, CipError> {
    if msg.len() < 4 {
        return Err(CipError::Truncated);
    }
    if msg[0] & 0x80 == 0 {
        return Err(CipError::RequestInReply);
    }
    let ext = 2 * msg[3] as usize;
    if msg.len() - 4 < ext {
        return Err(CipError::DataTruncated);
    }
    Ok(Response {
        code: msg[0] & 0x7F,
        general_status: msg[2],
        extended_status: &msg[4..4 + ext],
        data: &msg[4 + ext..],
    })
}
