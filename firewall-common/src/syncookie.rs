//! SYN cookies in XDP (issue #15): which TCP packets of a rule take the cookie path, and the
//! per-port SYN-rate detector of `syn_cookies = "auto"`.
//!
//! A random-source SYN flood is answered by the XDP program itself: each SYN to a port in cookie
//! mode gets a SYN-ACK whose sequence number is a cookie (`XDP_TX`), and no state of any kind
//! is kept for it. The cookie is the kernel's own: `bpf_tcp_gen_syncookie` on the listener that
//! `bpf_skc_lookup_tcp` finds, so the kernel validates the returning ACK itself
//! (`cookie_v4_check`/`cookie_v6_check`) and creates the connection as if it had sent the cookie.
//! That helper gives a cookie only when the kernel would send one (the listener's SYN queue is
//! full, or `net.ipv4.tcp_syncookies = 2`), and marks the listener as overflowed, which is what
//! makes the kernel accept cookie ACKs for the next two minutes. Until the queue fills, SYNs
//! pass to the kernel as always: a flood fills it within one backlog of spoofed SYNs, and from
//! then on XDP answers. No sysctl, no iptables rule, no conntrack.
//!
//! ACKs to a port in cookie mode from a source that has not proved its address (no per-source
//! state under the rule) take the same program: a socket lookup tells an established flow
//! (passed, and its source gets state) from an ACK to the listener, whose cookie is checked
//! with `bpf_tcp_check_syncookie`: valid, passed (the source is proven and gets state); invalid,
//! dropped in XDP.
//!
//! The detector ([`SynDetector`]) is per port and per CPU, like the per-CPU SYN meters of
//! commercial SYN defenders, with their three states: ready (cookies off), active (a window
//! of [`WINDOW_NS`] reached [`ON_SYNS`] SYNs on this CPU), grace (windows fell under
//! [`OFF_SYNS`]; cookies stay on until [`GRACE_WINDOWS`] windows passed without the flood
//! coming back). The reference model and the kernel share these functions.

/// Rule flag: `syn_cookies = "auto"`: cookie mode when this CPU's detector of the port says so.
pub const RULE_SYN_COOKIES_AUTO: u32 = 4;
/// Rule flag: `syn_cookies = "always"`: every SYN to the rule's TCP ports takes the cookie path.
pub const RULE_SYN_COOKIES_ALWAYS: u32 = 8;

/// Detector slots per CPU, by destination port modulo this; a power of two. Two cookie ports
/// congruent modulo 4096 take the slot in turn (the newer port's SYN resets it).
pub const DETECTOR_SLOTS: u32 = 4096;
/// Detector windows: 2^27 ns, about 134 ms.
pub const WINDOW_SHIFT: u32 = 27;
/// One window, in ns.
pub const WINDOW_NS: u64 = 1 << WINDOW_SHIFT;
/// SYNs to one port within one window on one CPU that switch cookie mode on: about 950 SYNs
/// per second on one CPU, far above what keep-alive API clients open, far below a flood.
pub const ON_SYNS: u32 = 128;
/// A window with fewer SYNs than this (a quarter of [`ON_SYNS`]) is quiet: hysteresis, so a
/// flood hovering at the threshold does not flap the mode.
pub const OFF_SYNS: u32 = 32;
/// Quiet windows (about 10 s) before cookie mode switches off.
pub const GRACE_WINDOWS: u32 = 75;

/// Windows (about two minutes) during which the kernel takes the cookies of a listener after
/// its last one: ACKs are checked in XDP only within them. Before the first cookie no cookie
/// can be good, and an ACK that belongs to no connection goes to the kernel, which resets it
/// (the kernel's helper cannot tell "bad cookie" from "no cookies sent": both are -ENOENT).
pub const COOKIE_VALID_WINDOWS: u32 = 894;

/// The value of a port's slot in the shared array `APIFW_COOKIE_SENT` when a cookie for it went
/// out at `now_ns`: the port above the window plus one (0: no cookie yet). Shared by all CPUs
/// (an ACK may reach another CPU than its SYN) and written once per window, not per cookie.
#[inline(always)]
pub const fn cookie_sent(port: u16, now_ns: u64) -> u64 {
    (port as u64) << 32 | window_of(now_ns).wrapping_add(1) as u64
}

/// Whether the slot value `sent` ([`cookie_sent`]) says a cookie for `port` went out within
/// [`COOKIE_VALID_WINDOWS`] before `now_ns`.
#[inline(always)]
pub const fn cookie_recent(sent: u64, port: u16, now_ns: u64) -> bool {
    let window = sent as u32;
    (sent >> 32) as u16 == port
        && window != 0
        && window_of(now_ns).wrapping_add(1).wrapping_sub(window) <= COOKIE_VALID_WINDOWS
}

/// Detector state: cookies off.
pub const MODE_READY: u32 = 0;
/// Detector state: cookies on, the flood is going on.
pub const MODE_ACTIVE: u32 = 1;
/// Detector state: cookies on, the flood seems over.
pub const MODE_GRACE: u32 = 2;

