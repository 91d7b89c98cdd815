//! The second attacker: the same SYN flood, sent by the in-kernel generator of the flood
//! benchmark (`apifw_flood_gen` in live-frames mode, `XDP_TX` out of the router's end of the
//! server's link), so that the frames reach the server's veth as XDP frames.
//!
//! That is how a NIC driver hands frames to native XDP: from its receive ring, before any socket
//! buffer exists. Frames written with an `AF_PACKET` socket ([`super::synflood`]) are socket
//! buffers already, so native XDP on the server's veth runs on a copy of each and saves much less
//! than it would on a NIC. Measuring both shows what the veth's skb path costs and what XDP
//! saves where it runs first.
//!
//! The generator rewrites the template SYN's source (and the IPv4 and TCP checksums) with a
//! permutation of 198.18.0.0/15: each of its 131,072 addresses once per 131,072 frames. To an
//! IPv6 target it sends SYNs from 2001:db8:XXXX:XXXX::1, bits 32..63 a 32-bit permutation:
//! every frame a new source (and a new /64) for 2^32 frames. A flood at a set rate is thinned
//! in the generator: it sends one burst of 64 frames in N and drops the rest.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Context as _;

use super::synflood::{Target, syn_frame};
use crate::{generator::Generator, netns::Netns};

/// How long each generator call floods before the stop flag is checked again.
const CHUNK: Duration = Duration::from_millis(100);
/// Source bits the generator varies: all of 198.18.0.0/15.
const SOURCE_BITS: u32 = 17;

/// A running flood; stopped on drop.
pub struct XdpSynFlood {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<u64>>>,
}

impl XdpSynFlood {
    /// Starts flooding `target` (its `interface` in `netns`) with `generator`, which stays busy
    /// until the flood stops, at `rate` frames per second or as fast as its CPU goes.
    pub fn start(
        generator: &Arc<Mutex<Generator>>,
        netns: &Netns,
        target: &Target,
        rate: Option<f64>,
    ) -> anyhow::Result<Self> {
        let ifindex = netns.enter({
            let name = target.interface.clone();
            move || nix::net::if_::if_nametoindex(name.as_str())
        })?;
        // The generator replaces the source; the rest of the template is the socket flood's.
        let source = match target.dest {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x8000, 0, 0, 0, 0, 1)),
        };
        let frame = syn_frame(target, source, 40_000, 0x1234_5678, 1)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, generator, netns) = (stop.clone(), generator.clone(), netns.path());
            std::thread::spawn(move || {
                let generator = generator
                    .lock()
                    .map_err(|_| anyhow::anyhow!("the generator's lock is poisoned"))?;
                let mut frames = 0u64;
                // Thinning for `rate`, corrected after every chunk from the rate at which the
                // generator ran frames through its program in the last one.
                let mut send_every = 1u32;
                while !stop.load(Ordering::Relaxed) {
                    let sent = generator
                        .flood_thinned(
                            netns.clone(),
                            ifindex,
                            &frame,
                            SOURCE_BITS,
                            CHUNK,
                            send_every,
                        )
                        .context("XDP flood")?;
                    frames += sent.frames / u64::from(send_every);
                    if let Some(rate) = rate {
                        let runs_per_second = sent.frames as f64 / sent.seconds.max(1e-9);
                        send_every = (runs_per_second / rate).round().clamp(1.0, 1e6) as u32;
                    }
                }
                Ok(frames)
            })
        };
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the flood; returns the frames the generator sent.
    pub fn stop(mut self) -> anyhow::Result<u64> {
        self.finish()
    }

    fn finish(&mut self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("the XDP flood thread panicked"))?,
            None => Ok(0),
        }
    }
}

impl Drop for XdpSynFlood {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
