//! Unit tests of the parent module, in a file of their own to keep the module readable.

use super::*;

fn load(text: &str) -> Result<Loaded, PolicyError> {
    Loaded::from_str(Path::new("policy.toml"), text)
}

fn errors(text: &str) -> Vec<Diagnostic> {
    match load(text) {
        Err(PolicyError::Invalid(errors)) => errors,
        Err(other) => panic!("expected validation errors, got {other}"),
        Ok(loaded) => panic!("expected errors, got {:?}", loaded.policy),
    }
}

fn messages(diagnostics: &[Diagnostic]) -> Vec<String> {
    diagnostics.iter().map(ToString::to_string).collect()
}

#[test]
fn empty_policy_takes_the_documented_defaults() {
    let loaded = load("").expect("empty policy is valid");
    assert_eq!(loaded.policy, Policy::default());
    assert_eq!(loaded.policy.malformed, Action::Drop);
    assert_eq!(loaded.policy.xdp_mode, XdpModeSetting::Auto);
    assert_eq!(loaded.policy.limits.max_v4_prefixes, 1 << 17);
    assert_eq!(
        loaded.policy.daemon.pin_dir,
        PathBuf::from("/sys/fs/bpf/apifw")
    );
    assert!(loaded.warnings.is_empty());
}

#[test]
fn the_shipped_example_is_valid_and_clean() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/apifw.toml");
    let loaded = Loaded::from_file(&path).unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(loaded.policy.interfaces, ["eth0"]);
    assert_eq!(loaded.policy.allow.len(), 2);
    assert_eq!(loaded.policy.block.len(), 3);
    assert!(
        loaded.warnings.is_empty(),
        "{:?}",
        messages(&loaded.warnings)
    );
}

#[test]
fn the_examples_crowdsec_block_is_valid_uncommented_with_every_setting() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let example = std::fs::read_to_string(root.join("examples/apifw.toml")).expect("example");
    let block: Vec<&str> = example
        .lines()
        .skip_while(|line| *line != "# [crowdsec]")
        .take_while(|line| line.starts_with("# "))
        .map(|line| line.trim_start_matches("# "))
        // Settings, not the prose between them.
        .filter(|line| {
            line.starts_with('[')
                || line.split_once(" = ").is_some_and(|(key, _)| {
                    key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                })
        })
        .collect();
    assert!(block.len() > 10, "{block:?}");
    let loaded = load(&format!(
        "[limits]\nmax_bans = 262144\n{}",
        block.join("\n")
    ))
    .unwrap_or_else(|err| panic!("{err}"));
    let settings = loaded.policy.crowdsec.expect("a [crowdsec] section");
    let push = settings.push.expect("the agent side");
    assert_eq!(push.machine_id, "apifw-web1");
    assert!(push.jail_bans && !push.rate_limit_bans);
    let corpus = root.join("fuzz/corpus/policy/crowdsec.toml");
    let loaded = Loaded::from_file(&corpus).unwrap_or_else(|err| panic!("{err}"));
    assert!(loaded.policy.crowdsec.and_then(|s| s.push).is_some());
}

#[test]
fn full_policy_parses() {
    let loaded = load(
        r#"
interfaces = ["veth0", "veth1"]
xdp_mode = "skb"
malformed = "pass"
[allow]
cidrs = ["203.0.113.7", "2001:db8::7"]
[block]
cidrs = ["203.0.113.0/24", "2001:db8::/32"]
[limits]
max_v4_prefixes = 1000
max_v6_prefixes = 10
[daemon]
pin_dir = "/sys/fs/bpf/x"
run_dir = "/tmp/x"
log_format = "json"
"#,
    )
    .unwrap_or_else(|err| panic!("{err}"));
    let policy = loaded.policy;
    assert_eq!(policy.interfaces, ["veth0", "veth1"]);
    assert_eq!(policy.xdp_mode, XdpModeSetting::Skb);
    assert_eq!(policy.malformed, Action::Pass);
    assert_eq!(
        policy.allow,
        [
            "203.0.113.7/32".parse::<IpNet>().unwrap(),
            "2001:db8::7/128".parse().unwrap()
        ]
    );
    assert_eq!(policy.limits.max_v6_prefixes, 10);
    assert_eq!(policy.daemon.log_format, LogFormat::Json);
}

