//! Unit tests of the parent module, in a file of their own to keep the module readable.

use super::*;

use crate::test_dir::TempDir;

fn net(text: &str) -> IpNet {
    text.parse().expect("valid CIDR")
}

fn entry(cidr: &str, expires_at: Option<u64>) -> ListEntry {
    ListEntry {
        cidr: net(cidr),
        expires_at,
        comment: None,
        added_at: 1_700_000_000,
        added_by: "uid 0".into(),
    }
}

fn ban(cidr: &str, expires_at: u64) -> BanRecord {
    BanRecord {
        cidr: net(cidr),
        expires_at,
        comment: Some("scraper".into()),
        added_at: 1_700_000_000,
        added_by: "uid 1000".into(),
    }
}

fn sample() -> RuntimeState {
    let mut state = RuntimeState::default();
    state.upsert(ListKind::Block, entry("2001:db8::/32", None));
    state.upsert(
        ListKind::Block,
        ListEntry {
            comment: Some("abuse ticket #42".into()),
            ..entry("203.0.113.0/24", Some(1_700_003_600))
        },
    );
    state.upsert(ListKind::Block, entry("10.0.0.0/8", None));
    state.upsert(ListKind::Allow, entry("192.0.2.7/32", Some(1_700_000_060)));
    state.upsert_ban(ban("198.51.100.9/32", 1_700_000_600));
    state
}

fn corrupt(text: &str) -> (usize, usize, String) {
    match RuntimeState::from_slice(Path::new("/x/y.state.json"), text.as_bytes()) {
        Err(err @ StateError::Corrupt { line, column, .. }) => (line, column, err.to_string()),
        other => panic!("expected a corrupt-file error for {text:?}, got {other:?}"),
    }
}

#[test]
fn round_trip_keeps_everything_sorted_and_pretty() {
    let dir = TempDir::new("round-trip");
    let path = dir.join("apifw.state.json");
    let state = sample();
    state.save(&path).expect("save");

    assert_eq!(RuntimeState::load(&path).expect("load"), state);
    assert_eq!(dir.names(), ["apifw.state.json"], "no temporary file left");
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let text = std::fs::read_to_string(&path).expect("read");
    let expected = r#"{
  "version": 1,
  "block": [
    {
      "cidr": "10.0.0.0/8",
      "added_at": 1700000000,
      "added_by": "uid 0"
    },
    {
      "cidr": "203.0.113.0/24",
      "expires_at": 1700003600,
      "comment": "abuse ticket #42",
      "added_at": 1700000000,
      "added_by": "uid 0"
    },
    {
      "cidr": "2001:db8::/32",
      "added_at": 1700000000,
      "added_by": "uid 0"
    }
  ],
  "allow": [
    {
      "cidr": "192.0.2.7/32",
      "expires_at": 1700000060,
      "added_at": 1700000000,
      "added_by": "uid 0"
    }
  ],
  "bans": [
    {
      "cidr": "198.51.100.9/32",
      "expires_at": 1700000600,
      "comment": "scraper",
      "added_at": 1700000000,
      "added_by": "uid 1000"
    }
  ]
}
"#;
    assert_eq!(text, expected);
}

#[test]
fn saving_again_replaces_the_file() {
    let dir = TempDir::new("overwrite");
    let path = dir.join("apifw.state.json");
    let mut state = sample();
    state.save(&path).expect("first save");
    state.remove(ListKind::Block, &net("10.0.0.0/8"));
    state.save(&path).expect("second save");
    assert_eq!(RuntimeState::load(&path).expect("load"), state);
    assert_eq!(dir.names(), ["apifw.state.json"]);
}

#[test]
fn missing_file_is_an_empty_state() {
    let dir = TempDir::new("missing");
    let state = RuntimeState::load(&dir.join("apifw.state.json")).expect("load");
    assert_eq!(state, RuntimeState::default());
    assert!(state.is_empty());
    assert_eq!(state.version, STATE_VERSION);
    assert_eq!(state.list(ListKind::Block).len(), 0);
    assert_eq!(state.bans().len(), 0);
}

#[test]
fn empty_state_saves_a_loadable_file() {
    let dir = TempDir::new("empty");
    let path = dir.join("apifw.state.json");
    RuntimeState::default().save(&path).expect("save");
    let text = std::fs::read_to_string(&path).expect("read");
    assert!(text.contains("\"version\": 1"), "{text}");
    assert_eq!(
        RuntimeState::load(&path).expect("load"),
        RuntimeState::default()
    );
}

