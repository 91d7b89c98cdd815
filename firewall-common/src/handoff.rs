//! What the firewall program hands the programs it tail-calls: the limits program (a rule's
//! buckets) and the SYN cookie program. One slot per CPU in the pinned per-CPU array
//! `APIFW_HANDOFF`; a packet's programs run back to back on one CPU, so the slot is theirs for
//! the packet. Scratch space for the cookie program's header copies lives here too: helpers
//! that take a length need memory the verifier can size, which packet memory is not for a
//! length read from the packet.

/// Slot of the limits program in the program array `APIFW_JUMP`.
pub const JUMP_LIMITS: u32 = 0;
/// Slot of the SYN cookie program.
pub const JUMP_COOKIE: u32 = 1;
/// Slots of `APIFW_JUMP`.
pub const JUMP_SLOTS: u32 = 2;

/// One CPU's packet in flight between the firewall's programs.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Handoff {
    /// The rule that took the packet.
    pub rule: u32,
    /// The policy generation the firewall program read.
    pub generation: u32,
    /// 4 or 6.
    pub family: u32,
    /// The transport protocol.
    pub protocol: u32,
    /// The destination port, or `u32::MAX` when the packet has none.
    pub port: u32,
    /// TCP flags (0 if not TCP).
    pub tcp_flags: u32,
    /// 1 while a packet the cookie program handed back runs the limits program again.
    pub returned: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The source: IPv4 in the low 32 bits, or the IPv6 address's high half.
    pub hi: u64,
    /// The IPv6 source's low half.
    pub lo: u64,
    /// The frame's length.
    pub len: u64,
    /// The firewall program's clock for this packet.
    pub now_ns: u64,
    /// The cookie program's copy of the IP header (IPv4 without options: 20 bytes; IPv6: 40).
    pub ip: [u8; 40],
    /// Its copy of the TCP header with its options.
    pub tcp: [u8; 60],
    /// The SYN-ACK's IP and TCP headers (IPv6: 40 + 24 bytes).
    pub reply: [u8; 64],
    /// `struct bpf_sock_tuple` of the packet (IPv6: 36 bytes; 44 so that the struct has no
    /// tail padding).
    pub tuple: [u8; 44],
}

const _: () = assert!(size_of::<Handoff>() == 272);
