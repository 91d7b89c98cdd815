//! The engine's behaviour without root or a kernel: an in-memory dataplane
//! ([`crate::dataplane::fake`]) and a clock the test moves. Each test checks what the kernel would
//! hold (the installed tables, the ban map), the state file and the audit log.

use std::sync::atomic::{AtomicU64, Ordering};

use firewall_common::prefix::{FLAG_ALLOW, FLAG_BLOCK};

use super::*;
use crate::{
    dataplane::{bans::BanError, fake::FakeDataplane},
    store::state::RuntimeState,
    test_dir::TempDir,
};

const SECOND_NS: u64 = 1_000_000_000;
/// A plausible Unix time for the tests (2023-11-14).
const START_UNIX: u64 = 1_700_000_000;

/// The policy the tests start from: one blocked network with an allowed host inside, and a jail
/// that takes abuse reports.
const POLICY: &str = r#"
interfaces = ["lo"]
[allow]
cidrs = ["203.0.113.7/32"]
[block]
cidrs = ["203.0.113.0/24"]
[limits]
max_v4_prefixes = 64
max_v6_prefixes = 64
max_tracked_sources = 64
max_tracked_subnets = 64
max_bans = 4
[metrics]
listen = "off"
[[jail]]
name = "reports"
max_retry = 2
find_time = "10m"
ban_time = "1h"
"#;

/// A clock the test moves: both the Unix and the monotonic clock advance together.
#[derive(Debug, Default)]
struct TestClock {
    unix: AtomicU64,
    monotonic_ns: AtomicU64,
}

