//! Policies shared by several tests.

/// Five rate-limit rules that between them exercise every rule feature: per-source packet and
/// SYN buckets with bans and escalation to subnet bans (HTTPS), per-source byte and per-subnet
/// packet buckets (DNS), rates high enough that each CPU takes units in leases of many packets
/// and bytes (mDNS: `firewall_common::lease`, leases of 2 packets and 300 bytes per source, 400 bytes per subnet), a dry-run
/// per-subnet rule (other TCP), and a catch-all with bans. The kernel-vs-model replays
/// (`ratelimit.rs`, `adversarial.rs`) run them with their own lists.
pub const RATE_LIMIT_RULES: &str = r#"
[[rule]]
name = "https"
protocol = "tcp"
ports = [443, 8443]
per_source = { packets_per_second = 40, burst_packets = 6 }
syn_per_source = { per_second = 1, burst = 2 }
on_exceed = "ban"
ban_after = "100ms"
ban_ttl = "700ms"
escalate_after = 2
subnet_ban_ttl = "1500ms"

[[rule]]
name = "dns"
protocol = "udp"
ports = [53]
per_source = { bytes_per_second = 4000, burst_bytes = 400 }
per_subnet = { packets_per_second = 60, burst_packets = 10, prefix_v4 = 24, prefix_v6 = 64 }

[[rule]]
name = "mdns"
protocol = "udp"
ports = [5353]
per_source = { packets_per_second = 3000, burst_packets = 8, bytes_per_second = 300000, burst_bytes = 2500 }
per_subnet = { bytes_per_second = 400000, burst_bytes = 3000, prefix_v4 = 24, prefix_v6 = 64 }

[[rule]]
name = "other-tcp"
protocol = "tcp"
dry_run = true
per_subnet = { packets_per_second = 20, burst_packets = 3, prefix_v4 = 16, prefix_v6 = 48 }

[[rule]]
name = "everything-else"
protocol = "any"
per_source = { packets_per_second = 10, burst_packets = 2 }
on_exceed = "ban"
ban_after = "300ms"
ban_ttl = "400ms"
"#;
