//! The reference model: what the XDP program must decide for a frame, written as plain, obviously
//! correct Rust over byte slices and lists of prefixes (no hashing, no summaries).
//!
//! Kernel verdict tests run the loaded program on crafted frames and compare every result with
//! [`verdict`]. The rules, in order:
//!
//! 1. Ethernet, then up to [`MAX_VLAN_TAGS`] 802.1Q/802.1ad tags. A truncated tag is malformed;
//!    a further tag or any EtherType other than IPv4/IPv6 passes as non-IP.
//! 2. IPv4: 20 bytes present, version 4, IHL >= 5, the IHL*4 header present, total length >= the
//!    header. Non-first fragments carry no transport header.
//! 3. IPv6: 40 bytes present, version 6; hop-by-hop, routing, destination-options and fragment
//!    headers are skipped (at most [`MAX_IPV6_EXT_HEADERS`], each wholly present, starting within
//!    [`MAX_IPV6_CHAIN`] bytes). A non-first fragment ends the walk and carries no transport header.
//! 4. TCP needs its 20-byte header with data offset >= 5, UDP its 8 bytes; otherwise malformed.
//! 5. Malformed frames get the configured action. Then: source allowlisted → pass; blocklisted →
//!    drop.
//! 6. Otherwise the packet's rule, if any — the rule of (protocol, destination port), else of
//!    (protocol, any port), else of (any protocol, any port); "any protocol" with ports means TCP
//!    and UDP — charges its buckets in order: per-source SYN (TCP SYN without ACK), per-source
//!    packets, per-source bytes, per-subnet packets, per-subnet bytes. The first bucket that
//!    would exceed stops the walk (later buckets are not charged): drop as `syn_limited` or
//!    `rate_limited`, or under dry run (global or the rule's) pass as `would_drop`. A packet
//!    that fits every bucket passes as `default`.
//! 7. Bans: before any rule, a source with an unexpired host ban drops as `banned`, and one inside
//!    an unexpired subnet ban as `subnet_banned` (allowlisted sources are never banned). A rule
//!    with `RULE_BAN` tracks how long a source keeps being refused (a gap of `EXCEED_GAP_NS`
//!    restarts the clock); once that reaches `ban_after_ns` the source is banned for `ban_ttl_ns`
//!    (dry run: the packet passes as `would_ban` instead), and when `escalate_after` sources of one
//!    subnet were banned within one `ban_ttl_ns`, the subnet is banned for `subnet_ban_ttl_ns`.
//!    The packet that triggers a ban drops as `banned` (`subnet_banned` if it escalated), under
//!    its rule: per rule, those counters count the bans it made.
//! 8. Admission ([`crate::admission`]): a rule that needs per-source state (a per-source bucket
//!    for this packet, or bans) gives a source state only on its second sighting within
//!    `ADMISSION_WINDOW_NS`, and a rule with subnet buckets gives a subnet state only on its
//!    second sighting; a first sighting charges no bucket of its kind. Sightings are kept in
//!    one CPU's direct-mapped array (the model is that CPU): a key whose slot another key took
//!    meanwhile is seen for the first time again. The subnet is sighted only when its buckets
//!    are reached (no source bucket refused the packet first).
//! 9. Leases ([`crate::lease`]): the model is one CPU with its lease slots. A bucket's units
//!    come out of the slot of its key while it holds enough unexpired ones; otherwise the slot
//!    (taken from another key first, whose units go back to that key's buckets) gives its units
//!    back and takes the packet's cost plus a lease from the bucket (`Bucket::refill`), or just
//!    the cost when the bucket has no room for both; no room for the cost is rule 6's refusal.

use std::{collections::HashMap, net::IpAddr, vec::Vec};

use ipnet::IpNet;

use crate::{
    admission::{Sighting, key_hash},
    lease::{Field, LEASE_SOURCE, LEASE_SUBNET, Lease},
    packet::*,
    ratelimit::{Bucket, ticks},
    rules::{
        BAN_HOST, BAN_SUBNET, BanEntry, BanKey, EscalationState, RuleConfig, TrackKey, TrackState,
    },
    stats::{Action, Reason, Verdict},
    syncookie::{RULE_SYN_COOKIES_ALWAYS, RULE_SYN_COOKIES_AUTO, SynDetector, detector_slot},
    tracked::{Mark, TrackedEntry, current_word},
};