#[test]
fn unknown_keys_are_errors_with_a_location() {
    let found = messages(&errors(
        "interfaces = []\n[block]\ncidr = [\"203.0.113.0/24\"]\n",
    ));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("policy.toml:3:1: unknown field `cidr`"),
        "{found:?}"
    );

    let found = messages(&errors("malformed = \"reject\"\n"));
    assert!(
        found[0].starts_with("policy.toml:1:13: unknown variant `reject`"),
        "{found:?}"
    );

    let found = messages(&errors("[limits]\nmax_v4_prefixes = -1\n"));
    assert!(found[0].starts_with("policy.toml:2:19:"), "{found:?}");
}

#[test]
fn every_invalid_cidr_is_reported_with_its_place_and_value() {
    let found = messages(&errors(
        "[block]\ncidrs = [\n  \"203.0.113.0/33\",\n  \"203.0.113.0/24\",\n  \"not-an-ip\",\n  \"2001:db8::/129\",\n]\n",
    ));
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(
        found[0].starts_with("policy.toml:3:3: block: invalid CIDR `203.0.113.0/33`"),
        "{found:?}"
    );
    assert!(
        found[1].starts_with("policy.toml:5:3: block: invalid CIDR `not-an-ip`"),
        "{found:?}"
    );
    assert!(
        found[2].starts_with("policy.toml:6:3: block: invalid CIDR `2001:db8::/129`"),
        "{found:?}"
    );
}

#[test]
fn bad_interface_names_and_zero_limits_are_errors() {
    let found = messages(&errors(
        "interfaces = [\"\", \"a-name-longer-than-15\", \"eth/0\"]\n[limits]\nmax_v6_prefixes = 0\n",
    ));
    assert_eq!(found.len(), 4, "{found:?}");
    assert!(found[0].contains("invalid interface name ``"), "{found:?}");
    assert!(found[1].contains("`a-name-longer-than-15`"), "{found:?}");
    assert!(found[2].contains("`eth/0`"), "{found:?}");
    assert!(
        found[3].contains("limits.max_v6_prefixes must be at least 1"),
        "{found:?}"
    );
}

#[test]
fn overlaps_and_duplicates_are_warnings() {
    let loaded = load(
        r#"
interfaces = ["lo", "lo"]
[allow]
cidrs = ["198.51.100.0/24"]
[block]
cidrs = [
  "203.0.113.5/24",
  "203.0.113.0/24",
  "203.0.113.128/25",
  "198.51.100.0/24",
  "198.51.100.64/26",
]
"#,
    )
    .unwrap_or_else(|err| panic!("{err}"));
    let found = messages(&loaded.warnings);
    let expected = [
        "policy.toml:2:21: interface `lo` is listed twice",
        "policy.toml:7:3: block: `203.0.113.5/24` has host bits set; treated as 203.0.113.0/24",
        "policy.toml:8:3: block: duplicate entry 203.0.113.0/24 (first at line 7)",
        "policy.toml:9:3: block: 203.0.113.128/25 is redundant: 203.0.113.0/24 (line 7) already covers it",
        "policy.toml:10:3: block: 198.51.100.0/24 is also allowlisted (line 4); the allowlist wins",
        "policy.toml:11:3: block: 198.51.100.64/26 never takes effect: allowlisted 198.51.100.0/24 (line 4) covers it",
    ];
    for line in expected {
        assert!(
            found.iter().any(|f| f == line),
            "missing warning {line:?} in {found:?}"
        );
    }
    // The /26 is also redundant inside the blocked /24 of the same list.
    assert_eq!(found.len(), expected.len() + 1, "{found:?}");
    assert_eq!(loaded.policy.interfaces, ["lo"]);
    assert_eq!(
        loaded.policy.block[0],
        "203.0.113.0/24".parse::<IpNet>().unwrap()
    );
}

