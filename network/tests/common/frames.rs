//! Minimal Ethernet/ARP/IPv4/UDP/TCP frame handling for the tap responder in the tests.

use std::net::Ipv4Addr;

pub const ETH_ARP: u16 = 0x0806;
pub const ETH_IPV4: u16 = 0x0800;

pub fn parse_mac(s: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (i, part) in s.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16).unwrap_or(0);
    }
    mac
}

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

pub fn ethertype(frame: &[u8]) -> Option<u16> {
    (frame.len() >= 14).then(|| be16(frame, 12))
}

/// If `frame` is an ARP request for `ip`, the reply saying `ip` is at `mac`.
pub fn arp_reply(frame: &[u8], ip: Ipv4Addr, mac: [u8; 6]) -> Option<Vec<u8>> {
    if ethertype(frame)? != ETH_ARP
        || frame.len() < 42
        || be16(frame, 20) != 1
        || frame[38..42] != ip.octets()
    {
        return None;
    }
    let (sha, spa) = (&frame[22..28], &frame[28..32]);
    let mut out = Vec::with_capacity(42);
    out.extend_from_slice(sha);
    out.extend_from_slice(&mac);
    out.extend_from_slice(&ETH_ARP.to_be_bytes());
    out.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
    out.extend_from_slice(&mac);
    out.extend_from_slice(&ip.octets());
    out.extend_from_slice(sha);
    out.extend_from_slice(spa);
    Some(out)
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from(chunk[0]) << 8
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet in `frame` to `ip`: (protocol, src, payload after the IP header).
pub fn ipv4_to(frame: &[u8], ip: Ipv4Addr) -> Option<(u8, Ipv4Addr, &[u8])> {
    if ethertype(frame)? != ETH_IPV4 || frame.len() < 34 {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let total = usize::from(be16(frame, 16));
    if frame[30..34] != ip.octets() || frame.len() < 14 + total || total < ihl {
        return None;
    }
    let src = Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]);
    Some((frame[23], src, &frame[14 + ihl..14 + total]))
}

/// A UDP datagram to `ip`:`port` in `frame`: (src ip, src port, payload, src mac).
pub fn udp_to(frame: &[u8], ip: Ipv4Addr, port: u16) -> Option<(Ipv4Addr, u16, Vec<u8>, [u8; 6])> {
    let (proto, src, l4) = ipv4_to(frame, ip)?;
    if proto != 17 || l4.len() < 8 || be16(l4, 2) != port {
        return None;
    }
    let mut smac = [0u8; 6];
    smac.copy_from_slice(&frame[6..12]);
    Some((src, be16(l4, 0), l4[8..].to_vec(), smac))
}

/// Whether `frame` is a TCP SYN to `ip`:`port`.
pub fn tcp_syn_to(frame: &[u8], ip: Ipv4Addr, port: u16) -> bool {
    match ipv4_to(frame, ip) {
        Some((6, _, l4)) if l4.len() >= 20 => be16(l4, 2) == port && l4[13] & 0x02 != 0,
        _ => false,
    }
}

/// An Ethernet frame with a UDP datagram (UDP checksum 0: none, allowed for IPv4).
pub fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + total);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&ETH_IPV4.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    ip.extend_from_slice(&src.0.octets());
    ip.extend_from_slice(&dst.0.octets());
    let csum = checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&src.1.to_be_bytes());
    f.extend_from_slice(&dst.1.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

#[test]
fn checksum_of_known_header() {
    // Example header from RFC 1071 style tests: checksum over a header with the checksum
    // field set must verify to zero.
    let f = udp_frame(
        [1; 6],
        [2; 6],
        (Ipv4Addr::new(10, 0, 0, 1), 1),
        (Ipv4Addr::new(10, 0, 0, 2), 2),
        b"x",
    );
    assert_eq!(checksum(&f[14..34]), 0);
    assert_eq!(
        udp_to(&f, Ipv4Addr::new(10, 0, 0, 2), 2).map(|u| u.2),
        Some(b"x".to_vec())
    );
}
