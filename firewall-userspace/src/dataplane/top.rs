//! The offender view behind `apifw top`: the sources and subnets seen most in drop events over
//! the last seconds, with their rates. Events are capped in the kernel, so under a flood they
//! are a sample of the drops; heavy hitters still dominate the sample in proportion.

use std::collections::HashMap;

use firewall_common::{Reason, events::DropEvent};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Seconds the rates are averaged over.
pub const WINDOW_SECS: u64 = 10;
/// Sources and subnets remembered at most; the least active are forgotten first.
const CAPACITY: usize = 8192;

/// One offender.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Offender {
    /// The source (/32, /128) or its subnet (/24, /64).
    pub prefix: IpNet,
    /// Events seen since the daemon started.
    pub events: u64,
    /// Events per second over the window.
    pub rate: f64,
    /// Reason of the latest event.
    pub last_reason: String,
}

/// `GET /v1/top`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TopView {
    /// The averaging window.
    pub window_secs: u64,
    /// Events per second over the window, all sources.
    pub events_per_sec: f64,
    /// Top sources by rate.
    pub sources: Vec<Offender>,
    /// Top subnets by rate.
    pub subnets: Vec<Offender>,
}

#[derive(Clone, Debug)]
struct Tally {
    events: u64,
    /// Events per second, the slot of second `s` at `s % WINDOW_SECS`.
    seconds: [u32; WINDOW_SECS as usize],
    /// The second the latest event fell in.
    last_second: u64,
    last_reason: Reason,
}

impl Tally {
    fn new() -> Self {
        Self {
            events: 0,
            seconds: [0; WINDOW_SECS as usize],
            last_second: 0,
            last_reason: Reason::Default,
        }
    }

    /// Clears the slots of seconds between the last event and `second`.
    fn advance(&mut self, second: u64) {
        if second > self.last_second {
            let stale = (second - self.last_second).min(WINDOW_SECS);
            for step in 1..=stale {
                self.seconds[((self.last_second + step) % WINDOW_SECS) as usize] = 0;
            }
            self.last_second = second;
        }
    }

    fn rate(&self, second: u64) -> f64 {
        if second >= self.last_second + WINDOW_SECS {
            return 0.0;
        }
        let mut copy = self.clone();
        copy.advance(second);
        copy.seconds.iter().map(|n| f64::from(*n)).sum::<f64>() / WINDOW_SECS as f64
    }
}

/// Tallies of sources and subnets.
#[derive(Debug)]
pub struct TopTracker {
    sources: HashMap<IpNet, Tally>,
    subnets: HashMap<IpNet, Tally>,
    all: Tally,
    size: usize,
}

fn reason_of(code: u8) -> Reason {
    Reason::ALL
        .iter()
        .copied()
        .find(|reason| *reason as u8 == code)
        .unwrap_or(Reason::Default)
}

/// The source address of an event, if it had one.
pub fn source_of(event: &DropEvent) -> Option<std::net::IpAddr> {
    match event.family {
        4 => Some(std::net::IpAddr::from([
            event.addr[0],
            event.addr[1],
            event.addr[2],
            event.addr[3],
        ])),
        6 => Some(std::net::IpAddr::from(event.addr)),
        _ => None,
    }
}

fn record_in(map: &mut HashMap<IpNet, Tally>, key: IpNet, second: u64, reason: Reason) {
    if !map.contains_key(&key) && map.len() >= CAPACITY {
        // Forget the quietest: O(n) but only when a new offender arrives at capacity.
        if let Some(quietest) = map
            .iter()
            .min_by(|a, b| a.1.rate(second).total_cmp(&b.1.rate(second)))
            .map(|(key, _)| *key)
        {
            map.remove(&quietest);
        }
    }
    let tally = map.entry(key).or_insert_with(Tally::new);
    tally.advance(second);
    tally.events += 1;
    tally.seconds[(second % WINDOW_SECS) as usize] += 1;
    tally.last_reason = reason;
}

impl TopTracker {
    /// A tracker that reports the `size` top sources and subnets.
    pub fn new(size: usize) -> Self {
        Self {
            sources: HashMap::new(),
            subnets: HashMap::new(),
            all: Tally::new(),
            size,
        }
    }

    /// Counts one event at `second` (any monotonic seconds).
    pub fn record(&mut self, event: &DropEvent, second: u64) {
        let reason = reason_of(event.reason);
        self.all.advance(second);
        self.all.events += 1;
        self.all.seconds[(second % WINDOW_SECS) as usize] += 1;
        let Some(addr) = source_of(event) else {
            return;
        };
        let host = IpNet::from(addr);
        let subnet = match addr {
            std::net::IpAddr::V4(_) => IpNet::new(addr, 24),
            std::net::IpAddr::V6(_) => IpNet::new(addr, 64),
        }
        .map(|net| net.trunc())
        .unwrap_or(host);
        record_in(&mut self.sources, host, second, reason);
        record_in(&mut self.subnets, subnet, second, reason);
    }

    /// The view at `second`.
    pub fn view(&self, second: u64) -> TopView {
        let top = |map: &HashMap<IpNet, Tally>| {
            let mut rows: Vec<Offender> = map
                .iter()
                .map(|(prefix, tally)| Offender {
                    prefix: *prefix,
                    events: tally.events,
                    rate: tally.rate(second),
                    last_reason: tally.last_reason.name().to_owned(),
                })
                .collect();
            rows.sort_by(|a, b| b.rate.total_cmp(&a.rate).then(b.events.cmp(&a.events)));
            rows.truncate(self.size);
            rows
        };
        TopView {
            window_secs: WINDOW_SECS,
            events_per_sec: self.all.rate(second),
            sources: top(&self.sources),
            subnets: top(&self.subnets),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(addr: [u8; 4]) -> DropEvent {
        let mut event = DropEvent {
            family: 4,
            reason: Reason::Blocklist as u8,
            ..DropEvent::default()
        };
        event.addr[..4].copy_from_slice(&addr);
        event
    }

    #[test]
    fn ranks_by_rate_over_the_window_and_groups_subnets() {
        let mut top = TopTracker::new(2);
        for second in 0..10 {
            for _ in 0..5 {
                top.record(&event([198, 51, 100, 1]), second);
            }
            top.record(&event([198, 51, 100, 2]), second);
            top.record(&event([203, 0, 113, 9]), second);
        }
        let view = top.view(9);
        assert_eq!(view.sources.len(), 2);
        assert_eq!(view.sources[0].prefix.to_string(), "198.51.100.1/32");
        assert!((view.sources[0].rate - 5.0).abs() < 1e-9, "{view:?}");
        assert_eq!(view.subnets[0].prefix.to_string(), "198.51.100.0/24");
        assert!((view.subnets[0].rate - 6.0).abs() < 1e-9, "{view:?}");
        assert!((view.events_per_sec - 7.0).abs() < 1e-9, "{view:?}");
        assert_eq!(view.sources[0].last_reason, "blocklist");
        // Ten quiet seconds later the rates are gone, the totals stay.
        let later = top.view(25);
        assert_eq!(later.sources[0].rate, 0.0);
        assert_eq!(later.sources.iter().map(|o| o.events).max(), Some(50));
    }
}