#[test]
fn missing_interfaces_are_named_with_their_place() {
    let loaded = load("interfaces = [\"lo\", \"apifw-nope0\"]\n").expect("valid");
    let found = messages(&loaded.missing_interfaces());
    assert_eq!(
        found,
        [
            "policy.toml:1:21: unknown interface `apifw-nope0` (not present in this network namespace)"
        ]
    );
}

#[test]
fn rules_compile_to_buckets_and_match_keys() {
    let loaded = load(
        r#"
dry_run = true
[[rule]]
name = "https"
protocol = "tcp"
ports = [443, 8443]
per_source = { packets_per_second = 100, bytes_per_second = 1000000, burst_bytes = 3000000 }
syn_per_source = { per_second = 5 }
[[rule]]
name = "dns"
protocol = "any"
ports = [53]
dry_run = true
per_subnet = { packets_per_second = 1000, burst_packets = 50, prefix_v4 = 20 }
[[rule]]
name = "rest"
protocol = "any"
per_source = { packets_per_second = 10 }
"#,
    )
    .unwrap_or_else(|err| panic!("{err}"));
    let policy = loaded.policy;
    assert!(policy.dry_run);
    assert_eq!(policy.rules.len(), 3);
    let https = &policy.rules[0];
    assert_eq!(
        https.config.source_packets,
        Bucket::new(100, 100),
        "burst defaults to 1 s"
    );
    assert_eq!(https.config.source_bytes, Bucket::new(1_000_000, 3_000_000));
    assert_eq!(https.config.syn, Bucket::new(5, 5));
    assert!(!https.config.subnet_packets.is_limited());
    assert!(!https.config.dry_run());
    assert_eq!(
        https.keys(),
        [
            RuleKey::new(IPPROTO_TCP, 443),
            RuleKey::new(IPPROTO_TCP, 8443)
        ]
    );
    let dns = &policy.rules[1];
    assert!(dns.config.dry_run());
    assert_eq!(
        (dns.config.subnet_v4_len, dns.config.subnet_v6_len),
        (20, 64)
    );
    assert_eq!(
        dns.keys(),
        [RuleKey::new(IPPROTO_TCP, 53), RuleKey::new(IPPROTO_UDP, 53)]
    );
    assert_eq!(
        policy.rules[2].keys(),
        [RuleKey::new(ANY_PROTOCOL, ANY_PORT)]
    );
    let model = policy.model();
    assert_eq!(model.rules.len(), 3);
    assert!(model.dry_run);
}

#[test]
fn bad_rules_are_errors_naming_the_rule() {
    let rule = |body: &str| format!("[[rule]]\nname = \"r\"\nprotocol = \"tcp\"\n{body}\n");
    let cases = [
        (
            rule("ports = [0]\nper_source = { packets_per_second = 1 }"),
            "port 0",
        ),
        (
            rule("per_source = { packets_per_second = 0 }"),
            "at least 1",
        ),
        (rule(""), "sets no limit"),
        (
            rule("per_subnet = { packets_per_second = 1, prefix_v4 = 33 }"),
            "prefix_v4",
        ),
        (
            "[[rule]]\nname = \"u\"\nprotocol = \"udp\"\nsyn_per_source = { per_second = 1 }\n"
                .to_owned(),
            "syn_per_source needs TCP",
        ),
    ];
    for (text, expected) in cases {
        let found = messages(&errors(&text));
        assert_eq!(found.len(), 1, "{text}: {found:?}");
        assert!(
            found[0].starts_with("policy.toml:1:1: rule `"),
            "{text}: {found:?}"
        );
        assert!(found[0].contains(expected), "{text}: {found:?}");
    }

    let found = messages(&errors(
        "[[rule]]\nname = \"a\"\nprotocol = \"tcp\"\nports = [443]\nper_source = { packets_per_second = 1 }\n\
             [[rule]]\nname = \"a\"\nprotocol = \"udp\"\nper_source = { packets_per_second = 1 }\n\
             [[rule]]\nname = \"b\"\nprotocol = \"any\"\nports = [443]\nper_source = { packets_per_second = 1 }\n",
    ));
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].contains("rule `a`: duplicate rule name (first at line 1)"),
        "{found:?}"
    );
    assert!(
        found[1].contains("rule `b`: matches the same protocol and port as rule `a`"),
        "{found:?}"
    );

    let found = messages(&errors("[[rule]]\nname = \"x\"\nprotocol = \"icmp\"\n"));
    assert!(found[0].contains("unknown variant `icmp`"), "{found:?}");
    let found = messages(&errors(
        "[[rule]]\nname = \"x\"\nprotocol = \"tcp\"\nper_source = { pps = 1 }\n",
    ));
    assert!(found[0].contains("unknown field `pps`"), "{found:?}");
}