/// A rate-limit rule as the model reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelRule {
    /// IP protocol, `None` for any (with ports: TCP and UDP).
    pub protocol: Option<u8>,
    /// Destination ports; empty for any.
    pub ports: Vec<u16>,
    /// Limits, subnet lengths and flags.
    pub config: RuleConfig,
}

/// The parts of a policy that decide a verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelPolicy {
    /// Allowlisted prefixes.
    pub allow: Vec<IpNet>,
    /// Blocklisted prefixes.
    pub block: Vec<IpNet>,
    /// Action for malformed IP packets.
    pub malformed: Action,
    /// Rate-limit rules, by index.
    pub rules: Vec<ModelRule>,
    /// Global dry run.
    pub dry_run: bool,
}

impl Default for ModelPolicy {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            block: Vec::new(),
            malformed: Action::Drop,
            rules: Vec::new(),
            dry_run: false,
        }
    }
}

/// An IP packet as far as the firewall reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpPacket {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Transport protocol (after IPv6 extension headers).
    pub protocol: u8,
    /// Source and destination port of TCP/UDP, when the transport header is in this packet.
    pub ports: Option<(u16, u16)>,
    /// TCP flags byte, when the TCP header is in this packet.
    pub tcp_flags: Option<u8>,
}

/// What a frame is, to the firewall.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not IPv4 or IPv6.
    NonIp,
    /// An IP packet (or VLAN framing) the parser rejects.
    Malformed,
    /// A well-formed IP packet.
    Ip(IpPacket),
}

fn be16(frame: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]))
}

/// Parses a frame the way the XDP program must.
pub fn parse(frame: &[u8]) -> Parsed {
    let Some(mut ethertype) = be16(frame, 12) else {
        return Parsed::Malformed;
    };
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        // Tag control information (2 bytes), then the inner EtherType.
        let Some(inner) = be16(frame, offset + 2) else {
            return Parsed::Malformed;
        };
        ethertype = inner;
        offset += VLAN_HLEN;
    }
    let l3 = &frame[offset..];
    match ethertype {
        ETH_P_IP => parse_ipv4(l3),
        ETH_P_IPV6 => parse_ipv6(l3),
        _ => Parsed::NonIp,
    }
}