/// One port's SYN meter on one CPU (a slot of the per-CPU array `APIFW_SYN_DETECTOR`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynDetector {
    /// The port this slot meters (slots are shared modulo [`DETECTOR_SLOTS`]).
    pub port: u32,
    /// [`MODE_READY`], [`MODE_ACTIVE`] or [`MODE_GRACE`].
    pub mode: u32,
    /// The window (`now >> WINDOW_SHIFT`, truncated) `syns` counts.
    pub window: u32,
    /// SYNs in `window`.
    pub syns: u32,
    /// In grace: the first quiet window.
    pub quiet_since: u32,
    /// Times this CPU switched the port's cookie mode on or off.
    pub switches: u32,
}

/// What one SYN did to a detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Metered {
    /// Whether the SYN takes the cookie path.
    pub cookies: bool,
    /// Whether this SYN switched the mode on (1), off (2) or neither (0).
    pub switched: u32,
}

/// [`Metered::switched`]: cookie mode went on.
pub const SWITCHED_ON: u32 = 1;
/// [`Metered::switched`]: cookie mode went off.
pub const SWITCHED_OFF: u32 = 2;

/// The detector slot of `port`.
#[inline(always)]
pub const fn detector_slot(port: u16) -> u32 {
    port as u32 & (DETECTOR_SLOTS - 1)
}

#[inline(always)]
pub const fn window_of(now_ns: u64) -> u32 {
    (now_ns >> WINDOW_SHIFT) as u32
}

impl SynDetector {
    /// Counts a SYN to `port` at `now_ns`: whether it takes the cookie path, and whether it
    /// switched the mode.
    #[inline(always)]
    pub fn meter(&mut self, port: u16, now_ns: u64) -> Metered {
        let window = window_of(now_ns);
        if self.port != u32::from(port) {
            // Another port's slot (or an empty one): this port starts ready.
            *self = SynDetector {
                port: u32::from(port),
                mode: MODE_READY,
                window,
                syns: 0,
                quiet_since: 0,
                switches: self.switches,
            };
        }
        let mut switched = 0;
        if window != self.window {
            // The window `self.window` is over: with `syns` SYNs, and every window between it
            // and this one had none.
            let skipped = window.wrapping_sub(self.window) > 1;
            let quiet = self.syns < OFF_SYNS || skipped;
            if self.mode == MODE_ACTIVE && quiet {
                self.mode = MODE_GRACE;
                // The first quiet window: the one just over, or the one after it.
                self.quiet_since = if self.syns < OFF_SYNS {
                    self.window
                } else {
                    self.window.wrapping_add(1)
                };
            } else if self.mode == MODE_GRACE && !quiet {
                self.quiet_since = window;
            }
            if self.mode == MODE_GRACE && window.wrapping_sub(self.quiet_since) >= GRACE_WINDOWS {
                self.mode = MODE_READY;
                self.switches = self.switches.wrapping_add(1);
                switched = SWITCHED_OFF;
            }
            self.window = window;
            self.syns = 0;
        }
        self.syns = self.syns.saturating_add(1);
        if self.syns >= ON_SYNS && self.mode != MODE_ACTIVE {
            if self.mode == MODE_READY {
                self.switches = self.switches.wrapping_add(1);
                switched = SWITCHED_ON;
            }
            self.mode = MODE_ACTIVE;
        }
        Metered {
            cookies: self.mode != MODE_READY,
            switched,
        }
    }

