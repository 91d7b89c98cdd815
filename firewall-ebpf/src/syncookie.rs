//! SYN cookies in XDP (see `firewall_common::syncookie` for the design): the main program decides
//! which TCP packets of a rule take the cookie path ([`cookie_path`]) and tail-calls
//! [`apifw_syn_cookie`], which answers SYNs with the kernel's own cookie and checks the ACKs
//! that come back. A separate program, so that its socket lookups, helper calls and header
//! rewrites do not add to the main program's verifier walk.

use aya_ebpf::{
    bindings::{BPF_F_CURRENT_NETNS, BPF_NOEXIST, bpf_sock, bpf_sock_tuple, tcphdr, xdp_action},
    helpers::{
        bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_check_syncookie, bpf_tcp_gen_syncookie,
        bpf_xdp_adjust_tail, bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};
use firewall_common::{
    Action, KernelConfig, Reason,
    admission::key_hash,
    config::CONFIG_DRY_RUN,
    handoff::{Handoff, JUMP_LIMITS},
    packet::{
        ETH_HLEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, TCP_ACK, TCP_FIN,
        TCP_RST, TCP_SYN, VLAN_HLEN,
    },
    rules::{RuleConfig, TrackKey, TrackState, rule_index},
    syncookie::{
        DETECTOR_SLOTS, MODE_READY, RULE_SYN_COOKIES_ALWAYS, RULE_SYN_COOKIES_AUTO, SynDetector,
        cookie_recent, cookie_sent, detector_slot,
    },
    tracked::Mark,
};

use crate::{
    CONFIG, RULES, finish,
    limits::{handoff, jump, packet_of},
    parse::Packet,
    verdict_of,
};

/// Each CPU's SYN meter of each cookie port (`firewall_common::syncookie::SynDetector`). Not
/// pinned: a new program starts every port ready.
#[map(name = "APIFW_SYN_DETECTOR")]
static SYN_DETECTOR: PerCpuArray<SynDetector> = PerCpuArray::with_max_entries(DETECTOR_SLOTS, 0);

/// For each port slot, when a cookie for it last went out (`firewall_common::syncookie::
/// cookie_sent`), on any CPU. Not pinned: after a restart ACKs are checked again from the next
/// cookie on.
#[map(name = "APIFW_COOKIE_SENT")]
static COOKIE_SENT: Array<u64> = Array::with_max_entries(DETECTOR_SLOTS, 0);

/// `TCP_LISTEN` of the kernel's `enum tcp_state`.
const TCP_LISTEN: u32 = 10;
/// `bpf_tcp_check_syncookie`'s answers for a cookie that is not valid (see `check_ack`).
const ENOENT: i64 = 2;
const EACCES: i64 = 13;
/// The SYN-ACK's TCP header: 20 bytes and the MSS option.
const REPLY_TCP_LEN: usize = 24;
/// The window of the SYN-ACK: no window scaling is offered (a cookie cannot carry it without
/// timestamps), so the largest unscaled window.
const REPLY_WINDOW: u16 = 65535;
const REPLY_TTL: u8 = 64;

/// Whether a TCP packet of `rule_config`'s rule may be for the cookie program: a SYN, or an
/// ACK, to a rule with SYN cookies, whose port is (`always`) or may be (`auto`: this CPU's
/// detector of the port is not ready) in cookie mode. The cookie program decides the rest and
/// hands back what is not its own (a SYN while the port is not in cookie mode, an ACK from a
/// proven source), which then takes the rule's buckets in the limits program.
#[inline(always)]
pub fn wants(packet: &Packet, rule_config: &RuleConfig, config: &KernelConfig) -> bool {
    let flags = packet.tcp_flags;
    let always = rule_config.flags & RULE_SYN_COOKIES_ALWAYS != 0;
    // A rule under dry run changes no traffic: no cookies either.
    if flags & (TCP_SYN | TCP_ACK) == 0
        || packet.protocol != IPPROTO_TCP
        || rule_config.flags & (RULE_SYN_COOKIES_AUTO | RULE_SYN_COOKIES_ALWAYS) == 0
        || rule_config.dry_run()
        || config.flags & CONFIG_DRY_RUN != 0
    {
        return false;
    }
    if always || flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN {
        return true;
    }
    let Some(port) = packet.dst_port else {
        return false;
    };
    SYN_DETECTOR
        .get(detector_slot(port))
        .is_some_and(|detector| detector.mode != MODE_READY)
}

/// Back to the limits program for the rule's buckets, marked so that it does not hand the
/// packet over again. Returns only if that program is not in the jump array.
#[inline(always)]
fn hand_back(ctx: &XdpContext, handoff: &mut Handoff) -> u32 {
    handoff.returned = 1;
    jump(ctx, JUMP_LIMITS);
    handoff.returned = 0;
    xdp_action::XDP_PASS
}

/// What the cookie program decides for a SYN or ACK of a rule with SYN cookies.
enum Decision {
    /// Answer the SYN with a cookie.
    Answer,
    /// Check the ACK's connection or cookie.
    Check,
    /// Not for the cookie path: back to the firewall program.
    HandBack,
}

/// The cookie path's decision (see [`wants`]): a SYN meters this CPU's detector of the port;
/// an ACK is checked when the port is in cookie mode and its source has no state under the rule
/// (a source with state proved its address before).
#[inline(always)]
fn decide(
    rule_config: &RuleConfig,
    rule: u32,
    at: &Located,
    handoff: &Handoff,
    now_ns: u64,
) -> Decision {
    let always = rule_config.flags & RULE_SYN_COOKIES_ALWAYS != 0;
    let tcp = &handoff.tcp;
    let flags = tcp[13];
    let port = u16::from_be_bytes([tcp[2], tcp[3]]);
    let Some(detector) = SYN_DETECTOR.get_ptr_mut(detector_slot(port)) else {
        return Decision::HandBack;
    };
    // SAFETY: this CPU's slot of a per-CPU array: nothing else writes it while this program
    // runs here, and it lives for the whole run.
    let detector = unsafe { &mut *detector };
    if flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN {
        let metered = detector.meter(port, now_ns);
        return if always || metered.cookies {
            Decision::Answer
        } else {
            Decision::HandBack
        };
    }
    if flags & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_ACK
        || !(always || detector.cookies_on(port, now_ns))
        || !COOKIE_SENT
            .get(detector_slot(port))
            .is_some_and(|sent| cookie_recent(*sent, port, now_ns))
        || crate::SOURCES
            .get_ptr(source_key(at, handoff, rule))
            .is_some()
    {
        return Decision::HandBack;
    }
    Decision::Check
}

/// Where the headers of a TCP packet the cookie program handles lie.
#[derive(Clone, Copy)]
struct Located {
    /// Offset of the IP header.
    l3: usize,
    /// Offset of the TCP header.
    l4: usize,
    /// IPv6 (else IPv4).
    v6: bool,
    /// The TCP header's length with its options (20 to 60).
    tcp_len: u32,
}

/// The cookie program: answers a SYN with a cookie SYN-ACK, or checks an ACK's cookie, for the
/// rule the limits program handed over; counts what it did as the firewall counts verdicts.
#[xdp]
pub fn apifw_syn_cookie(ctx: XdpContext) -> u32 {
    let Some(handoff) = handoff() else {
        return xdp_action::XDP_PASS;
    };
    let Some(config) = CONFIG.get(handoff.generation) else {
        return xdp_action::XDP_PASS;
    };
    let rule = handoff.rule;
    let Some(rule_config) = RULES.get(rule_index(config.generation, rule)) else {
        return xdp_action::XDP_PASS;
    };
    let len = handoff.len;
    let now_ns = handoff.now_ns;
    let Some(at) = locate(&ctx) else {
        // Not a form the cookie path handles (IP options, fragments, IPv6 extension headers):
        // the rule's buckets, as without cookies.
        return hand_back(&ctx, handoff);
    };
    if !load_headers(&ctx, &at, handoff) {
        return hand_back(&ctx, handoff);
    }
    let (_, reason, code) = match decide(rule_config, rule, &at, handoff, now_ns) {
        Decision::Answer => {
            let answered = answer_syn(&ctx, &at, handoff);
            if answered.1 == Reason::SynCookie {
                record_cookie(handoff, now_ns);
            }
            answered
        }
        Decision::Check => check_ack(&ctx, &at, handoff, rule),
        Decision::HandBack => return hand_back(&ctx, handoff),
    };
    let source = packet_of(handoff).source;
    let verdict = verdict_of(&ctx, config, &source, rule, reason, len);
    // `finish` turns the counted verdict into PASS or DROP; a SYN-ACK leaves with TX.
    let counted = finish(&ctx, verdict);
    if counted == xdp_action::XDP_PASS {
        counted
    } else {
        code
    }
}

/// Records that a cookie for the SYN's port went out: ACKs to the port are checked for two
/// minutes. The slot is shared by all CPUs: written once per window, not once per cookie.
#[inline(always)]
fn record_cookie(handoff: &Handoff, now_ns: u64) {
    let port = u16::from_be_bytes([handoff.tcp[2], handoff.tcp[3]]);
    let sent = cookie_sent(port, now_ns);
    if let Some(slot) = COOKIE_SENT.get_ptr_mut(detector_slot(port)) {
        // SAFETY: a slot of an array map, valid for the map's life; a racing CPU writes the same
        // or a later window, either of which is right.
        unsafe {
            if *slot != sent {
                *slot = sent;
            }
        }
    }
}

/// Reads the 16-bit big-endian field at `offset` of the frame.
#[inline(always)]
fn be16_at(ctx: &XdpContext, offset: usize) -> Option<u16> {
    let start = ctx.data();
    if start + offset + 2 > ctx.data_end() {
        return None;
    }
    // SAFETY: both bytes lie inside the frame (checked above); no alignment needed.
    Some(u16::from_be_bytes(unsafe {
        *((start + offset) as *const [u8; 2])
    }))
}

/// Reads the byte at `offset` of the frame.
#[inline(always)]
fn u8_at(ctx: &XdpContext, offset: usize) -> Option<u8> {
    let start = ctx.data();
    if start + offset + 1 > ctx.data_end() {
        return None;
    }
    // SAFETY: the byte lies inside the frame (checked above).
    Some(unsafe { *((start + offset) as *const u8) })
}

/// The headers of an Ethernet (up to two VLAN tags) / IPv4 without options and not a fragment,
/// or IPv6 without extension headers / TCP frame.
#[inline(always)]
fn locate(ctx: &XdpContext) -> Option<Located> {
    let mut ethertype = be16_at(ctx, 12)?;
    let mut l3 = ETH_HLEN;
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = be16_at(ctx, l3 + 2)?;
        l3 += VLAN_HLEN;
    }
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = be16_at(ctx, l3 + 2)?;
        l3 += VLAN_HLEN;
    }
    let (v6, l4) = if ethertype == ETH_P_IP {
        let fragment = be16_at(ctx, l3 + 6)? & 0x3fff;
        if u8_at(ctx, l3)? != 0x45 || fragment != 0 || u8_at(ctx, l3 + 9)? != IPPROTO_TCP {
            return None;
        }
        (false, l3 + 20)
    } else if ethertype == ETH_P_IPV6 {
        if u8_at(ctx, l3 + 6)? != IPPROTO_TCP {
            return None;
        }
        (true, l3 + 40)
    } else {
        return None;
    };
    let tcp_len = u32::from(u8_at(ctx, l4 + 12)? >> 4) * 4;
    if tcp_len < 20 {
        return None;
    }
    Some(Located {
        l3,
        l4,
        v6,
        tcp_len,
    })
}