impl TestClock {
    fn advance(&self, secs: u64) {
        self.unix.fetch_add(secs, Ordering::SeqCst);
        self.monotonic_ns
            .fetch_add(secs * SECOND_NS, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn unix_secs(&self) -> u64 {
        self.unix.load(Ordering::SeqCst)
    }

    fn monotonic_ns(&self) -> Result<u64, BanError> {
        Ok(self.monotonic_ns.load(Ordering::SeqCst))
    }
}

/// An engine over `kernel`, its policy, state file and audit log in `dir`.
fn engine(dir: &TempDir, kernel: &FakeDataplane, clock: &Arc<TestClock>) -> Engine {
    let policy_path = dir.join("apifw.toml");
    if !policy_path.exists() {
        std::fs::write(&policy_path, POLICY).expect("write policy");
    }
    let policy = Loaded::from_file(&policy_path)
        .expect("valid policy")
        .policy;
    let state_path = dir.join("apifw.state.json");
    let clock: Arc<dyn Clock> = Arc::clone(clock) as Arc<dyn Clock>;
    Engine::new(EngineParts {
        policy_path,
        overrides: Overrides::default(),
        feeds: read_feeds(&policy).expect("no feeds"),
        runtime: RuntimeState::load(&state_path).expect("state"),
        state_path,
        dataplane: Box::new(kernel.handle()),
        clock,
        audit: AuditLog::open(&dir.join("audit.log")).expect("audit log"),
        policy_top: 10,
        policy,
    })
    .expect("engine starts")
}

/// The content of `name` in `dir`, empty when it does not exist.
fn read(dir: &TempDir, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

fn clock() -> Arc<TestClock> {
    let clock = TestClock::default();
    clock.advance(START_UNIX);
    Arc::new(clock)
}

fn net(text: &str) -> IpNet {
    text.parse().expect("CIDR")
}

/// The list flags the installed tables give `addr`, as the XDP program would find them.
fn flags(kernel: &FakeDataplane, addr: &str) -> u32 {
    let tables = kernel.tables();
    let installed = tables.installed.as_ref().expect("a policy is installed");
    installed.tables.lookup(addr.parse().expect("address"))
}

/// `apifw block|allow add CIDR` as uid 0 would make it.
fn add(
    engine: &mut Engine,
    kind: ListKind,
    cidr: &str,
    meta: EntryMeta,
) -> Result<Changed, EngineError> {
    let action = match kind {
        ListKind::Block => "block.add",
        ListKind::Allow => "allow.add",
    };
    engine.list_add(kind, vec![net(cidr)], meta, "uid 0", (action, json!({})))
}

fn no_meta() -> EntryMeta {
    EntryMeta::default()
}

#[test]
fn a_runtime_block_reaches_the_kernel_the_state_file_and_the_audit_log_and_goes_again() {
    let dir = TempDir::new("block");
    let kernel = FakeDataplane::new(4);
    let mut engine = engine(&dir, &kernel, &clock());
    assert_eq!(flags(&kernel, "198.51.100.7"), 0);

    let changed = add(&mut engine, ListKind::Block, "198.51.100.7/32", no_meta()).expect("added");
    assert_eq!((changed.added, changed.policy_version), (1, 2));
    assert_eq!(flags(&kernel, "198.51.100.7"), FLAG_BLOCK);
    assert!(read(&dir, "apifw.state.json").contains("198.51.100.7/32"));
    assert!(read(&dir, "audit.log").contains("\"block.add\""));

    let removed = engine
        .list_del(ListKind::Block, vec![net("198.51.100.7/32")], "uid 0")
        .expect("removed");
    assert_eq!(removed.removed, 1);
    assert_eq!(flags(&kernel, "198.51.100.7"), 0);
    assert!(!read(&dir, "apifw.state.json").contains("198.51.100.7/32"));
    // The policy's own entries were untouched throughout.
    assert_eq!(flags(&kernel, "203.0.113.66"), FLAG_BLOCK);
    assert_eq!(flags(&kernel, "203.0.113.7") & FLAG_ALLOW, FLAG_ALLOW);
}

#[test]
fn a_runtime_entry_with_a_ttl_expires_on_the_tick_after_its_time() {
    let dir = TempDir::new("ttl");
    let kernel = FakeDataplane::new(4);
    let clock = clock();
    let mut engine = engine(&dir, &kernel, &clock);
    let meta = EntryMeta {
        ttl_secs: Some(60),
        comment: Some("for a minute".into()),
    };
    add(&mut engine, ListKind::Block, "198.51.100.0/24", meta).expect("added");

    clock.advance(59);
    engine.tick();
    assert_eq!(flags(&kernel, "198.51.100.9"), FLAG_BLOCK, "expired early");

    clock.advance(2);
    engine.tick();
    assert_eq!(
        flags(&kernel, "198.51.100.9"),
        0,
        "not expired after its TTL"
    );
    assert!(!read(&dir, "apifw.state.json").contains("198.51.100.0/24"));
    assert!(
        read(&dir, "audit.log").contains("expire"),
        "{}",
        read(&dir, "audit.log")
    );
}

#[test]
fn a_manual_ban_is_in_the_ban_map_until_it_expires_and_a_full_map_is_an_error() {
    let dir = TempDir::new("bans");
    let kernel = FakeDataplane::new(4);
    let clock = clock();
    let mut engine = engine(&dir, &kernel, &clock);
    engine
        .ban_add(vec![net("198.51.100.66/32")], 30, None, "uid 0")
        .expect("banned");
    let key = ban_key(&net("198.51.100.66/32"));
    let ban = kernel.tables().bans[&key];
    assert_eq!(ban.rule, MANUAL_BAN_RULE);
    assert_eq!(ban.expires_ns - ban.banned_at_ns, 30 * SECOND_NS);
    let listed = engine.bans().expect("bans");
    assert_eq!(listed.len(), 1);
    assert!(
        listed[0].reason.contains("manual ban by uid 0"),
        "{listed:?}"
    );

    // The map holds 4: a fifth ban is refused as full, and nothing of the request is kept.
    let many: Vec<IpNet> = (1..=4)
        .map(|host| net(&format!("192.0.2.{host}/32")))
        .collect();
    let err = engine
        .ban_add(many, 30, None, "uid 0")
        .expect_err("the ban map is full");
    assert!(matches!(err, EngineError::Full(_)), "{err:?}");

    clock.advance(31);
    engine.tick();
    assert!(
        !kernel.tables().bans.contains_key(&key),
        "an expired ban stayed in the map"
    );
    assert!(read(&dir, "audit.log").contains("\"ban.expire\""));
}

#[test]
fn an_invalid_reload_changes_nothing_and_is_reported() {
    let dir = TempDir::new("reload");
    let kernel = FakeDataplane::new(4);
    let mut engine = engine(&dir, &kernel, &clock());
    let installs = kernel.tables().installs;

    std::fs::write(
        dir.join("apifw.toml"),
        "[block]\ncidrs = [\"not a cidr\"]\n",
    )
    .expect("break the policy");
    let err = engine.reload("uid 0").expect_err("invalid policy");
    assert!(matches!(err, EngineError::Invalid(_)), "{err:?}");
    assert_eq!(
        kernel.tables().installs,
        installs,
        "a rejected reload installed"
    );
    assert_eq!(flags(&kernel, "203.0.113.66"), FLAG_BLOCK);
    let status = engine.status();
    assert_eq!((status.reloads, status.failed_reloads), (0, 1));
    assert!(status.last_reload_error.is_some());

    // Fixed: the reload goes through and the new list is enforced.
    std::fs::write(
        dir.join("apifw.toml"),
        POLICY.replace("203.0.113.0/24", "198.18.0.0/15"),
    )
    .expect("fix the policy");
    engine.reload("uid 0").expect("valid policy");
    assert_eq!(flags(&kernel, "198.18.0.1"), FLAG_BLOCK);
    assert_eq!(flags(&kernel, "203.0.113.66"), 0);
    assert_eq!(engine.status().reloads, 1);
}

#[test]
fn a_change_the_kernel_refuses_is_rolled_back_in_memory_and_on_disk() {
    let dir = TempDir::new("rollback");
    let kernel = FakeDataplane::new(4);
    let mut engine = engine(&dir, &kernel, &clock());
    add(&mut engine, ListKind::Allow, "192.0.2.10/32", no_meta())
        .expect("a first change, so that the state file exists");
    let state_before = read(&dir, "apifw.state.json");
    assert!(state_before.contains("192.0.2.10/32"));

    kernel.tables().refuse_next_install = true;
    let err = add(&mut engine, ListKind::Block, "198.51.100.7/32", no_meta())
        .expect_err("the kernel refused");
    assert!(matches!(err, EngineError::Failed(_)), "{err:?}");
    assert_eq!(flags(&kernel, "198.51.100.7"), 0);
    assert_eq!(
        read(&dir, "apifw.state.json"),
        state_before,
        "state file kept the change"
    );
    assert!(
        engine
            .list(ListKind::Block)
            .iter()
            .all(|row| row.cidr != net("198.51.100.7/32"))
    );
}

#[test]
fn runtime_changes_survive_a_restart_through_the_state_file() {
    let dir = TempDir::new("restart");
    let clock = clock();
    {
        let kernel = FakeDataplane::new(4);
        let mut first = engine(&dir, &kernel, &clock);
        add(&mut first, ListKind::Allow, "203.0.113.99/32", no_meta()).expect("allowed");
        first
            .ban_add(vec![net("198.51.100.66/32")], 3600, None, "uid 0")
            .expect("banned");
    }
    // A new daemon over a new (empty) kernel: everything comes back from the state file.
    let kernel = FakeDataplane::new(4);
    let _second = engine(&dir, &kernel, &clock);
    assert_eq!(flags(&kernel, "203.0.113.99") & FLAG_ALLOW, FLAG_ALLOW);
    assert!(
        kernel
            .tables()
            .bans
            .contains_key(&ban_key(&net("198.51.100.66/32")))
    );
}

#[test]
fn a_jail_bans_a_reported_source_but_never_an_allowlisted_one() {
    let dir = TempDir::new("jail");
    let kernel = FakeDataplane::new(4);
    let mut engine = engine(&dir, &kernel, &clock());
    let abuser: IpAddr = "198.51.100.23".parse().expect("address");
    let partner: IpAddr = "203.0.113.7".parse().expect("address");
    for source in [abuser, partner] {
        for _ in 0..2 {
            engine
                .report(source, "bad token", 1, Some("reports"), "uid 0")
                .expect("counted");
        }
    }
    let bans = kernel.tables().bans.clone();
    assert!(
        bans.contains_key(&ban_key(&IpNet::from(abuser))),
        "the abuser was not banned at max_retry"
    );
    assert!(
        !bans.contains_key(&ban_key(&IpNet::from(partner))),
        "an allowlisted source was banned"
    );
    assert_eq!(bans.len(), 1);
}

#[test]
fn status_and_the_metrics_carry_the_programs_run_statistics() {
    let dir = TempDir::new("runs");
    let kernel = FakeDataplane::new(4);
    let mut engine = engine(&dir, &kernel, &clock());
    assert_eq!(engine.status().program, None, "a kernel that cannot say");
    let runs = crate::dataplane::stats::ProgramRuns {
        runs: 1_000,
        run_time_ns: 150_000,
        stats_enabled: true,
    };
    kernel.tables().program_runs = Some(runs);
    assert_eq!(engine.status().program, Some(runs));
    assert_eq!(engine.shared().lock().expect("shared").program, None);
    engine.tick();
    assert_eq!(
        engine.shared().lock().expect("shared").program,
        Some(runs),
        "the tick publishes them for the metrics"
    );
}