    /// Whether `port` is in cookie mode at `now_ns` by this slot, without counting anything:
    /// for ACKs, and for what `apifw status` shows. A flood that stopped dead leaves the slot
    /// active until the next SYN, so the time since the last window counts as quiet here.
    #[inline(always)]
    pub fn cookies_on(&self, port: u16, now_ns: u64) -> bool {
        if self.port != u32::from(port) || self.mode == MODE_READY {
            return false;
        }
        let window = window_of(now_ns);
        let quiet_since = if self.mode == MODE_GRACE {
            self.quiet_since
        } else {
            // Active: quiet from the window after the last one with SYNs at the latest.
            self.window.wrapping_add(1)
        };
        // A window from the future (another CPU's clock read a little later) is no quiet time.
        let since = window.wrapping_sub(quiet_since);
        !(GRACE_WINDOWS..=u32::MAX / 2).contains(&since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORT: u16 = 8080;

    /// `count` SYNs spread evenly over the window starting at `start_ns`.
    fn syns(detector: &mut SynDetector, start_ns: u64, count: u32) -> (bool, u32) {
        let mut cookies = false;
        let mut switched = 0;
        for i in 0..count {
            let at = start_ns + WINDOW_NS * u64::from(i) / u64::from(count.max(1));
            let metered = detector.meter(PORT, at);
            cookies = metered.cookies;
            switched |= metered.switched;
        }
        (cookies, switched)
    }

    #[test]
    fn a_flood_switches_on_at_the_threshold_and_not_before() {
        let mut detector = SynDetector::default();
        let start = 1000 * WINDOW_NS;
        for i in 0..ON_SYNS - 1 {
            let metered = detector.meter(PORT, start + u64::from(i));
            assert!(!metered.cookies, "SYN {i}");
            assert_eq!(metered.switched, 0);
        }
        let metered = detector.meter(PORT, start + 200);
        assert_eq!(
            metered,
            Metered {
                cookies: true,
                switched: SWITCHED_ON
            }
        );
        assert_eq!(detector.mode, MODE_ACTIVE);
        assert_eq!(detector.switches, 1);
    }

    #[test]
    fn traffic_under_the_threshold_never_switches() {
        let mut detector = SynDetector::default();
        for window in 0..1000 {
            let (cookies, switched) = syns(&mut detector, (5000 + window) * WINDOW_NS, ON_SYNS - 1);
            assert!(!cookies);
            assert_eq!(switched, 0);
        }
        assert_eq!(detector.switches, 0);
    }

    #[test]
    fn cookies_stay_on_through_the_grace_and_switch_off_after_it() {
        let mut detector = SynDetector::default();
        let start = 10_000 * WINDOW_NS;
        let (cookies, switched) = syns(&mut detector, start, 1000);
        assert!(cookies);
        assert_eq!(switched, SWITCHED_ON);
        // Hysteresis: a window between the thresholds keeps the mode active.
        let (cookies, _) = syns(&mut detector, start + WINDOW_NS, OFF_SYNS);
        assert!(cookies);
        let (_, _) = syns(&mut detector, start + 2 * WINDOW_NS, OFF_SYNS);
        assert_eq!(detector.mode, MODE_ACTIVE);
        // Quiet windows: grace, cookies still on.
        for window in 3..3 + u64::from(GRACE_WINDOWS) {
            let (cookies, switched) = syns(&mut detector, start + window * WINDOW_NS, 1);
            assert!(cookies, "window {window}");
            assert_eq!(switched, 0, "window {window}");
        }
        assert_eq!(detector.mode, MODE_GRACE);
        // The first window after the grace: off.
        let metered = detector.meter(PORT, start + (4 + u64::from(GRACE_WINDOWS)) * WINDOW_NS);
        assert_eq!(
            metered,
            Metered {
                cookies: false,
                switched: SWITCHED_OFF
            }
        );
        assert_eq!(detector.switches, 2);
    }

    #[test]
    fn a_flood_that_returns_during_the_grace_keeps_cookies_without_a_switch() {
        let mut detector = SynDetector::default();
        let start = 20_000 * WINDOW_NS;
        syns(&mut detector, start, 1000);
        syns(&mut detector, start + 5 * WINDOW_NS, 1);
        assert_eq!(detector.mode, MODE_GRACE);
        let (cookies, switched) = syns(&mut detector, start + 6 * WINDOW_NS, 1000);
        assert!(cookies);
        assert_eq!(switched, 0);
        assert_eq!(detector.mode, MODE_ACTIVE);
        assert_eq!(detector.switches, 1);
    }

    #[test]
    fn a_flood_that_stopped_dead_reads_as_off_after_the_grace() {
        let mut detector = SynDetector::default();
        let start = 30_000 * WINDOW_NS;
        syns(&mut detector, start, 1000);
        assert!(detector.cookies_on(PORT, start + WINDOW_NS));
        let last_on = start + u64::from(GRACE_WINDOWS) * WINDOW_NS;
        assert!(detector.cookies_on(PORT, last_on));
        assert!(!detector.cookies_on(PORT, last_on + WINDOW_NS));
        // The next SYN, long after, finds the port ready and switches it off.
        let metered = detector.meter(PORT, start + 1000 * WINDOW_NS);
        assert!(!metered.cookies);
        assert_eq!(metered.switched, SWITCHED_OFF);
    }

    #[test]
    fn an_ack_is_checked_only_within_two_minutes_of_a_cookie() {
        let start = 50_000 * WINDOW_NS;
        assert!(!cookie_recent(0, PORT, start));
        let sent = cookie_sent(PORT, start);
        assert!(cookie_recent(sent, PORT, start));
        let last = start + u64::from(COOKIE_VALID_WINDOWS) * WINDOW_NS;
        assert!(cookie_recent(sent, PORT, last));
        assert!(!cookie_recent(sent, PORT, last + WINDOW_NS));
        assert!(!cookie_recent(sent, PORT + 1, start));
    }

    #[test]
    fn another_port_in_the_slot_starts_ready_and_the_first_reads_off() {
        let mut detector = SynDetector::default();
        let start = 40_000 * WINDOW_NS;
        syns(&mut detector, start, 1000);
        let other = PORT + DETECTOR_SLOTS as u16;
        assert_eq!(detector_slot(other), detector_slot(PORT));
        assert!(!detector.meter(other, start + 10).cookies);
        assert!(!detector.cookies_on(PORT, start + 20));
        assert_eq!(detector.port, u32::from(other));
    }
}