/// Copies the IP and TCP headers into the scratch space, and fills the socket tuple.
#[inline(always)]
fn load_headers(ctx: &XdpContext, at: &Located, handoff: &mut Handoff) -> bool {
    // Read back through a volatile load, so that the range checks below apply to the very
    // register the helpers get: LLVM otherwise checks a derived value, and the verifier then
    // sees a length that may be 0.
    // SAFETY: a read of a local through a valid, aligned pointer.
    let tcp_len = unsafe { core::ptr::read_volatile(&at.tcp_len) };
    if !(20..=60).contains(&tcp_len) {
        return false;
    }
    let ip_len: u32 = if at.v6 { 40 } else { 20 };
    // SAFETY: the buffers are this CPU's scratch space, at least as long as the lengths given
    // (40 and 60 bytes); the helper checks the frame's bounds itself.
    let loaded = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            at.l3 as u32,
            handoff.ip.as_mut_ptr().cast(),
            ip_len,
        ) == 0
            && bpf_xdp_load_bytes(
                ctx.ctx,
                at.l4 as u32,
                handoff.tcp.as_mut_ptr().cast(),
                tcp_len,
            ) == 0
    };
    if !loaded {
        return false;
    }
    // The tuple: source address, destination address, source port, destination port, each in
    // network order as in the packet (struct bpf_sock_tuple).
    let ports = [
        handoff.tcp[0],
        handoff.tcp[1],
        handoff.tcp[2],
        handoff.tcp[3],
    ];
    if at.v6 {
        handoff.tuple[..32].copy_from_slice(&handoff.ip[8..40]);
        handoff.tuple[32..36].copy_from_slice(&ports);
    } else {
        handoff.tuple[..8].copy_from_slice(&handoff.ip[12..20]);
        handoff.tuple[8..12].copy_from_slice(&ports);
    }
    true
}