#[test]
fn unreadable_file_is_a_read_error() {
    let dir = TempDir::new("unreadable");
    // A directory where the file should be: exists, but cannot be read as a file.
    let path = dir.join("apifw.state.json");
    std::fs::create_dir(&path).expect("mkdir");
    let err = RuntimeState::load(&path).expect_err("a directory is no state file");
    assert!(matches!(err, StateError::Read { .. }), "{err:?}");
}

#[test]
fn truncated_file_is_corrupt_with_its_place() {
    let (line, column, message) = corrupt("{\n  \"version\": 1,\n  \"block\": [\n    {");
    assert_eq!((line, column), (4, 5));
    assert_eq!(
        message,
        "state file /x/y.state.json is corrupt at line 4, column 5: EOF while parsing an \
             object; the daemon keeps its last good state; fix or remove the file"
    );

    let (line, column, message) = corrupt("");
    assert_eq!((line, column), (1, 0));
    assert!(message.contains("EOF while parsing a value;"), "{message}");
}

#[test]
fn malformed_entries_are_corrupt_with_their_place() {
    let wrong_type = r#"{
  "version": 1,
  "block": [
    { "cidr": "10.0.0.0/8", "expires_at": "soon", "added_at": 1, "added_by": "uid 0" }
  ]
}"#;
    let (line, column, message) = corrupt(wrong_type);
    assert_eq!((line, column), (4, 48));
    assert!(
        message.contains(
            "at line 4, column 48: invalid type: string \"soon\", expected u64; the daemon"
        ),
        "{message}"
    );

    let bad_cidr = "{\"version\": 1,\n\"allow\": [{\"cidr\": \"10.0.0.0/33\", \"added_at\": 1, \
                        \"added_by\": \"\"}]}";
    let (line, _, message) = corrupt(bad_cidr);
    assert_eq!(line, 2);
    assert!(
        message.contains("invalid CIDR `10.0.0.0/33`: expected ADDR/LEN or ADDR"),
        "{message}"
    );

    let typo = "{\"version\": 1,\n\"bans\": [{\"cidr\": \"10.0.0.1\", \"expire_at\": 5}]}";
    let (line, _, message) = corrupt(typo);
    assert_eq!(line, 2);
    assert!(message.contains("unknown field `expire_at`"), "{message}");

    let (_, _, message) = corrupt("{\"block\": []}");
    assert!(message.contains("missing field `version`"), "{message}");

    let (line, column, message) = corrupt("{\"version\": 1, \"blocks\": []}");
    assert_eq!((line, column), (1, 23), "the end of the unknown key");
    assert!(message.contains("unknown field `blocks`"), "{message}");
}

