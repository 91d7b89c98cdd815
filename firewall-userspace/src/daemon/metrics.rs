//! The Prometheus endpoint: `/metrics` in the exposition format, encoded by prometheus-client.
//!
//! Kernel counters are read from the pinned maps at scrape time and summed over CPUs, so they
//! never go backwards while the pins live, across daemon restarts included. Daemon-side values
//! (list sizes, reloads, control requests) come from [`Shared`], which the engine keeps current.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use firewall_common::{
    Reason,
    events::{EVENTS_EMITTED, EVENTS_LOST, EVENTS_SUPPRESSED},
    map_names,
    rules::{BAN_SUBNET, BanEntry, BanKey, EscalationState, TrackKey, TrackState},
};
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, server::conn::http1};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tracing::{debug, warn};

use crate::{
    dataplane::bans::{CROWDSEC_BAN_RULE, MANUAL_BAN_RULE},
    dataplane::stats,
    engine::Shared,
    paths::PinLayout,
};

/// The collector behind `/metrics`.
#[derive(Debug, Clone)]
pub struct Exporter {
    layout: PinLayout,
    /// What the engine publishes.
    pub shared: Arc<Mutex<Shared>>,
}

fn counter<N: prometheus_client::encoding::EncodeCounterValue + Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Vec<(&str, String)>, N)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ConstCounter::new(*value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue + Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Vec<(&str, String)>, N)],
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        ConstGauge::new(*value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn open(layout: &PinLayout, name: &str) -> Option<Map> {
    let data = MapData::from_pin(layout.map(name)).ok()?;
    Map::from_map_data(data).ok()
}

fn count_keys<K: aya::Pod, V: aya::Pod>(layout: &PinLayout, name: &str) -> Option<u64> {
    let map = BpfHashMap::<_, K, V>::try_from(open(layout, name)?).ok()?;
    Some(map.keys().filter(Result::is_ok).count() as u64)
}

impl Collector for Exporter {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let shared = match self.shared.lock() {
            Ok(shared) => shared,
            Err(poisoned) => poisoned.into_inner(),
        };
        let layout = &self.layout;
        if let Ok(snapshot) = stats::read_pinned(layout) {
            let interface = |slot: u32| {
                shared
                    .interfaces
                    .get(&slot)
                    .cloned()
                    .unwrap_or_else(|| "other".into())
            };
            let mut packets = Vec::new();
            let mut bytes = Vec::new();
            for row in &snapshot.slots {
                let labels = vec![
                    ("interface", interface(row.slot)),
                    ("action", row.action.name().to_owned()),
                    ("reason", row.reason.name().to_owned()),
                ];
                packets.push((labels.clone(), row.packets));
                bytes.push((labels, row.bytes));
            }
            counter(
                &mut encoder,
                "apifw_packets",
                "Packets by interface, verdict action and reason.",
                &packets,
            )?;
            counter(
                &mut encoder,
                "apifw_bytes",
                "Bytes by interface, verdict action and reason.",
                &bytes,
            )?;
            let rule = |slot: u32| {
                shared
                    .rules
                    .get(&slot)
                    .cloned()
                    .unwrap_or_else(|| format!("slot{slot}"))
            };
            let outcome = |reason: Reason| {
                if reason == Reason::Default {
                    "passed".to_owned()
                } else {
                    reason.name().to_owned()
                }
            };
            let rule_series = |bytes: bool| -> Vec<(Vec<(&str, String)>, u64)> {
                snapshot
                    .rules
                    .iter()
                    .map(|row| {
                        (
                            vec![("rule", rule(row.rule)), ("outcome", outcome(row.reason))],
                            if bytes { row.bytes } else { row.packets },
                        )
                    })
                    .collect()
            };
            counter(
                &mut encoder,
                "apifw_rule_packets",
                "Packets taken by each rate-limit rule, by outcome.",
                &rule_series(false),
            )?;
            counter(
                &mut encoder,
                "apifw_rule_bytes",
                "Bytes taken by each rate-limit rule, by outcome.",
                &rule_series(true),
            )?;
        }
        if let Some(Map::PerCpuArray(data)) = open(layout, map_names::EVENT_STATS)
            && let Ok(events) = PerCpuArray::<_, u64>::try_from(Map::PerCpuArray(data))
        {
            let sum = |index: u32| {
                events
                    .get(&index, 0)
                    .map(|values| values.iter().copied().fold(0u64, u64::wrapping_add))
                    .unwrap_or(0)
            };
            for (name, help, index) in [
                (
                    "apifw_events",
                    "Drop events delivered to the daemon.",
                    EVENTS_EMITTED,
                ),
                (
                    "apifw_events_suppressed",
                    "Drop events not sent: over the configured per-second cap.",
                    EVENTS_SUPPRESSED,
                ),
                (
                    "apifw_events_lost",
                    "Drop events not sent: the ring buffer was full.",
                    EVENTS_LOST,
                ),
            ] {
                counter(&mut encoder, name, help, &[(Vec::new(), sum(index))])?;
            }
        }
        // Read once, in batches: the map may hold 100k CrowdSec bans.
        let mut ban_map_entries = None;
        if let Some(map) = open(layout, map_names::BANS)
            && let Ok(bans) = BpfHashMap::<_, BanKey, BanEntry>::try_from(map)
        {
            let now = crate::dataplane::bans::monotonic_ns().unwrap_or(0);
            // (kind, origin) → active bans; every series exported, zeros included.
            let mut counts: BTreeMap<(&str, &str), i64> = BTreeMap::new();
            for kind in ["host", "subnet"] {
                for origin in ["rule", "manual", "crowdsec"] {
                    counts.insert((kind, origin), 0);
                }
            }
            let entries = crate::dataplane::bans::entries(&bans).unwrap_or_default();
            ban_map_entries = Some(entries.len() as u64);
            for (_, ban) in entries.iter().filter(|(_, ban)| ban.active_at(now)) {
                let kind = if ban.kind == BAN_SUBNET {
                    "subnet"
                } else {
                    "host"
                };
                let origin = match ban.rule {
                    MANUAL_BAN_RULE => "manual",
                    CROWDSEC_BAN_RULE => "crowdsec",
                    _ => "rule",
                };
                *counts.entry((kind, origin)).or_insert(0) += 1;
            }
            let series: Vec<_> = counts
                .into_iter()
                .map(|((kind, origin), n)| {
                    (
                        vec![("kind", kind.to_owned()), ("origin", origin.to_owned())],
                        n,
                    )
                })
                .collect();
            gauge(
                &mut encoder,
                "apifw_bans",
                "Active bans by kind and origin (rule: a rate-limit rule's, manual: `apifw ban` \
                 and jails, crowdsec: a CrowdSec decision).",
                &series,
            )?;
        }
        let lists: Vec<_> = shared
            .lists
            .iter()
            .map(|(list, n)| (vec![("list", (*list).to_owned())], *n as i64))
            .collect();
        gauge(
            &mut encoder,
            "apifw_list_entries",
            "Allow and block list entries (policy, feeds and runtime).",
            &lists,
        )?;
        let mut fill = shared.fill.clone();
        let tracked_sources =
            count_keys::<TrackKey, TrackState>(layout, map_names::SOURCES).unwrap_or(0);
        let tracked_subnets =
            count_keys::<TrackKey, TrackState>(layout, map_names::SUBNETS).unwrap_or(0);
        for (name, entries) in [
            (map_names::SOURCES, tracked_sources),
            (map_names::SUBNETS, tracked_subnets),
            (map_names::BANS, ban_map_entries.unwrap_or(0)),
            (
                map_names::ESCALATION,
                count_keys::<TrackKey, EscalationState>(layout, map_names::ESCALATION).unwrap_or(0),
            ),
        ] {
            if let Some(capacity) = shared.capacity.get(name) {
                fill.push((name, entries, *capacity));
            }
        }
        let series = |value: &dyn Fn(u64, u64) -> f64| -> Vec<(Vec<(&str, String)>, f64)> {
            fill.iter()
                .map(|(map, entries, capacity)| {
                    (vec![("map", (*map).to_owned())], value(*entries, *capacity))
                })
                .collect()
        };
        gauge(
            &mut encoder,
            "apifw_map_entries",
            "Entries in use per kernel map.",
            &series(&|entries, _| entries as f64),
        )?;
        gauge(
            &mut encoder,
            "apifw_map_capacity",
            "Capacity per kernel map.",
            &series(&|_, capacity| capacity as f64),
        )?;
        gauge(
            &mut encoder,
            "apifw_map_fill_ratio",
            "Entries in use over capacity per kernel map (0..1).",
            &series(&|entries, capacity| entries as f64 / capacity.max(1) as f64),
        )?;
        let memory =
            |value: &dyn Fn(&crate::control::MapMemory) -> u64| -> Vec<(Vec<(&str, String)>, i64)> {
                shared
                    .memory
                    .iter()
                    .map(|map| {
                        let bytes = i64::try_from(value(map)).unwrap_or(i64::MAX);
                        (vec![("map", map.map.clone())], bytes)
                    })
                    .collect()
            };
        gauge(
            &mut encoder,
            "apifw_map_memory_bytes",
            "Kernel memory per map, as the kernel accounts it (memlock).",
            &memory(&|map| map.bytes),
        )?;
        gauge(
            &mut encoder,
            "apifw_map_memory_full_bytes",
            "Kernel memory per map when full at the policy's [limits].",
            &memory(&|map| map.full_bytes),
        )?;
        let cookie_ports = |value: &dyn Fn(&crate::control::CookieStatus) -> i64| {
            shared
                .syn_cookies
                .iter()
                .filter_map(|cookies| {
                    let port = cookies.port?;
                    Some((
                        vec![("rule", cookies.rule.clone()), ("port", port.to_string())],
                        value(cookies),
                    ))
                })
                .collect::<Vec<_>>()
        };
        gauge(
            &mut encoder,
            "apifw_syn_cookie_mode",
            "1 while SYNs to the port are answered with cookies in XDP (on at least one CPU).",
            &cookie_ports(&|cookies| i64::from(cookies.on())),
        )?;
        counter(
            &mut encoder,
            "apifw_syn_cookie_mode_switches",
            "Times a CPU switched the port's cookie mode on or off.",
            &cookie_ports(&|cookies| i64::try_from(cookies.switches).unwrap_or(i64::MAX))
                .into_iter()
                .map(|(labels, value)| (labels, value as u64))
                .collect::<Vec<_>>(),
        )?;
        gauge(
            &mut encoder,
            "apifw_tracked_sources",
            "(rule, source) pairs with rate-limit state.",
            &[(Vec::new(), tracked_sources as i64)],
        )?;
        gauge(
            &mut encoder,
            "apifw_tracked_subnets",
            "(rule, subnet) pairs with rate-limit state.",
            &[(Vec::new(), tracked_subnets as i64)],
        )?;
        counter(
            &mut encoder,
            "apifw_reloads",
            "Successful policy reloads since the daemon started.",
            &[(Vec::new(), shared.reloads)],
        )?;
        counter(
            &mut encoder,
            "apifw_reload_failures",
            "Rejected policy reloads since the daemon started.",
            &[(Vec::new(), shared.reload_failures)],
        )?;
        let mut requests: Vec<_> = shared
            .requests
            .iter()
            .map(|((verb, result), n)| {
                (
                    vec![("verb", verb.clone()), ("result", (*result).to_owned())],
                    *n,
                )
            })
            .collect();
        requests.sort();
        counter(
            &mut encoder,
            "apifw_control_requests",
            "Control API requests by verb and result.",
            &requests,
        )?;
        let per_jail = |value: &dyn Fn(&crate::jails::JailCounters) -> u64| {
            shared
                .jails
                .iter()
                .map(|(name, counters, _)| (vec![("jail", name.clone())], value(counters)))
                .collect::<Vec<_>>()
        };
        for (name, help, value) in [
            (
                "apifw_jail_lines",
                "Access-log lines each jail read.",
                (|c: &crate::jails::JailCounters| c.lines)
                    as fn(&crate::jails::JailCounters) -> u64,
            ),
            (
                "apifw_jail_unparsed_lines",
                "Access-log lines each jail could not parse.",
                |c| c.unparsed,
            ),
            (
                "apifw_jail_matches",
                "Access-log lines that matched each jail.",
                |c| c.matches,
            ),
            (
                "apifw_jail_reports",
                "Abuse reports counted in each jail.",
                |c| c.reports,
            ),
            ("apifw_jail_bans", "Bans each jail made.", |c| c.bans),
            (
                "apifw_jail_allowlisted",
                "Bans each jail did not make because the source is allowlisted.",
                |c| c.allowlisted,
            ),
        ] {
            counter(&mut encoder, name, help, &per_jail(&value))?;
        }
        let active: Vec<_> = shared
            .jails
            .iter()
            .map(|(name, _, active)| (vec![("jail", name.clone())], *active as i64))
            .collect();
        gauge(
            &mut encoder,
            "apifw_jail_active_bans",
            "Bans made by each jail that are still in force.",
            &active,
        )?;
        if let Some(program) = shared.program {
            // Counted only while the kernel's BPF statistics are on: rate(run time) / rate(runs)
            // is the program's cost per packet over any window.
            counter(
                &mut encoder,
                "apifw_program_runs",
                "Runs of the XDP program (packets) the kernel's BPF statistics counted.",
                &[(Vec::new(), program.runs)],
            )?;
            counter(
                &mut encoder,
                "apifw_program_run_time_seconds",
                "Time the XDP program ran, as the kernel's BPF statistics counted it.",
                &[(Vec::new(), program.run_time_ns as f64 / 1e9)],
            )?;
            gauge(
                &mut encoder,
                "apifw_program_bpf_stats_enabled",
                "1 when kernel.bpf_stats_enabled is on, so the two program counters move.",
                &[(Vec::new(), i64::from(program.stats_enabled))],
            )?;
            if let Some(ns) = program.ns_per_packet() {
                gauge(
                    &mut encoder,
                    "apifw_program_seconds_per_packet",
                    "The XDP program's mean time per packet over all it counted.",
                    &[(Vec::new(), ns / 1e9)],
                )?;
            }
        }
        if let Some(crowdsec) = &shared.crowdsec {
            gauge(
                &mut encoder,
                "apifw_crowdsec_decisions",
                "Hosts and ranges banned by the CrowdSec LAPI's decisions.",
                &[(Vec::new(), crowdsec.held as i64)],
            )?;
            counter(
                &mut encoder,
                "apifw_crowdsec_syncs",
                "Answers of the CrowdSec decision stream applied.",
                &[(Vec::new(), crowdsec.syncs)],
            )?;
            if let Some(at) = crowdsec.last_sync_unix {
                gauge(
                    &mut encoder,
                    "apifw_crowdsec_last_sync_timestamp_seconds",
                    "When the last answer of the CrowdSec decision stream was applied.",
                    &[(Vec::new(), at as i64)],
                )?;
            }
            let errors: Vec<_> = crowdsec
                .errors
                .iter()
                .map(|(kind, n)| (vec![("kind", (*kind).to_owned())], *n))
                .collect();
            counter(
                &mut encoder,
                "apifw_crowdsec_sync_errors",
                "Failed CrowdSec syncs by kind; the bans in force stay.",
                &errors,
            )?;
            let skipped: Vec<_> = crowdsec
                .skipped
                .iter()
                .map(|(reason, n)| (vec![("reason", (*reason).to_owned())], *n))
                .collect();
            counter(
                &mut encoder,
                "apifw_crowdsec_skipped_decisions",
                "CrowdSec decisions not enforced, by reason.",
                &skipped,
            )?;
            if let Some(push) = &crowdsec.push {
                counter(
                    &mut encoder,
                    "apifw_crowdsec_pushed",
                    "This host's bans the CrowdSec LAPI took as alerts.",
                    &[(Vec::new(), push.pushed)],
                )?;
                gauge(
                    &mut encoder,
                    "apifw_crowdsec_push_queue",
                    "This host's bans waiting to be pushed to the CrowdSec LAPI.",
                    &[(Vec::new(), push.queued as i64)],
                )?;
                let errors: Vec<_> = push
                    .errors
                    .iter()
                    .map(|(kind, n)| (vec![("kind", (*kind).to_owned())], *n))
                    .collect();
                counter(
                    &mut encoder,
                    "apifw_crowdsec_push_errors",
                    "Failed pushes to the CrowdSec LAPI by kind; the bans stay queued.",
                    &errors,
                )?;
                let dropped: Vec<_> = push
                    .dropped
                    .iter()
                    .map(|(reason, n)| (vec![("reason", (*reason).to_owned())], *n))
                    .collect();
                counter(
                    &mut encoder,
                    "apifw_crowdsec_push_dropped",
                    "This host's bans not pushed to the CrowdSec LAPI, by reason.",
                    &dropped,
                )?;
            }
        }
        gauge(
            &mut encoder,
            "apifw_policy_version",
            "Version of the policy in force (bumped by every change).",
            &[(Vec::new(), shared.policy_version as i64)],
        )?;
        gauge(
            &mut encoder,
            "apifw_build_info",
            "apifw build; the value is always 1.",
            &[(
                vec![("version", env!("CARGO_PKG_VERSION").to_owned())],
                1i64,
            )],
        )?;
        Ok(())
    }
}