/// The listening or connected socket the packet belongs to (null: none). Must be released.
#[inline(always)]
fn lookup(ctx: &XdpContext, at: &Located, handoff: &mut Handoff) -> *mut bpf_sock {
    let size: u32 = if at.v6 { 36 } else { 12 };
    // SAFETY: the tuple lies in this CPU's scratch space and is `size` bytes long; the netns is
    // the receiving device's.
    unsafe {
        bpf_skc_lookup_tcp(
            ctx.ctx.cast(),
            handoff.tuple.as_mut_ptr().cast::<bpf_sock_tuple>(),
            size,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    }
}

/// A SYN: the kernel's cookie for its listener, sent back as a SYN-ACK. Passed on when nothing
/// listens (the kernel resets it), when another socket owns the tuple, or when the kernel would
/// not send a cookie now (its SYN queue has room, and `tcp_syncookies` is not 2).
#[inline(always)]
fn answer_syn(ctx: &XdpContext, at: &Located, handoff: &mut Handoff) -> (Action, Reason, u32) {
    const PASSED: (Action, Reason, u32) = (Action::Pass, Reason::Default, xdp_action::XDP_PASS);
    let sk = lookup(ctx, at, handoff);
    if sk.is_null() {
        return PASSED;
    }
    // SAFETY: a socket the lookup returned (non-null, referenced until released below).
    let listening = unsafe { (*sk).state } == TCP_LISTEN;
    let ip_len: u32 = if at.v6 { 40 } else { 20 };
    let generated = if listening {
        // SAFETY: a listener from the lookup; the headers lie in scratch space of the lengths
        // given (the TCP length is its own data offset, as the helper requires).
        unsafe {
            bpf_tcp_gen_syncookie(
                sk.cast(),
                handoff.ip.as_mut_ptr().cast(),
                ip_len,
                handoff.tcp.as_mut_ptr().cast::<tcphdr>(),
                at.tcp_len,
            )
        }
    } else {
        -1
    };
    // SAFETY: releases the reference the lookup took, once.
    unsafe { bpf_sk_release(sk.cast()) };
    if generated < 0 {
        return PASSED;
    }
    let cookie = generated as u32;
    // The client's MSS as the cookie rounded it; announced as ours too, capped at Ethernet's
    // (the route's MTU is not known here).
    let mss = ((generated >> 32) as u16).min(if at.v6 { 1440 } else { 1460 });
    build_reply(at, handoff, cookie, mss);
    if !send_reply(ctx, at, handoff) {
        return PASSED;
    }
    (Action::Drop, Reason::SynCookie, xdp_action::XDP_TX)
}

/// An ACK from a source without state: passed if it belongs to a connection (its source gets
/// state: proven), or carries a valid cookie for the listener (proven too); dropped if the
/// cookie is not valid; passed in any other case (the kernel answers as always).
#[inline(always)]
fn check_ack(
    ctx: &XdpContext,
    at: &Located,
    handoff: &mut Handoff,
    rule: u32,
) -> (Action, Reason, u32) {
    const PASSED: (Action, Reason, u32) = (Action::Pass, Reason::Default, xdp_action::XDP_PASS);
    let sk = lookup(ctx, at, handoff);
    if sk.is_null() {
        return PASSED;
    }
    // SAFETY: a socket the lookup returned (non-null, referenced until released below).
    let listening = unsafe { (*sk).state } == TCP_LISTEN;
    let ip_len: u32 = if at.v6 { 40 } else { 20 };
    let checked = if listening {
        // SAFETY: a listener from the lookup; the headers lie in scratch space of the lengths
        // given.
        unsafe {
            bpf_tcp_check_syncookie(
                sk.cast(),
                handoff.ip.as_mut_ptr().cast(),
                ip_len,
                handoff.tcp.as_mut_ptr().cast::<tcphdr>(),
                at.tcp_len,
            )
        }
    } else {
        0
    };
    // SAFETY: releases the reference the lookup took, once.
    unsafe { bpf_sk_release(sk.cast()) };
    // A bad cookie: -ENOENT from mainline kernels (which also answer -ENOENT when the listener
    // sent no cookie for two minutes: then no cookie is good, and the kernel would answer the
    // ACK with a reset), -EACCES from those with the reworked error codes.
    if checked == -ENOENT || checked == -EACCES {
        return (Action::Drop, Reason::BadCookie, xdp_action::XDP_DROP);
    }
    if checked != 0 {
        // Not a packet the helper judges (-EINVAL): as without cookies.
        return PASSED;
    }
    prove(at, handoff, rule);
    if listening {
        (Action::Pass, Reason::CookieValid, xdp_action::XDP_PASS)
    } else {
        PASSED
    }
}

/// The packet's source proved its address: it gets per-source state under the rule, so its
/// next packets take the buckets without a socket lookup.
#[inline(always)]
fn prove(at: &Located, handoff: &Handoff, rule: u32) {
    let key = source_key(at, handoff, rule);
    let _ = crate::SOURCES.insert(key, TrackState::default(), u64::from(BPF_NOEXIST));
    // Its next packets find that state through the tracked filter.
    crate::ratelimit::mark_tracked(&Mark::of_hash(key_hash(&key)), handoff.now_ns);
}

/// The per-source state key of the packet's source under `rule`, as the firewall program
/// builds it.
#[inline(always)]
fn source_key(at: &Located, handoff: &Handoff, rule: u32) -> TrackKey {
    let ip = &handoff.ip;
    if at.v6 {
        let hi = u64::from_be_bytes([ip[8], ip[9], ip[10], ip[11], ip[12], ip[13], ip[14], ip[15]]);
        let lo = u64::from_be_bytes([
            ip[16], ip[17], ip[18], ip[19], ip[20], ip[21], ip[22], ip[23],
        ]);
        TrackKey::v6(rule, hi, lo, 128)
    } else {
        TrackKey::v4(
            rule,
            u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]),
            32,
        )
    }
}