#[test]
fn ban_settings_parse_with_defaults_and_need_on_exceed_ban() {
    let loaded = load(
        r#"
[[rule]]
name = "login"
protocol = "tcp"
ports = [443]
per_source = { packets_per_second = 100 }
on_exceed = "ban"
ban_after = "2s"
escalate_after = 5
[[rule]]
name = "api"
protocol = "tcp"
ports = [8443]
per_source = { packets_per_second = 100 }
on_exceed = "ban"
"#,
    )
    .unwrap_or_else(|err| panic!("{err}"));
    let login = loaded.policy.rules[0].config;
    assert!(login.bans());
    assert_eq!(login.ban_after_ns, 2_000_000_000);
    assert_eq!(
        login.ban_ttl_ns, 600_000_000_000,
        "ban_ttl defaults to 10 minutes"
    );
    assert_eq!(
        login.subnet_ban_ttl_ns, 3_600_000_000_000,
        "subnet_ban_ttl defaults to 1 hour"
    );
    assert_eq!(login.escalate_after, 5);
    let api = loaded.policy.rules[1].config;
    assert_eq!(api.ban_after_ns, 5_000_000_000, "ban_after defaults to 5 s");
    assert_eq!(api.escalate_after, 0, "no escalation unless asked");

    let rule = |body: &str| {
        format!(
            "[[rule]]\nname = \"r\"\nprotocol = \"tcp\"\nper_source = {{ packets_per_second = 1 }}\n{body}\n"
        )
    };
    for (body, expected) in [
        ("ban_ttl = \"1m\"", "need on_exceed = \"ban\""),
        (
            "on_exceed = \"ban\"\nban_after = \"soon\"",
            "ban_after = \"soon\"",
        ),
        (
            "on_exceed = \"ban\"\nban_ttl = \"0s\"",
            "ban_ttl must be longer than 0",
        ),
    ] {
        let found = messages(&errors(&rule(body)));
        assert_eq!(found.len(), 1, "{body}: {found:?}");
        assert!(found[0].contains(expected), "{body}: {found:?}");
    }
    let found = messages(&errors(&rule("on_exceed = \"block\"")));
    assert!(found[0].contains("unknown variant `block`"), "{found:?}");
}