impl Exporter {
    /// An exporter of the maps pinned under `layout`.
    pub fn new(layout: PinLayout) -> Self {
        Self {
            layout,
            shared: Arc::new(Mutex::new(Shared::default())),
        }
    }

    /// The exposition text of one scrape.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.clone()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        Ok(text)
    }
}

/// The exposition in the classic Prometheus text format (0.0.4) for clients that do not ask for
/// OpenMetrics (curl, `promtool check metrics` up to Prometheus 2.x).
///
/// prometheus-client writes OpenMetrics only. The two formats differ here in one respect: an
/// OpenMetrics counter family `x` has samples `x_total`, while the classic format names the
/// family after its samples. So the HELP and TYPE lines of counters get the `_total` suffix,
/// empty label sets are dropped, and the `# EOF` marker goes; sample lines are unchanged.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let rewritten = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match rewritten {
            Some(line) => out.push_str(&line),
            None => out.push_str(&line.replacen("{} ", " ", 1)),
        }
        out.push('\n');
    }
    out
}

/// Serves `/metrics` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, exporter: Exporter) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                warn!(%err, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let exporter = exporter.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<_>| {
                let exporter = exporter.clone();
                async move {
                    let openmetrics = request
                        .headers()
                        .get(hyper::header::ACCEPT)
                        .and_then(|accept| accept.to_str().ok())
                        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
                    let response =
                        if request.method() == Method::GET && request.uri().path() == "/metrics" {
                            // Reading the maps blocks; keep it off the async threads.
                            match tokio::task::spawn_blocking(move || exporter.render()).await {
                            Ok(Ok(text)) if openmetrics => Response::builder()
                                .header(
                                    hyper::header::CONTENT_TYPE,
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )
                                .body(Full::new(Bytes::from(text))),
                            Ok(Ok(text)) => Response::builder()
                                .header(
                                    hyper::header::CONTENT_TYPE,
                                    "text/plain; version=0.0.4; charset=utf-8",
                                )
                                .body(Full::new(Bytes::from(classic_text(&text)))),
                            _ => Response::builder()
                                .status(StatusCode::INTERNAL_SERVER_ERROR)
                                .body(Full::new(Bytes::from("cannot encode metrics\n"))),
                        }
                        } else {
                            Response::builder()
                                .status(StatusCode::NOT_FOUND)
                                .body(Full::new(Bytes::from("apifw serves /metrics only\n")))
                        };
                    Ok::<_, std::convert::Infallible>(response.unwrap_or_default())
                }
            });
            if let Err(err) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, %err, "metrics connection ended with an error");
            }
        });
    }
}