/// Writes the SYN-ACK's IP and TCP headers into `handoff.reply`.
#[inline(always)]
fn build_reply(at: &Located, handoff: &mut Handoff, cookie: u32, mss: u16) {
    let syn = &handoff.tcp;
    let client_seq = u32::from_be_bytes([syn[4], syn[5], syn[6], syn[7]]);
    // TCP: ports swapped, the cookie as sequence number, the SYN acknowledged, MSS option.
    let mut tcp = [0u8; REPLY_TCP_LEN];
    tcp[0] = syn[2];
    tcp[1] = syn[3];
    tcp[2] = syn[0];
    tcp[3] = syn[1];
    tcp[4..8].copy_from_slice(&cookie.to_be_bytes());
    tcp[8..12].copy_from_slice(&client_seq.wrapping_add(1).to_be_bytes());
    tcp[12] = ((REPLY_TCP_LEN / 4) as u8) << 4;
    tcp[13] = TCP_SYN | TCP_ACK;
    tcp[14..16].copy_from_slice(&REPLY_WINDOW.to_be_bytes());
    tcp[20] = 2; // MSS
    tcp[21] = 4;
    tcp[22..24].copy_from_slice(&mss.to_be_bytes());
    let received = &handoff.ip;
    // The pseudo-header's sum: both addresses, the protocol and the TCP length.
    let mut sum: u64 = u64::from(IPPROTO_TCP) + REPLY_TCP_LEN as u64;
    if at.v6 {
        let mut ip = [0u8; 40];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&(REPLY_TCP_LEN as u16).to_be_bytes());
        ip[6] = IPPROTO_TCP;
        ip[7] = REPLY_TTL;
        ip[8..24].copy_from_slice(&received[24..40]);
        ip[24..40].copy_from_slice(&received[8..24]);
        sum += sum16(&ip[8..40]);
        handoff.reply[..40].copy_from_slice(&ip);
    } else {
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + REPLY_TCP_LEN) as u16).to_be_bytes());
        ip[6] = 0x40; // Don't fragment.
        ip[8] = REPLY_TTL;
        ip[9] = IPPROTO_TCP;
        ip[12..16].copy_from_slice(&received[16..20]);
        ip[16..20].copy_from_slice(&received[12..16]);
        let check = fold(sum16(&ip));
        ip[10..12].copy_from_slice(&check.to_be_bytes());
        sum += sum16(&ip[12..20]);
        handoff.reply[..20].copy_from_slice(&ip);
    }
    sum += sum16(&tcp);
    let check = fold(sum);
    tcp[16..18].copy_from_slice(&check.to_be_bytes());
    if at.v6 {
        handoff.reply[40..64].copy_from_slice(&tcp);
    } else {
        handoff.reply[20..44].copy_from_slice(&tcp);
    }
}