#[test]
fn unreadable_file_names_the_path() {
    let err = Loaded::from_file(Path::new("/nonexistent/apifw.toml")).expect_err("missing file");
    assert_eq!(
        err.to_string(),
        "cannot read policy /nonexistent/apifw.toml"
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn a_crowdsec_section_takes_its_defaults_and_resolves_the_key_file() {
    let loaded = Loaded::from_str(
        Path::new("/etc/apifw/apifw.toml"),
        r#"
[limits]
max_bans = 262144
[crowdsec]
lapi_url = "http://192.0.2.53:8080/"
api_key_file = "crowdsec.key"
origins = ["cscli", "CAPI", "cscli"]
"#,
    )
    .unwrap_or_else(|err| panic!("{err}"));
    assert!(
        loaded.warnings.is_empty(),
        "{:?}",
        messages(&loaded.warnings)
    );
    let settings = loaded.policy.crowdsec.expect("a [crowdsec] section");
    assert_eq!(settings.lapi_url, "http://192.0.2.53:8080");
    assert_eq!(
        settings.api_key,
        crowdsec::ApiKey::File(PathBuf::from("/etc/apifw/crowdsec.key"))
    );
    assert_eq!(settings.poll_interval, std::time::Duration::from_secs(10));
    assert_eq!(
        settings.resync_interval,
        std::time::Duration::from_secs(600)
    );
    assert_eq!(settings.timeout, std::time::Duration::from_secs(30));
    assert_eq!(settings.connect_timeout, std::time::Duration::from_secs(5));
    assert_eq!(settings.max_answer_bytes, 64 << 20);
    assert_eq!(settings.origins, ["cscli", "CAPI"]);
    assert_eq!(
        settings.scopes,
        [crowdsec::DecisionScope::Ip, crowdsec::DecisionScope::Range]
    );
    // The key itself never shows in the policy's Debug.
    let inline = load("[crowdsec]\nlapi_url = \"http://127.0.0.1:8080\"\napi_key = \"s3cret\"\n")
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(!format!("{:?}", inline.policy).contains("s3cret"));
    // A ban map smaller than a community blocklist is worth a warning.
    assert!(
        messages(&inline.warnings)[0].contains("limits.max_bans = 65536"),
        "{:?}",
        messages(&inline.warnings)
    );
    assert_eq!(load("").expect("empty policy").policy.crowdsec, None);
}

#[test]
fn machine_credentials_turn_on_pushing_jail_bans_and_nothing_else_by_default() {
    let base = "[crowdsec]\nlapi_url = \"http://127.0.0.1:8080\"\napi_key = \"k\"\n";
    let settings = |extra: &str| {
        load(&format!("{base}{extra}"))
            .unwrap_or_else(|err| panic!("{err}"))
            .policy
            .crowdsec
            .expect("a [crowdsec] section")
    };
    assert_eq!(settings("").push, None, "no credentials: nothing pushed");
    let inline = settings("machine_id = \"apifw-web1\"\npassword = \"Machine-pw-1\"");
    assert_eq!(
        inline.push,
        Some(crowdsec::PushSettings {
            machine_id: "apifw-web1".into(),
            password: crowdsec::Password::Inline("Machine-pw-1".into()),
            jail_bans: true,
            rate_limit_bans: false,
        })
    );
    assert!(
        !format!("{inline:?}").contains("Machine-pw-1"),
        "the password never shows in Debug"
    );
    let loaded = Loaded::from_str(
        Path::new("/etc/apifw/apifw.toml"),
        &format!(
            "{base}machine_id = \"m\"\npassword_file = \"machine.pw\"\npush_jail_bans = \
             false\npush_rate_limit_bans = true\n"
        ),
    )
    .unwrap_or_else(|err| panic!("{err}"));
    let push = loaded
        .policy
        .crowdsec
        .and_then(|settings| settings.push)
        .expect("push settings");
    assert_eq!(
        push.password,
        crowdsec::Password::File(PathBuf::from("/etc/apifw/machine.pw"))
    );
    assert!(!push.jail_bans);
    assert!(push.rate_limit_bans);
    // Turning pushing off without credentials is no error.
    assert_eq!(settings("push_jail_bans = false").push, None);
}

#[test]
fn crowdsec_errors_name_the_setting_and_the_value() {
    let section = |body: &str| format!("[crowdsec]\n{body}\n");
    for (body, expected) in [
        (
            "lapi_url = \"https://lapi:8080\"\napi_key = \"k\"",
            "crowdsec.lapi_url = \"https://lapi:8080\": TLS is not supported yet",
        ),
        (
            "lapi_url = \"ftp://lapi\"\napi_key = \"k\"",
            "crowdsec.lapi_url = \"ftp://lapi\": the URL must start with http://",
        ),
        (
            "lapi_url = \"http://\"\napi_key = \"k\"",
            "crowdsec.lapi_url = \"http://\"",
        ),
        (
            "lapi_url = \"http://lapi:8080\"",
            "crowdsec: set api_key or api_key_file",
        ),
        (
            "lapi_url = \"http://lapi:8080\"\napi_key = \"k\"\napi_key_file = \"/k\"",
            "set api_key or api_key_file, not both",
        ),
        (
            "lapi_url = \"http://lapi:8080\"\napi_key = \" \"",
            "crowdsec.api_key is empty",
        ),
        (
            "lapi_url = \"http://lapi:8080\"\napi_key = \"k\"\npoll_interval = \"often\"",
            "crowdsec.poll_interval = \"often\"",
        ),
        (
            "lapi_url = \"http://lapi:8080\"\napi_key = \"k\"\npoll_interval = \"100ms\"",
            "crowdsec.poll_interval = \"100ms\": must be at least 1s",
        ),
        (
            "lapi_url = \"http://lapi:8080\"\napi_key = \"k\"\nresync_interval = \"1s\"",
            "crowdsec.resync_interval = \"1s\": must be at least 10s",
        ),
        (
            "lapi_url = \"http://lapi:8080\"\napi_key = \"k\"\ntimeout = \"0s\"",
            "crowdsec.timeout = \"0s\": must be at least",
        ),
        (
            "lapi_url = \"http://lapi:8080\"\napi_key = \"k\"\nmax_answer_bytes = 10",
            "crowdsec.max_answer_bytes = 10: must be at least 1024",
        ),
        (
            "lapi_url = \"http://lapi:8080\"\napi_key = \"k\"\nscopes = [\"Ip\", \"Country\"]",
            "crowdsec.scopes: unknown scope `Country`",
        ),
        (
            "lapi_url = \"http://lapi:8080\"\napi_key = \"k\"\nscopes = []",
            "crowdsec.scopes is empty",
        ),
        (
            "lapi_url = \"http://lapi:8080\"\napi_key = \"k\"\norigins = [\"\"]",
            "crowdsec.origins: an origin is empty",
        ),
        (
            "lapi_url = \"http://lapi:8080\"\napi_key = \"k\"\nlapi = \"x\"",
            "unknown field `lapi`",
        ),
        (
            "lapi_url = \"http://lapi:8080\"\napi_key = \"k\"\npush_jail_bans = true",
            "crowdsec.push_jail_bans = true: pushing bans to the LAPI needs machine credentials",
        ),
        (
            "lapi_url = \"http://lapi:8080\"\napi_key = \"k\"\npush_rate_limit_bans = true",
            "crowdsec.push_rate_limit_bans = true: pushing bans to the LAPI needs machine",
        ),
        (
            "lapi_url = \"http://lapi:8080\"\napi_key = \"k\"\nmachine_id = \"web1\"",
            "crowdsec.machine_id = \"web1\": set password or password_file too",
        ),
        (
            "lapi_url = \"http://lapi:8080\"\napi_key = \"k\"\npassword = \"pw\"",
            "crowdsec: a password without machine_id",
        ),
        (
            "lapi_url = \"http://lapi:8080\"\napi_key = \"k\"\nmachine_id = \" \"\npassword = \"pw\"",
            "crowdsec.machine_id is empty",
        ),
        (
            "lapi_url = \"http://lapi:8080\"\napi_key = \"k\"\nmachine_id = \"m\"\npassword = \"\"",
            "crowdsec.password is empty",
        ),
        (
            "lapi_url = \"http://lapi:8080\"\napi_key = \"k\"\nmachine_id = \"m\"\npassword = \"pw\"\npassword_file = \"/pw\"",
            "crowdsec: set password or password_file, not both",
        ),
        (
            "lapi_url = \"http://lapi:8080\"\napi_key = \"k\"\nmachine_id = \"m\"\npassword_file = \"\"",
            "crowdsec.password_file is empty",
        ),
    ] {
        let found = messages(&errors(&section(body)));
        assert_eq!(found.len(), 1, "{body}: {found:?}");
        assert!(found[0].contains(expected), "{body}: {found:?}");
    }
}