fn parse_ipv4(l3: &[u8]) -> Parsed {
    if l3.len() < 20 {
        return Parsed::Malformed;
    }
    let version = l3[0] >> 4;
    let header_len = usize::from(l3[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([l3[2], l3[3]]));
    if version != 4 || header_len < 20 || l3.len() < header_len || total_len < header_len {
        return Parsed::Malformed;
    }
    let fragment_offset = u16::from_be_bytes([l3[6], l3[7]]) & 0x1fff;
    let protocol = l3[9];
    let src = IpAddr::from([l3[12], l3[13], l3[14], l3[15]]);
    let dst = IpAddr::from([l3[16], l3[17], l3[18], l3[19]]);
    transport(src, dst, protocol, fragment_offset == 0, &l3[header_len..])
}

fn parse_ipv6(l3: &[u8]) -> Parsed {
    if l3.len() < IPV6_HLEN || l3[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&l3[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&l3[24..40]);
    let (src, dst) = (IpAddr::from(src), IpAddr::from(dst));

    let mut next = l3[6];
    let mut offset = IPV6_HLEN;
    let mut first_fragment = true;
    let mut headers = 0;
    loop {
        let is_extension = matches!(
            next,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_FRAGMENT
        );
        if !is_extension {
            break;
        }
        if headers == MAX_IPV6_EXT_HEADERS || offset > MAX_IPV6_CHAIN || l3.len() < offset + 8 {
            return Parsed::Malformed;
        }
        headers += 1;
        let header = &l3[offset..offset + 8];
        if next == IPPROTO_FRAGMENT {
            next = header[0];
            offset += 8;
            if u16::from_be_bytes([header[2], header[3]]) >> 3 != 0 {
                // What follows a non-first fragment header is payload, not headers.
                first_fragment = false;
                break;
            }
        } else {
            let len = (usize::from(header[1]) + 1) * 8;
            if l3.len() < offset + len {
                return Parsed::Malformed;
            }
            next = header[0];
            offset += len;
        }
    }
    transport(src, dst, next, first_fragment, &l3[offset..])
}

fn transport(src: IpAddr, dst: IpAddr, protocol: u8, has_l4: bool, l4: &[u8]) -> Parsed {
    let ports = |l4: &[u8]| Some((be16(l4, 0).unwrap_or(0), be16(l4, 2).unwrap_or(0)));
    let (ports, tcp_flags) = if !has_l4 {
        (None, None)
    } else {
        match protocol {
            IPPROTO_TCP => {
                if l4.len() < TCP_HLEN || l4[12] >> 4 < 5 {
                    return Parsed::Malformed;
                }
                (ports(l4), Some(l4[13]))
            }
            IPPROTO_UDP => {
                if l4.len() < UDP_HLEN {
                    return Parsed::Malformed;
                }
                (ports(l4), None)
            }
            _ => (None, None),
        }
    };
    Parsed::Ip(IpPacket {
        src,
        dst,
        protocol,
        ports,
        tcp_flags,
    })
}

/// The reference firewall: a policy and the bucket state its rules have built up.
#[derive(Clone, Debug, Default)]
pub struct Model {
    /// The policy.
    pub policy: ModelPolicy,
    sources: HashMap<TrackKey, TrackState>,
    subnets: HashMap<TrackKey, TrackState>,
    escalation: HashMap<TrackKey, EscalationState>,
    /// The admission array of the one CPU the model is: slot → value (absent: 0).
    admission: HashMap<u32, u64>,
    /// The tracked filter ([`crate::tracked`]): entry → words (absent: zero).
    tracked: HashMap<u32, TrackedEntry>,
    /// The leases of the one CPU the model is, by slot (see [`crate::lease`]).
    leases: HashMap<u32, Lease>,
    /// The SYN detectors of the one CPU the model is, by slot (see [`crate::syncookie`]).
    detectors: HashMap<u32, SynDetector>,
    /// Bans made so far (expired ones included; they no longer count).
    pub bans: HashMap<BanKey, BanEntry>,
}

/// What the model decided for one frame, and under which rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The verdict.
    pub verdict: Verdict,
    /// Index of the rule that took the packet, if any.
    pub rule: Option<u32>,
}

impl Model {
    /// A model with empty state.
    pub fn new(policy: ModelPolicy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    /// Bucket state of every tracked (rule, source), as the kernel's source map holds it.
    pub fn sources(&self) -> &HashMap<TrackKey, TrackState> {
        &self.sources
    }

    /// Bucket state of every tracked (rule, subnet), as the kernel's subnet map holds it.
    pub fn subnets(&self) -> &HashMap<TrackKey, TrackState> {
        &self.subnets
    }

    /// Escalation windows of every (rule, subnet) with bans, as the kernel's escalation map.
    pub fn escalation(&self) -> &HashMap<TrackKey, EscalationState> {
        &self.escalation
    }

    /// The non-zero slots of the admission array, as the kernel's holds them on the CPU the
    /// model is.
    pub fn admission(&self) -> &HashMap<u32, u64> {
        &self.admission
    }

    /// The tracked filter's non-zero entries, as the kernel's array holds them.
    pub fn tracked(&self) -> &HashMap<u32, TrackedEntry> {
        &self.tracked
    }

    /// The SYN detectors' non-empty slots, as the kernel's array holds them on the CPU the
    /// model is.
    pub fn detectors(&self) -> &HashMap<u32, SynDetector> {
        &self.detectors
    }

    /// Whether a packet of a rule with `config` takes the SYN cookie path
    /// ([`crate::syncookie`]), metering this CPU's detector of the port for a SYN: the limits
    /// program hands a SYN or ACK to the cookie program when the rule has cookies (`auto`: for an
    /// ACK, when the port's detector is not ready); the cookie program takes a SYN when it can
    /// read its headers ([`cookie_headers`]) and the port is in cookie mode, and an ACK only
    /// after a cookie went out. Anything else goes back to the buckets.
    fn takes_cookie_path(
        &mut self,
        frame: &[u8],
        packet: &IpPacket,
        config: &RuleConfig,
        now_ns: u64,
    ) -> bool {
        let always = config.flags & RULE_SYN_COOKIES_ALWAYS != 0;
        let auto = config.flags & RULE_SYN_COOKIES_AUTO != 0;
        let Some(flags) = packet.tcp_flags else {
            return false;
        };
        // A rule under dry run changes no traffic: no cookies either.
        if packet.protocol != IPPROTO_TCP
            || flags & (TCP_SYN | TCP_ACK) == 0
            || !(always || auto)
            || self.policy.dry_run
            || config.dry_run()
        {
            return false;
        }
        let Some((_, port)) = packet.ports else {
            return false;
        };
        let slot = detector_slot(port);
        let pure_syn = flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN) == TCP_SYN;
        if !pure_syn {
            // An ACK is checked in XDP only within two minutes of a cookie sent for its port
            // (`syncookie::cookie_recent`): the model's world has no listener, so no cookie ever
            // goes out, and ACKs take the buckets.
            return false;
        }
        if !cookie_headers(frame) {
            return false;
        }
        let detector = self.detectors.entry(slot).or_default();
        let metered = detector.meter(port, now_ns);
        always || metered.cookies
    }

    /// The index of the rule that takes `packet`.
    pub fn rule_for(&self, packet: &IpPacket) -> Option<u32> {
        let port = packet.ports.map(|(_, dst)| dst);
        let is_port_protocol = matches!(packet.protocol, IPPROTO_TCP | IPPROTO_UDP);
        let find = |pred: &dyn Fn(&ModelRule) -> bool| {
            self.policy.rules.iter().position(pred).map(|i| i as u32)
        };
        port.and_then(|port| {
            find(&|rule| {
                rule.ports.contains(&port)
                    && match rule.protocol {
                        Some(protocol) => protocol == packet.protocol,
                        None => is_port_protocol,
                    }
            })
        })
        .or_else(|| find(&|rule| rule.ports.is_empty() && rule.protocol == Some(packet.protocol)))
        .or_else(|| find(&|rule| rule.ports.is_empty() && rule.protocol.is_none()))
    }

    /// The decision for `frame` at `now_ns` (the program's clock), updating the bucket state.
    pub fn decide(&mut self, frame: &[u8], now_ns: u64) -> Decision {
        let parsed = parse(frame);
        let verdict = decide(&self.policy, &parsed);
        let Parsed::Ip(packet) = parsed else {
            return Decision {
                verdict,
                rule: None,
            };
        };
        if verdict.reason != Reason::Default {
            // Allowlisted sources skip the limits; blocklisted ones never reach a bucket.
            return Decision {
                verdict,
                rule: None,
            };
        }
        if let Some(reason) = self.banned(&packet, now_ns) {
            return Decision {
                verdict: Verdict::new(Action::Drop, reason),
                rule: None,
            };
        }
        let Some(rule) = self.rule_for(&packet) else {
            return Decision {
                verdict,
                rule: None,
            };
        };
        let config = self.policy.rules[rule as usize].config;
        let now = ticks(now_ns);
        let len = frame.len() as u64;
        let (source_key, subnet_key) = match packet.src {
            IpAddr::V4(addr) => {
                let addr = u32::from(addr);
                (
                    TrackKey::v4(rule, addr, 32),
                    TrackKey::v4(rule, addr, config.subnet_v4_len),
                )
            }
            IpAddr::V6(addr) => {
                let bits = u128::from(addr);
                let (hi, lo) = ((bits >> 64) as u64, bits as u64);
                (
                    TrackKey::v6(rule, hi, lo, 128),
                    TrackKey::v6(rule, hi, lo, config.subnet_v6_len),
                )
            }
        };
        if self.takes_cookie_path(frame, &packet, &config, now_ns) {
            // In the kernel the cookie program answers the SYN with the listener's cookie; the
            // model's world has no sockets, so the kernel finds no listener either: it passes the
            // SYN, under the rule, without charging a bucket.
            return Decision {
                verdict: Verdict::new(Action::Pass, Reason::Default),
                rule: Some(rule),
            };
        }
        let is_syn = packet.tcp_flags.is_some_and(opens_connection);

        // (bucket, which state, which field, cost, reason when exceeded), in charging order.
        let steps: [(Bucket, bool, Field, u64, Reason); 5] = [
            (
                if is_syn {
                    config.syn
                } else {
                    Bucket::UNLIMITED
                },
                false,
                Field::Syn,
                1,
                Reason::SynLimited,
            ),
            (
                config.source_packets,
                false,
                Field::Packets,
                1,
                Reason::RateLimited,
            ),
            (
                config.source_bytes,
                false,
                Field::Bytes,
                len,
                Reason::RateLimited,
            ),
            (
                config.subnet_packets,
                true,
                Field::Packets,
                1,
                Reason::RateLimited,
            ),
            (
                config.subnet_bytes,
                true,
                Field::Bytes,
                len,
                Reason::RateLimited,
            ),
        ];
        // Admission: a source that needs per-source state gets it on its second packet within
        // ADMISSION_WINDOW_NS; its first packet charges no per-source bucket.
        // The kernel reads the lease slot only for a key the tracked filter holds (a lease is
        // taken from state found through it, and lasts at most a millisecond).
        let limits_source = (is_syn && config.syn.is_limited())
            || config.source_packets.is_limited()
            || config.source_bytes.is_limited();
        let source_leased = limits_source
            && self.key_is_tracked(&source_key, now_ns)
            && self.leased(
                LEASE_SOURCE,
                &source_key,
                now,
                &[
                    (
                        if is_syn {
                            config.syn
                        } else {
                            Bucket::UNLIMITED
                        },
                        Field::Syn,
                        1,
                    ),
                    (config.source_packets, Field::Packets, 1),
                    (config.source_bytes, Field::Bytes, len),
                ],
            );
        // State is looked for when bans need the source's history, or a source bucket is
        // charged that the lease does not cover.
        let tracked = if config.bans() || (limits_source && !source_leased) {
            self.admit(false, source_key, now_ns)
        } else {
            source_leased
        };
        // The subnet is sighted when its first limited bucket is reached.
        let mut subnet_tracked = None;
        for (bucket, subnet, field, cost, reason) in steps {
            if !bucket.is_limited() || (!subnet && !tracked) {
                continue;
            }
            if subnet {
                let admitted = match subnet_tracked {
                    Some(admitted) => admitted,
                    None => {
                        let leased = self.key_is_tracked(&subnet_key, now_ns)
                            && self.leased(
                                LEASE_SUBNET,
                                &subnet_key,
                                now,
                                &[
                                    (config.subnet_packets, Field::Packets, 1),
                                    (config.subnet_bytes, Field::Bytes, len),
                                ],
                            );
                        leased || self.admit(true, subnet_key, now_ns)
                    }
                };
                subnet_tracked = Some(admitted);
                if !admitted {
                    continue;
                }
            }
            let (kind, key) = if subnet {
                (LEASE_SUBNET, subnet_key)
            } else {
                (LEASE_SOURCE, source_key)
            };
            // The units come out of this CPU's lease when it has them; otherwise the lease
            // is refilled from the shared bucket (the slot first taken from another key, whose
            // units go back to it).
            let slot = Lease::slot(kind, &key);
            let mut lease = self.leases.get(&slot).copied().unwrap_or_default();
            if lease.holds(&key) && lease.covers(field, now, cost) {
                lease.spend(field, cost);
                self.leases.insert(slot, lease);
                continue;
            }
            if !lease.holds(&key) {
                self.give_back(&lease, subnet, now);
                lease.claim(&key);
            }
            let map = if subnet {
                &mut self.subnets
            } else {
                &mut self.sources
            };
            let state = map.entry(key).or_default();
            let tat = match field {
                Field::Packets => &mut state.packets,
                Field::Bytes => &mut state.bytes,
                Field::Syn => &mut state.syn,
            };
            let refilled = bucket.refill(*tat, now, lease.returnable(field, now), cost);
            if let Some((next, left)) = refilled {
                *tat = next;
                lease.refilled(field, now, left, next);
            }
            self.leases.insert(slot, lease);
            if refilled.is_some() {
                continue;
            }
            let dry_run = self.policy.dry_run || config.dry_run();
            let ban =
                config.bans() && tracked && self.exceeding_long_enough(source_key, &config, now_ns);
            let verdict = match (dry_run, ban) {
                (true, true) => Verdict::new(Action::Pass, Reason::WouldBan),
                (true, false) => Verdict::new(Action::Pass, Reason::WouldDrop),
                // The packet that triggers a ban counts as banned.
                (false, true) => {
                    let subnet = self.ban(rule, &config, source_key, subnet_key, now_ns);
                    let reason = if subnet {
                        Reason::SubnetBanned
                    } else {
                        Reason::Banned
                    };
                    Verdict::new(Action::Drop, reason)
                }
                (false, false) => Verdict::new(Action::Drop, reason),
            };
            return Decision {
                verdict,
                rule: Some(rule),
            };
        }
        Decision {
            verdict,
            rule: Some(rule),
        }
    }
}

impl Model {
    /// Why `packet`'s source is banned at `now_ns`, if it is.
    fn banned(&self, packet: &IpPacket, now_ns: u64) -> Option<Reason> {
        let active = |key: &TrackKey| {
            self.bans
                .get(&BanKey::of(key))
                .is_some_and(|ban| ban.active_at(now_ns))
        };
        let key = |len: u32| match packet.src {
            IpAddr::V4(addr) => TrackKey::v4(0, u32::from(addr), len),
            IpAddr::V6(addr) => {
                let bits = u128::from(addr);
                TrackKey::v6(0, (bits >> 64) as u64, bits as u64, len)
            }
        };
        let host = if packet.src.is_ipv4() { 32 } else { 128 };
        if active(&key(host)) {
            return Some(Reason::Banned);
        }
        let escalating = self
            .policy
            .rules
            .iter()
            .filter(|rule| rule.config.bans() && rule.config.escalate_after > 0);
        for rule in escalating {
            let len = if packet.src.is_ipv4() {
                rule.config.subnet_v4_len
            } else {
                rule.config.subnet_v6_len
            };
            if len < host && active(&key(len)) {
                return Some(Reason::SubnetBanned);
            }
        }
        None
    }

    /// Gives the units `lease` holds back to its key's buckets (a slot changing hands).
    fn give_back(&mut self, lease: &Lease, subnet: bool, now: u64) {
        if lease.held == 0 {
            return;
        }
        let Some(rule) = self.policy.rules.get(usize::from(lease.key.rule)) else {
            return;
        };
        let config = rule.config;
        let map = if subnet {
            &mut self.subnets
        } else {
            &mut self.sources
        };
        let Some(state) = map.get_mut(&lease.key) else {
            return;
        };
        for field in Field::ALL {
            let (bucket, tat) = match (subnet, field) {
                (false, Field::Packets) => (config.source_packets, &mut state.packets),
                (false, Field::Bytes) => (config.source_bytes, &mut state.bytes),
                (false, Field::Syn) => (config.syn, &mut state.syn),
                (true, Field::Packets) => (config.subnet_packets, &mut state.packets),
                (true, Field::Bytes) => (config.subnet_bytes, &mut state.bytes),
                (true, Field::Syn) => (Bucket::UNLIMITED, &mut state.syn),
            };
            *tat = bucket.give_back(*tat, now, lease.returnable(field, now));
        }
    }

    /// Whether `key` has state (per-subnet when `subnet`, else per-source), creating it on a
    /// second sighting within [`crate::rules::ADMISSION_WINDOW_NS`]; a first sighting only
    /// records the key in its admission slot.
    ///
    /// The tracked filter ([`crate::tracked`]) is asked first: a key it does not hold goes to
    /// admission even when it has state (which a second sighting then finds again), and a key
    /// whose state is found or made gets its bit in the current epoch.
    fn admit(&mut self, subnet: bool, key: TrackKey, now_ns: u64) -> bool {
        let hash = key_hash(&key);
        let mark = Mark::of_hash(hash);
        let known = self.is_tracked(mark, now_ns);
        let map = if subnet {
            &mut self.subnets
        } else {
            &mut self.sources
        };
        if known && map.contains_key(&key) {
            self.mark_tracked(mark, now_ns);
            return true;
        }
        let sighting = Sighting::of_hash(hash);
        let slot = self.admission.get(&sighting.slot).copied().unwrap_or(0);
        if sighting.seen_recently(slot, now_ns) {
            map.entry(key).or_default();
            self.mark_tracked(mark, now_ns);
            true
        } else {
            self.admission
                .insert(sighting.slot, sighting.recorded_at(now_ns));
            false
        }
    }

    /// Whether the tracked filter holds `key` at `now_ns`.
    fn key_is_tracked(&self, key: &TrackKey, now_ns: u64) -> bool {
        self.is_tracked(Mark::of_hash(key_hash(key)), now_ns)
    }

    fn is_tracked(&self, mark: Mark, now_ns: u64) -> bool {
        self.tracked
            .get(&mark.entry)
            .is_some_and(|entry| mark.present(entry, now_ns))
    }

    fn mark_tracked(&mut self, mark: Mark, now_ns: u64) {
        let entry = self.tracked.entry(mark.entry).or_default();
        let word = &mut entry.words[current_word(now_ns)];
        if let Some(next) = mark.marked(*word, now_ns) {
            *word = next;
        }
    }

    /// Whether this CPU's lease slot of `key` holds it and covers every limited bucket of
    /// `costs` (bucket, field, cost): the kernel then spends the lease without looking at the
    /// key's state, so neither admission nor the filter sees the packet.
    fn leased(&self, kind: u32, key: &TrackKey, now: u64, costs: &[(Bucket, Field, u64)]) -> bool {
        let lease = self
            .leases
            .get(&Lease::slot(kind, key))
            .copied()
            .unwrap_or_default();
        lease.holds(key)
            && costs.iter().all(|&(bucket, field, cost)| {
                !bucket.is_limited() || lease.covers(field, now, cost)
            })
    }

    /// Records a refusal of `source` at `now_ns`; whether it has now exceeded for `ban_after`.
    fn exceeding_long_enough(
        &mut self,
        source: TrackKey,
        config: &RuleConfig,
        now_ns: u64,
    ) -> bool {
        self.sources
            .entry(source)
            .or_default()
            .record_refusal(config.ban_after_ns, now_ns)
    }

    /// Bans `source`, and its subnet when enough of the subnet's sources were banned lately;
    /// `true` when the subnet was banned.
    fn ban(
        &mut self,
        rule: u32,
        config: &RuleConfig,
        source: TrackKey,
        subnet: TrackKey,
        now_ns: u64,
    ) -> bool {
        self.bans.insert(
            BanKey::of(&source),
            BanEntry::new(now_ns, config.ban_ttl_ns, rule, BAN_HOST),
        );
        if config.escalate_after == 0 {
            return false;
        }
        let escalate = self.escalation.entry(subnet).or_default().count_ban(
            config.escalate_after,
            config.ban_ttl_ns,
            now_ns,
        );
        if escalate {
            self.bans.insert(
                BanKey::of(&subnet),
                BanEntry::new(now_ns, config.subnet_ban_ttl_ns, rule, BAN_SUBNET),
            );
            true
        } else {
            false
        }
    }
}

/// The verdict for a parsed packet from the lists alone (no rate-limit rules).
pub fn decide(policy: &ModelPolicy, parsed: &Parsed) -> Verdict {
    match parsed {
        Parsed::NonIp => Verdict::new(Action::Pass, Reason::NonIp),
        Parsed::Malformed => Verdict::new(policy.malformed, Reason::Malformed),
        Parsed::Ip(packet) => {
            if policy.allow.iter().any(|net| net.contains(&packet.src)) {
                Verdict::new(Action::Pass, Reason::Allowlist)
            } else if policy.block.iter().any(|net| net.contains(&packet.src)) {
                Verdict::new(Action::Drop, Reason::Blocklist)
            } else {
                Verdict::new(Action::Pass, Reason::Default)
            }
        }
    }
}

/// Whether the cookie program can read `frame`'s headers: Ethernet with up to two VLAN tags,
/// IPv4 without options and not a fragment, or IPv6 without extension headers, and a whole TCP
/// header (data offset 5 to 15 words). Others go back to the rule's buckets.
pub fn cookie_headers(frame: &[u8]) -> bool {
    let Some(mut ethertype) = be16(frame, 12) else {
        return false;
    };
    let mut l3 = 14;
    for _ in 0..2 {
        if ethertype == 0x8100 || ethertype == 0x88A8 {
            let Some(inner) = be16(frame, l3 + 2) else {
                return false;
            };
            ethertype = inner;
            l3 += 4;
        }
    }
    let l4 = match ethertype {
        0x0800 => {
            let (Some(&version_ihl), Some(fragment), Some(&protocol)) =
                (frame.get(l3), be16(frame, l3 + 6), frame.get(l3 + 9))
            else {
                return false;
            };
            if version_ihl != 0x45 || fragment & 0x3fff != 0 || protocol != IPPROTO_TCP {
                return false;
            }
            l3 + 20
        }
        0x86DD => {
            if frame.get(l3 + 6) != Some(&IPPROTO_TCP) || frame.len() < l3 + 40 {
                return false;
            }
            l3 + 40
        }
        _ => return false,
    };
    let Some(&offset) = frame.get(l4 + 12) else {
        return false;
    };
    let tcp_len = usize::from(offset >> 4) * 4;
    tcp_len >= 20 && frame.len() >= l4 + tcp_len
}

/// The verdict for `frame` from the lists alone (rate-limit rules are not applied).
pub fn verdict(policy: &ModelPolicy, frame: &[u8]) -> Verdict {
    decide(policy, &parse(frame))
}
