//! Gratuitous ARP and unsolicited neighbour advertisements: a few packets no maintained crate
//! sends, so built here on a packet socket and an ICMPv6 raw socket.

#![allow(unsafe_code)] // system calls no safe crate wraps; a SAFETY note at each site

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETH_P_ARP: u16 = 0x0806;

fn socket(domain: i32, kind: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) returns a new descriptor or -1; the descriptor is owned from here.
    let fd = unsafe {
        libc::socket(
            domain,
            kind | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            protocol,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `packet` to `to` (a `sockaddr_*` of the socket's family) `count` times.
fn send_repeatedly<A>(fd: &OwnedFd, packet: &[u8], to: &A, count: u32) -> io::Result<()> {
    for _ in 0..count {
        // SAFETY: the buffer and the address are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (to as *const A).cast(),
                std::mem::size_of::<A>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The ARP request a node sends for its own address (sender = target = the address), which
/// makes every neighbour that cached the address replace its MAC.
pub fn arp_packet(mac: [u8; 6], address: Ipv4Addr) -> [u8; 28] {
    let mut p = [0u8; 28];
    p[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    p[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    p[4] = 6;
    p[5] = 4;
    p[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    p[8..14].copy_from_slice(&mac);
    p[14..18].copy_from_slice(&address.octets());
    // Target hardware address stays zero.
    p[24..28].copy_from_slice(&address.octets());
    p
}

/// The packet socket announcements go out on, one per network namespace, kept open: closing a
/// packet socket waits for an RCU grace period (`synchronize_net`), milliseconds each, which
/// for hundreds of addresses coming up at once (a node taking over hundreds of groups) added
/// up to seconds. Protocol 0: it only sends, no received frame is queued on it.
fn packet_socket() -> io::Result<std::sync::Arc<OwnedFd>> {
    use std::os::unix::fs::MetadataExt;
    static SOCKETS: std::sync::Mutex<std::collections::BTreeMap<u64, std::sync::Arc<OwnedFd>>> =
        std::sync::Mutex::new(std::collections::BTreeMap::new());
    let netns = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
    let mut sockets = SOCKETS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(fd) = sockets.get(&netns) {
        return Ok(fd.clone());
    }
    let fd = std::sync::Arc::new(socket(libc::AF_PACKET, libc::SOCK_DGRAM, 0)?);
    sockets.insert(netns, fd.clone());
    Ok(fd)
}

pub fn gratuitous_arp(index: u32, mac: [u8; 6], address: Ipv4Addr, count: u32) -> io::Result<()> {
    let fd = packet_socket()?;
    // SAFETY: sockaddr_ll is plain data; zero is a valid starting value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = index as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let packet = arp_packet(mac, address);
    send_repeatedly(&fd, &packet, &to, count)
}

/// An unsolicited neighbour advertisement (RFC 4861 7.2.6) for `address` with the override
/// flag and the target link-layer address option; the kernel fills in the checksum.
pub fn na_packet(mac: [u8; 6], address: Ipv6Addr) -> [u8; 32] {
    let mut p = [0u8; 32];
    p[0] = 136; // neighbour advertisement
    p[4] = 0x20; // override
    p[8..24].copy_from_slice(&address.octets());
    p[24] = 2; // target link-layer address
    p[25] = 1; // in units of 8 bytes
    p[26..32].copy_from_slice(&mac);
    p
}

pub fn neighbour_advertisement(
    index: u32,
    mac: [u8; 6],
    address: Ipv6Addr,
    count: u32,
) -> io::Result<()> {
    let fd = socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6)?;
    let set = |level: i32, name: i32, value: i32| -> io::Result<()> {
        // SAFETY: value is an int, as these options take.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&value as *const i32).cast(),
                std::mem::size_of::<i32>() as u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    // Receivers drop neighbour discovery packets with a hop limit other than 255.
    set(libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, 255)?;
    set(libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_IF, index as i32)?;
    // SAFETY: sockaddr_in6 is plain data.
    let mut from: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    from.sin6_family = libc::AF_INET6 as u16;
    from.sin6_addr.s6_addr = address.octets();
    // SAFETY: a valid sockaddr_in6 of the given length.
    let bound = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&from as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as u32,
        )
    };
    if bound < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut to: libc::sockaddr_in6 = from;
    to.sin6_addr.s6_addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets();
    to.sin6_scope_id = index;
    let packet = na_packet(mac, address);
    send_repeatedly(&fd, &packet, &to, count)
}