/// The one's-complement sum of `bytes` as 16-bit big-endian words (an even length), unfolded.
#[inline(always)]
fn sum16(bytes: &[u8]) -> u64 {
    let mut sum = 0u64;
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u64::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

/// The Internet checksum of a sum from [`sum16`].
#[inline(always)]
fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff_ffff) + (sum >> 32);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// Turns the frame into the SYN-ACK: the frame cut (or grown) to the reply's length, the MAC
/// addresses swapped, the reply's headers written after the link layer (VLAN tags kept).
#[inline(always)]
fn send_reply(ctx: &XdpContext, at: &Located, handoff: &mut Handoff) -> bool {
    let ip_len = if at.v6 { 40 } else { 20 };
    let reply_end = at.l3 + ip_len + REPLY_TCP_LEN;
    let frame_len = ctx.data_end() - ctx.data();
    let delta = reply_end as i64 - frame_len as i64;
    // SAFETY: the program's own context; the helper checks the new length itself.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta as i32) } != 0 {
        return false;
    }
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        return false;
    }
    // SAFETY: the 12 MAC bytes lie inside the frame (checked above); byte arrays need no
    // alignment.
    unsafe {
        let macs = start as *mut [u8; 12];
        let old = *macs;
        let mut swapped = [0u8; 12];
        swapped[..6].copy_from_slice(&old[6..12]);
        swapped[6..].copy_from_slice(&old[..6]);
        *macs = swapped;
    }
    let len = (ip_len + REPLY_TCP_LEN) as u32;
    // SAFETY: the reply lies in this CPU's scratch space and is `len` (44 or 64) bytes long;
    // the helper checks the frame's bounds itself.
    unsafe {
        bpf_xdp_store_bytes(
            ctx.ctx,
            at.l3 as u32,
            handoff.reply.as_mut_ptr().cast(),
            len,
        ) == 0
    }
}