#[test]
fn other_versions_are_refused() {
    // A newer format may change anything else too; the version is what the operator needs
    // to hear about.
    let err = RuntimeState::from_slice(
        Path::new("/x/y.state.json"),
        br#"{"version": 2, "rules": {"new": "stuff"}}"#,
    )
    .expect_err("version 2");
    assert!(
        matches!(
            err,
            StateError::Version {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "state file /x/y.state.json has format version 2, but this apifw reads only version 1; \
             the daemon keeps its last good state; upgrade apifw or remove the file"
    );

    let err =
        RuntimeState::from_slice(Path::new("s"), br#"{"version": 0}"#).expect_err("version 0");
    assert!(
        matches!(err, StateError::Version { found: 0, .. }),
        "{err:?}"
    );

    // Deserializing the type directly (e.g. from a socket) checks the version too.
    assert!(serde_json::from_str::<RuntimeState>(r#"{"version": 2}"#).is_err());
}

#[test]
fn hand_edited_files_are_normalized() {
    let text = r#"{
  "version": 1,
  "block": [
    { "cidr": "203.0.113.77/24", "added_at": 1, "added_by": "a" },
    { "cidr": "10.0.0.0/8", "added_at": 2, "added_by": "b" },
    { "cidr": "203.0.113.0/24", "comment": "later", "added_at": 3, "added_by": "c" }
  ],
  "allow": [{ "cidr": " 2001:db8::1 ", "added_at": 4, "added_by": "d" }]
}"#;
    let state = RuntimeState::from_slice(Path::new("s"), text.as_bytes()).expect("valid");
    assert_eq!(
        state.cidrs(ListKind::Block).collect::<Vec<_>>(),
        [net("10.0.0.0/8"), net("203.0.113.0/24")]
    );
    let later = state
        .get(ListKind::Block, &net("203.0.113.0/24"))
        .expect("present");
    assert_eq!(
        later.comment.as_deref(),
        Some("later"),
        "the later entry wins"
    );
    assert_eq!(later.cidr, net("203.0.113.0/24"));
    assert_eq!(
        state.cidrs(ListKind::Allow).collect::<Vec<_>>(),
        [net("2001:db8::1/128")],
        "a bare address is its host prefix"
    );
    assert_eq!(state.bans().len(), 0);
}

#[test]
fn upsert_replaces_by_cidr_and_remove_ignores_host_bits() {
    let mut state = RuntimeState::default();
    assert!(state.upsert(ListKind::Block, entry("203.0.113.9/24", Some(100))));
    assert_eq!(
        state.cidrs(ListKind::Block).collect::<Vec<_>>(),
        [net("203.0.113.0/24")],
        "host bits cleared"
    );
    assert!(
        !state.upsert(
            ListKind::Block,
            ListEntry {
                comment: Some("refreshed".into()),
                ..entry("203.0.113.0/24", Some(200))
            }
        ),
        "same CIDR replaces"
    );
    let only: Vec<_> = state.list(ListKind::Block).collect();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].expires_at, Some(200));
    assert_eq!(only[0].comment.as_deref(), Some("refreshed"));

    // The lists are separate: the same CIDR may be in both.
    assert!(state.upsert(ListKind::Allow, entry("203.0.113.0/24", None)));
    assert!(state.upsert(ListKind::Block, entry("203.0.113.0/25", None)));
    assert_eq!(state.list(ListKind::Block).len(), 2);

    let removed = state
        .remove(ListKind::Block, &net("203.0.113.200/24"))
        .expect("removed by a CIDR with host bits");
    assert_eq!(removed.expires_at, Some(200));
    assert_eq!(state.remove(ListKind::Block, &net("203.0.113.0/24")), None);
    assert_eq!(
        state.cidrs(ListKind::Block).collect::<Vec<_>>(),
        [net("203.0.113.0/25")]
    );
    assert!(state.get(ListKind::Allow, &net("203.0.113.0/24")).is_some());

    assert!(state.upsert_ban(ban("198.51.100.9/32", 10)));
    assert!(!state.upsert_ban(ban("198.51.100.9/32", 20)));
    assert_eq!(
        state
            .get_ban(&net("198.51.100.9/32"))
            .map(|ban| ban.expires_at),
        Some(20)
    );
    assert_eq!(
        state
            .remove_ban(&net("198.51.100.9/32"))
            .map(|ban| ban.expires_at),
        Some(20)
    );
    assert_eq!(state.remove_ban(&net("198.51.100.9/32")), None);
    assert_eq!(state.bans().len(), 0);
}

#[test]
fn expire_removes_what_lapsed_at_or_before_now() {
    let mut state = RuntimeState::default();
    state.upsert(ListKind::Block, entry("10.0.0.1/32", Some(99)));
    state.upsert(ListKind::Block, entry("10.0.0.2/32", Some(100)));
    state.upsert(ListKind::Block, entry("10.0.0.3/32", Some(101)));
    state.upsert(ListKind::Block, entry("10.0.0.4/32", None));
    state.upsert(ListKind::Allow, entry("192.0.2.0/24", Some(50)));
    state.upsert(ListKind::Allow, entry("192.0.3.0/24", None));
    state.upsert_ban(ban("198.51.100.1/32", 100));
    state.upsert_ban(ban("198.51.100.2/32", 1000));

    let expired = state.expire(100);
    let cidrs = |entries: &[ListEntry]| entries.iter().map(|e| e.cidr).collect::<Vec<_>>();
    assert_eq!(
        cidrs(expired.list(ListKind::Block)),
        [net("10.0.0.1/32"), net("10.0.0.2/32")]
    );
    assert_eq!(cidrs(&expired.allow), [net("192.0.2.0/24")]);
    assert_eq!(
        expired.bans.iter().map(|b| b.cidr).collect::<Vec<_>>(),
        [net("198.51.100.1/32")]
    );
    assert_eq!(
        state.cidrs(ListKind::Block).collect::<Vec<_>>(),
        [net("10.0.0.3/32"), net("10.0.0.4/32")]
    );
    assert_eq!(
        state.cidrs(ListKind::Allow).collect::<Vec<_>>(),
        [net("192.0.3.0/24")]
    );
    assert_eq!(state.bans().len(), 1);

    assert!(state.expire(100).is_empty(), "nothing lapses twice");
    let expired = state.expire(u64::MAX);
    assert_eq!(expired.block.len(), 1);
    assert_eq!(expired.bans.len(), 1);
    assert_eq!(
        state.cidrs(ListKind::Block).collect::<Vec<_>>(),
        [net("10.0.0.4/32")],
        "permanent entries never lapse"
    );
}

#[test]
fn many_entries_stay_cheap() {
    let mut state = RuntimeState::default();
    // Scattered order, so that a sorted Vec would have to shift on nearly every insert.
    for i in 0..100_000u32 {
        let scrambled = i.wrapping_mul(2_654_435_761);
        let cidr = IpNet::from(std::net::IpAddr::from(scrambled.to_be_bytes()));
        assert!(state.upsert(
            ListKind::Block,
            ListEntry {
                cidr,
                ..entry("0.0.0.0/0", Some(u64::from(i)))
            }
        ));
    }
    assert_eq!(state.list(ListKind::Block).len(), 100_000);
    let cidrs: Vec<_> = state.cidrs(ListKind::Block).collect();
    assert!(cidrs.is_sorted());
    assert_eq!(state.expire(49_999).block.len(), 50_000);
    assert_eq!(state.list(ListKind::Block).len(), 50_000);
}

#[test]
fn failed_create_leaves_nothing_behind() {
    let dir = TempDir::new("create");
    // Root can create files anywhere chmod would forbid, but not under a regular file.
    std::fs::write(dir.join("file"), "x").expect("write");
    let path = dir.join("file").join("apifw.state.json");
    let err = sample().save(&path).expect_err("parent is a regular file");
    assert!(
        matches!(&err, StateError::Write { step: "create", .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("cannot save state file /"),
        "{err}"
    );
    assert!(
        err.to_string()
            .ends_with("apifw.state.json (create failed)")
    );
    assert_eq!(dir.names(), ["file"]);

    // Nor in procfs.
    let err = sample()
        .save(Path::new("/proc/self/apifw.state.json"))
        .expect_err("procfs");
    assert!(
        matches!(&err, StateError::Write { step: "create", .. }),
        "{err:?}"
    );
}

#[test]
fn failed_rename_removes_the_temporary_file() {
    let dir = TempDir::new("rename");
    // A non-empty directory in the file's place: rename(2) cannot replace it.
    let path = dir.join("apifw.state.json");
    std::fs::create_dir(&path).expect("mkdir");
    std::fs::write(path.join("keep"), "old").expect("write");
    let err = sample().save(&path).expect_err("target is a directory");
    assert!(
        matches!(&err, StateError::Write { step: "rename", .. }),
        "{err:?}"
    );
    assert_eq!(dir.names(), ["apifw.state.json"]);
    assert_eq!(
        std::fs::read_to_string(path.join("keep")).expect("read"),
        "old"
    );
}

#[test]
fn failed_write_keeps_the_previous_file() {
    let dir = TempDir::new("write");
    let path = dir.join("apifw.state.json");
    let old = sample();
    old.save(&path).expect("save");
    let before = std::fs::read(&path).expect("read");

    let err = replace_file(&path, &temp_path(&path), |file| {
        file.write_all(b"{\"version\": 1, \"blo")?;
        Err(io::Error::from_raw_os_error(libc::ENOSPC))
    })
    .expect_err("disk full");
    assert!(
        matches!(&err, StateError::Write { step: "write", .. }),
        "{err:?}"
    );
    assert_eq!(std::fs::read(&path).expect("read"), before);
    assert_eq!(RuntimeState::load(&path).expect("load"), old);
    assert_eq!(dir.names(), ["apifw.state.json"]);
}

#[test]
fn leftover_temporary_files_are_overwritten_with_the_right_mode() {
    let dir = TempDir::new("leftover");
    let path = dir.join("apifw.state.json");
    // As a crashed save of an earlier process with the same pid would have left it.
    let temp = dir.join(".apifw.state.json.1.0.tmp");
    std::fs::write(&temp, "garbage longer than the new contents").expect("write");
    std::fs::set_permissions(&temp, Permissions::from_mode(0o644)).expect("chmod");

    replace_file(&path, &temp, |file| file.write_all(b"{\"version\": 1}\n")).expect("replace");
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        "{\"version\": 1}\n"
    );
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(dir.names(), ["apifw.state.json"]);
}

#[test]
fn temporary_files_are_hidden_and_unique() {
    let path = Path::new("/etc/apifw/apifw.state.json");
    let first = temp_path(path);
    let second = temp_path(path);
    assert_ne!(first, second);
    assert_eq!(first.parent(), path.parent());
    let name = first
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let prefix = format!(".apifw.state.json.{}.", std::process::id());
    assert!(
        name.starts_with(&prefix) && name.ends_with(".tmp"),
        "{name}"
    );
}

#[test]
fn state_lives_next_to_the_policy() {
    let cases = [
        ("/etc/apifw/apifw.toml", "/etc/apifw/apifw.state.json"),
        ("/etc/apifw/edge.v2.toml", "/etc/apifw/edge.v2.state.json"),
        ("/srv/policy", "/srv/policy.state.json"),
        ("apifw.toml", "apifw.state.json"),
        ("./conf/apifw.toml", "./conf/apifw.state.json"),
        ("/etc/apifw/.hidden", "/etc/apifw/.hidden.state.json"),
    ];
    for (policy, state) in cases {
        assert_eq!(
            state_path(Path::new(policy)),
            PathBuf::from(state),
            "{policy}"
        );
    }
}

#[test]
fn unix_now_is_after_2023() {
    assert!(unix_now() > 1_700_000_000);
}

#[test]
fn imports_round_trip_shrink_and_lapse() {
    let dir = std::env::temp_dir().join(format!("apifw-state-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("p.state.json");
    let net = |s: &str| s.parse::<IpNet>().expect("cidr");
    let mut state = RuntimeState::default();
    let id = state.add_import(ImportRecord {
        id: 0,
        list: ListKind::Block,
        origin: "drop.txt".into(),
        cidrs: vec![
            net("198.51.100.7/24"),
            net("192.0.2.1/32"),
            net("198.51.100.0/24"),
        ],
        expires_at: Some(100),
        comment: None,
        added_at: 1,
        added_by: "uid 0".into(),
    });
    assert_eq!(id, 1);
    assert_eq!(
        state.len(ListKind::Block),
        2,
        "host bits cleared, duplicate dropped"
    );
    assert_eq!(state.len(ListKind::Allow), 0);
    assert_eq!(state.next_expiry(), Some(100));
    state.save(&path).expect("save");
    assert_eq!(RuntimeState::load(&path).expect("load"), state);
    let mut cidrs: Vec<IpNet> = state.cidrs(ListKind::Block).collect();
    cidrs.sort_unstable();
    assert_eq!(cidrs, vec![net("192.0.2.1/32"), net("198.51.100.0/24")]);
    assert_eq!(
        state.remove_imported(ListKind::Block, &net("198.51.100.9/24")),
        1
    );
    assert_eq!(
        state.remove_imported(ListKind::Allow, &net("192.0.2.1/32")),
        0
    );
    assert_eq!(state.len(ListKind::Block), 1);
    let expired = state.expire(100);
    assert_eq!(expired.imports.len(), 1);
    assert!(state.is_empty());
    assert_eq!(
        state.remove_imported(ListKind::Block, &net("192.0.2.1/32")),
        0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The state file's fast IPv4 CIDR writer says exactly what `Display` says.
#[test]
fn imported_cidrs_are_written_as_display_writes_them() {
    let mut samples: Vec<IpNet> = [
        "0.0.0.0/0",
        "255.255.255.255/32",
        "10.0.0.0/8",
        "2001:db8::/32",
    ]
    .iter()
    .map(|text| text.parse().unwrap())
    .collect();
    for i in 0..5000u32 {
        let addr = std::net::Ipv4Addr::from(i.wrapping_mul(2_654_435_761));
        let len = (i % 33) as u8;
        samples.push(IpNet::V4(ipnet::Ipv4Net::new(addr, len).unwrap().trunc()));
    }
    for net in &samples {
        let written = serde_json::to_string(&FastCidr(net)).unwrap();
        assert_eq!(written, format!("\"{net}\""));
    }
}
