//! Packet decoding (replay stage 2): one link-layer frame in, one TCP segment (or why not) out.
//!
//! Header slicing is `etherparse`'s: Ethernet II with up to three VLAN tags, Linux cooked v1, raw IP
//! and loopback framings; IPv4 and IPv6 (with extension headers); TCP. The IP total length bounds the
//! payload, so Ethernet padding never leaks into the byte stream. IP fragments are not reassembled.

use super::pcap::linktype;
use etherparse::{EtherType, NetSlice, SlicedPacket, TransportSlice};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// TCP header flags the reassembler looks at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: bool,
    pub fin: bool,
    pub rst: bool,
}

/// One TCP segment, its payload borrowed from the capture.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub src: IpAddr,
    pub src_port: u16,
    pub dst: IpAddr,
    pub dst_port: u16,
    pub seq: u32,
    pub flags: TcpFlags,
    pub payload: &'a [u8],
}

/// What a frame turned out to be.
#[derive(Debug, Clone, Copy)]
pub enum Decoded<'a> {
    Tcp(Segment<'a>),
    /// Well-formed, but not TCP over IP (ARP, UDP, ICMP, ...): not replay's business.
    NotTcp,
    /// An IP fragment: its TCP header (if any) is in another frame.
    Fragment,
    /// A link type this reader does not decode.
    UnsupportedLink,
    /// Headers cut short or inconsistent (lengths beyond the captured bytes, bad header length).
    Undecodable,
}

/// Linux cooked v2 header: protocol (2), reserved (2), ifindex (4), hatype (2), pkttype (1),
/// halen (1), address (8).
const SLL2_HEADER_LEN: usize = 20;

/// Decodes one frame of the given link type.
pub fn decode(link: i32, data: &[u8]) -> Decoded<'_> {
    let sliced = match link {
        linktype::ETHERNET => SlicedPacket::from_ethernet(data),
        linktype::LINUX_SLL => SlicedPacket::from_linux_sll(data),
        linktype::LINUX_SLL2 => {
            if data.len() < SLL2_HEADER_LEN {
                return Decoded::Undecodable;
            }
            let ether_type = EtherType(u16::from_be_bytes([data[0], data[1]]));
            SlicedPacket::from_ether_type(ether_type, &data[SLL2_HEADER_LEN..])
        }
        linktype::RAW | linktype::IPV4 | linktype::IPV6 => SlicedPacket::from_ip(data),
        // The address family is in host (NULL) or network (LOOP) order; only IP families carry TCP,
        // and the IP version nibble tells v4 from v6 either way.
        linktype::NULL | linktype::LOOP => {
            if data.len() < 4 {
                return Decoded::Undecodable;
            }
            SlicedPacket::from_ip(&data[4..])
        }
        _ => return Decoded::UnsupportedLink,
    };
    let Ok(packet) = sliced else { return Decoded::Undecodable };
    let (src, dst) = match &packet.net {
        Some(NetSlice::Ipv4(ip)) => {
            if ip.is_payload_fragmented() {
                return Decoded::Fragment;
            }
            let h = ip.header();
            (IpAddr::V4(Ipv4Addr::from(h.source())), IpAddr::V4(Ipv4Addr::from(h.destination())))
        }
        Some(NetSlice::Ipv6(ip)) => {
            if ip.is_payload_fragmented() {
                return Decoded::Fragment;
            }
            let h = ip.header();
            (IpAddr::V6(Ipv6Addr::from(h.source())), IpAddr::V6(Ipv6Addr::from(h.destination())))
        }
        _ => return Decoded::NotTcp,
    };
    let Some(TransportSlice::Tcp(tcp)) = &packet.transport else { return Decoded::NotTcp };
    Decoded::Tcp(Segment {
        src,
        src_port: tcp.source_port(),
        dst,
        dst_port: tcp.destination_port(),
        seq: tcp.sequence_number(),
        flags: TcpFlags { syn: tcp.syn(), ack: tcp.ack(), fin: tcp.fin(), rst: tcp.rst() },
        payload: tcp.payload(),
    })
}
