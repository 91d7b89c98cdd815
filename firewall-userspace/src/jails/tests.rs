//! Unit tests of the parent module, in a file of their own to keep the module readable.

use std::io::Write as _;

use super::*;

#[test]
fn the_state_file_sits_beside_the_state_file() {
    assert_eq!(
        state_path(Path::new("/var/lib/apifw/apifw.state.json")),
        Path::new("/var/lib/apifw/apifw.jails.json")
    );
    assert_eq!(
        state_path(Path::new("/x/custom")),
        Path::new("/x/custom.jails.json")
    );
}

#[test]
fn a_log_jail_bans_after_max_retry_and_resumes_after_a_restart() {
    let dir = std::env::temp_dir().join(format!("apifw-jails-mod-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let log = dir.join("access.log");
    let policy = crate::policy::Loaded::from_str(
        &dir.join("p.toml"),
        "[[jail]]\nname = \"web\"\nlog = \"access.log\"\nmax_retry = 3\n\
             [[jail]]\nname = \"app\"\nmax_retry = 4\n",
    )
    .unwrap_or_else(|err| panic!("{err}"))
    .policy;
    let line = |ip: &str, status: u16| {
        format!(
            "{ip} - - [01/Jan/2025:00:00:00 +0000] \"POST /login HTTP/1.1\" {status} 0 \"-\" \"t\"\n"
        )
    };
    let append = |text: &str| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .expect("append");
    };
    let mut jails = Jails::new(&policy.jails, &JailsState::default());
    append(&(line("198.51.100.7", 401) + &line("198.51.100.7", 200) + "garbage\n"));
    append(&line("198.51.100.7", 403));
    assert!(jails.poll(100).is_empty());
    let state = jails.state();
    // A restart: the next line is the third failure, and nothing is read twice.
    let mut jails = Jails::new(&policy.jails, &state);
    append(&line("198.51.100.7", 401));
    let bans = jails.poll(101);
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0].decision.count, 3);
    assert_eq!(bans[0].jail, "web");
    assert_eq!(
        bans[0].comment(),
        "jail web: 3 matches within 600s (ban #1)"
    );
    jails.banned(&bans[0]);
    let view = &jails.views(101)[0];
    assert_eq!((view.lines, view.matches, view.bans), (1, 1, 1));
    assert_eq!(view.current_bans.len(), 1);

    // Reports go to the jail without a log unless they name one.
    let source: IpAddr = "203.0.113.9".parse().expect("ip");
    let (counted, ban) = jails
        .report(None, source, 3, "bad token", 102)
        .expect("counted");
    assert_eq!(counted.jail, "app");
    assert_eq!(counted.outcome, Outcome::Counted { count: 3 });
    assert!(ban.is_none());
    let (_, ban) = jails
        .report(None, source, 1, "replayed JWT", 103)
        .expect("counted");
    assert_eq!(ban.map(|ban| ban.decision.count), Some(4));
    assert_eq!(
        jails.report(Some("nope"), source, 1, "x", 104),
        Err(ReportError::UnknownJail("nope".into()))
    );
    let _ = std::fs::remove_dir_all(&dir);
}
