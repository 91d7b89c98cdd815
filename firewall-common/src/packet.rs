//! Constants of the packet parser, shared by the XDP program and the reference model so that the
//! two agree on every bound.

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86DD;
/// EtherType of an IEEE 802.1Q VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// EtherType of an IEEE 802.1ad (QinQ) service tag.
pub const ETH_P_8021AD: u16 = 0x88A8;

/// Length of an Ethernet header without tags.
pub const ETH_HLEN: usize = 14;
/// Length of one VLAN tag.
pub const VLAN_HLEN: usize = 4;
/// VLAN tags parsed. A frame with more tags is not IP to us (the stack would not take it as IP
/// either) and passes as non-IP.
pub const MAX_VLAN_TAGS: usize = 2;

/// Length of an IPv6 header.
pub const IPV6_HLEN: usize = 40;
/// IPv6 extension headers skipped before giving up; a longer chain is malformed, so that extra
/// headers cannot hide the transport header from port rules.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;
/// Largest offset (from the start of the IPv6 header) at which an extension header may start.
/// XDP frames are at most a page here, so this bound never rejects a real packet; it keeps the
/// verifier's view of the offset bounded.
pub const MAX_IPV6_CHAIN: usize = 2048;

/// IP protocol number of the IPv6 hop-by-hop options header.
pub const IPPROTO_HOPOPTS: u8 = 0;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of the IPv6 routing header.
pub const IPPROTO_ROUTING: u8 = 43;
/// IP protocol number of the IPv6 fragment header.
pub const IPPROTO_FRAGMENT: u8 = 44;
/// IP protocol number of the IPv6 destination options header.
pub const IPPROTO_DSTOPTS: u8 = 60;

/// Minimum TCP header.
pub const TCP_HLEN: usize = 20;
/// UDP header.
pub const UDP_HLEN: usize = 8;

/// TCP flag SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP flag ACK.
pub const TCP_ACK: u8 = 0x10;
/// TCP FIN flag.
pub const TCP_FIN: u8 = 0x01;
/// TCP RST flag.
pub const TCP_RST: u8 = 0x04;

/// Whether TCP `flags` open a connection (SYN without ACK): what `syn_per_source` limits. Shared
/// by the XDP program and the reference model.
#[inline(always)]
pub const fn opens_connection(flags: u8) -> bool {
    flags & TCP_SYN != 0 && flags & TCP_ACK == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_syn_without_ack_opens_a_connection() {
        assert!(opens_connection(TCP_SYN));
        assert!(opens_connection(TCP_SYN | 0x01)); // SYN+FIN still asks for a connection
        assert!(!opens_connection(TCP_SYN | TCP_ACK));
        assert!(!opens_connection(TCP_ACK));
        assert!(!opens_connection(0));
    }
}