/// Binds the metrics listener.
pub async fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address).await
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn classic_text_names_counter_families_after_their_samples() {
        let openmetrics = "# HELP apifw_packets Packets.\n# TYPE apifw_packets counter\n\
            apifw_packets_total{action=\"drop\"} 3\n# HELP apifw_events Events.\n\
            # TYPE apifw_events counter\napifw_events_total{} 0\n# HELP apifw_bans Bans.\n\
            # TYPE apifw_bans gauge\napifw_bans{kind=\"host\"} 1\n# EOF\n";
        assert_eq!(
            classic_text(openmetrics),
            "# HELP apifw_packets_total Packets.\n# TYPE apifw_packets_total counter\n\
             apifw_packets_total{action=\"drop\"} 3\n# HELP apifw_events_total Events.\n\
             # TYPE apifw_events_total counter\napifw_events_total 0\n# HELP apifw_bans Bans.\n\
             # TYPE apifw_bans gauge\napifw_bans{kind=\"host\"} 1\n"
        );
    }

    /// Bans by kind and origin, read from a pinned ban map (root: a map pinned on bpffs).
    #[test]
    fn bans_are_exported_by_kind_and_origin() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: creating BPF maps needs root");
            return;
        }
        let root = PathBuf::from(format!(
            "/sys/fs/bpf/apifw-unit-metrics-{}",
            std::process::id()
        ));
        let layout = PinLayout::new(&root);
        std::fs::create_dir_all(layout.maps_dir()).expect("pin directory on bpffs");
        let mut bans: BpfHashMap<MapData, BanKey, BanEntry> =
            BpfHashMap::create(16, 0).expect("create the ban map");
        let now = crate::dataplane::bans::monotonic_ns().expect("clock");
        let hour = 3_600_000_000_000;
        for (cidr, rule, kind) in [
            ("203.0.113.1/32", 0, firewall_common::rules::BAN_HOST),
            (
                "203.0.113.2/32",
                CROWDSEC_BAN_RULE,
                firewall_common::rules::BAN_HOST,
            ),
            (
                "203.0.113.3/32",
                CROWDSEC_BAN_RULE,
                firewall_common::rules::BAN_HOST,
            ),
            ("198.51.100.0/24", MANUAL_BAN_RULE, BAN_SUBNET),
        ] {
            let key = crate::engine::ban_key(&cidr.parse().expect("CIDR"));
            bans.insert(key, BanEntry::new(now, hour, rule, kind), 0)
                .expect("insert");
        }
        bans.pin(layout.map(map_names::BANS)).expect("pin");
        let text = classic_text(&Exporter::new(layout).render().expect("render"));
        let _ = std::fs::remove_dir_all(&root);
        for line in [
            "apifw_bans{kind=\"host\",origin=\"rule\"} 1",
            "apifw_bans{kind=\"host\",origin=\"crowdsec\"} 2",
            "apifw_bans{kind=\"host\",origin=\"manual\"} 0",
            "apifw_bans{kind=\"subnet\",origin=\"manual\"} 1",
            "apifw_bans{kind=\"subnet\",origin=\"crowdsec\"} 0",
            "apifw_bans{kind=\"subnet\",origin=\"rule\"} 0",
        ] {
            assert!(
                text.lines().any(|found| found == line),
                "{line} in:\n{text}"
            );
        }
    }

    #[test]
    fn the_crowdsec_link_is_exported_when_the_policy_has_one() {
        // Nothing is pinned there: only the daemon-side values are exported.
        let exporter = Exporter::new(PinLayout::new(std::path::Path::new("/nonexistent")));
        let text = exporter.render().expect("render");
        assert!(!text.contains("apifw_crowdsec"), "{text}");
        exporter.shared.lock().expect("shared").crowdsec = Some(crate::engine::CrowdsecMetrics {
            held: 3,
            syncs: 7,
            last_sync_unix: Some(1_700_000_000),
            errors: [("timeout", 2), ("host_bits", 1)].into(),
            skipped: [("not_ban", 4), ("allowlisted", 1)].into(),
            push: None,
        });
        let text = classic_text(&exporter.render().expect("render"));
        for line in [
            "apifw_crowdsec_decisions 3",
            "apifw_crowdsec_syncs_total 7",
            "apifw_crowdsec_last_sync_timestamp_seconds 1700000000",
            "apifw_crowdsec_sync_errors_total{kind=\"timeout\"} 2",
            "apifw_crowdsec_sync_errors_total{kind=\"host_bits\"} 1",
            "apifw_crowdsec_skipped_decisions_total{reason=\"not_ban\"} 4",
            "apifw_crowdsec_skipped_decisions_total{reason=\"allowlisted\"} 1",
        ] {
            assert!(
                text.lines().any(|found| found == line),
                "{line} in:\n{text}"
            );
        }
        assert!(
            !text.contains("apifw_crowdsec_push"),
            "no credentials, no push side"
        );
        if let Some(crowdsec) = &mut exporter.shared.lock().expect("shared").crowdsec {
            crowdsec.push = Some(crate::engine::CrowdsecPushMetrics {
                pushed: 12,
                queued: 3,
                errors: [("connect", 2), ("forbidden", 1)].into(),
                dropped: [("queue_full", 5)].into(),
            });
        }
        let text = classic_text(&exporter.render().expect("render"));
        for line in [
            "apifw_crowdsec_pushed_total 12",
            "apifw_crowdsec_push_queue 3",
            "apifw_crowdsec_push_errors_total{kind=\"connect\"} 2",
            "apifw_crowdsec_push_errors_total{kind=\"forbidden\"} 1",
            "apifw_crowdsec_push_dropped_total{reason=\"queue_full\"} 5",
        ] {
            assert!(
                text.lines().any(|found| found == line),
                "{line} in:\n{text}"
            );
        }
    }
}
