use super::*;

const BASE: &str = r#"
[[node]]
name = "n1"
address = "127.0.0.11:5432"

[[node]]
name = "n2"
address = "127.0.0.12:5432"

[[listener]]
name = "primary"
bind = "127.0.0.1:5000"
balance = "first"
check = { method = "OPTIONS", path = "/master", expect = 200 }
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("test.toml"), text)
}

/// The line and key of an error, or a panic naming what came back instead.
fn err_at(text: &str) -> (usize, String, String) {
    match parse(text) {
        Err(ConfigError::Invalid { line, key, message, .. }) => (line, key, message),
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

#[test]
fn haproxy_defaults_apply() {
    let c = parse(BASE).unwrap();
    assert_eq!(c.global.maxconn, 4096);
    let l = &c.listeners[0];
    assert_eq!(l.retries, 2);
    assert_eq!(l.maxconn, 100);
    assert_eq!(l.timeout_connect, Duration::from_secs(4));
    assert_eq!(l.timeout_queue, Duration::from_secs(30), "a leader listener holds sessions through a switchover");
    let replica = parse(&BASE.replace("/master", "/replica")).unwrap();
    assert_eq!(replica.listeners[0].timeout_queue, Duration::from_secs(4), "otherwise timeout connect, as in HAProxy");
    assert_eq!(c.global.check_mode, CheckMode::Patroni);
    assert_eq!(c.global.hunt_inter, Duration::from_millis(200));
    assert!(l.check.is_leader());
    assert!(!l.fallback_to_leader);
    assert_eq!(l.timeout_client, Duration::from_secs(1800));
    assert_eq!(l.check.timing.inter, Duration::from_secs(2));
    assert_eq!(l.check.timing.fastinter, l.check.timing.inter);
    assert_eq!(l.check.timing.downinter, l.check.timing.inter);
    assert_eq!((l.check.timing.fall, l.check.timing.rise), (3, 2));
    assert_eq!(l.check.timing.connect_timeout, Duration::from_secs(2), "min(timeout connect, inter)");
    assert!(l.shutdown_sessions);
    assert_eq!(l.servers, vec![0, 1]);
    assert_eq!(c.nodes[0].check_address, "127.0.0.11:8008");
}

#[test]
fn listener_overrides_defaults() {
    let text = format!("[defaults]\ninter = \"3s\"\nretries = 5\n{BASE}timeout_queue = \"30s\"\ninter = \"1s\"\n");
    let l = &parse(&text).unwrap().listeners[0];
    assert_eq!(l.retries, 5);
    assert_eq!(l.timeout_queue, Duration::from_secs(30));
    assert_eq!(l.check.timing.inter, Duration::from_secs(1));
}

#[test]
fn shipped_files_are_valid() {
    for f in ["conf/pgfront.toml", "conf/local.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.listeners.len(), 3, "{f}");
        assert_eq!(c.nodes.len(), 3, "{f}");
        assert_eq!(c.listeners[0].check.timing.inter, Duration::from_secs(3));
    }
    let local = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/local.toml")).unwrap();
    let binds: Vec<String> = local.listeners.iter().map(|l| l.bind.to_string()).collect();
    assert_eq!(binds, ["127.0.0.1:5000", "127.0.0.1:5001", "127.0.0.1:5002"]);
    // Found by helper-49: [defaults]' timeout_queue (4 s) gave the reads port's sessions
    // asking for the primary 4 s, not the write port's 30 s, in both shipped files.
    for f in ["conf/pgfront.toml", "conf/local.toml"] {
        let c = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(f)).unwrap();
        let reads = &c.listeners[2];
        assert_eq!(reads.timeout_queue, Duration::from_secs(4), "{f}");
        assert_eq!(reads.timeout_queue_primary, Duration::from_secs(30), "{f}: as long as the write port holds");
    }
    assert_eq!(local.web.as_ref().unwrap().bind.to_string(), "127.0.0.1:7000");
    let u = &local.web.as_ref().unwrap().users[0];
    assert_eq!(u.name, "admin");
    assert!(u.secret == Secret::Clear("secret".into()));
    assert_eq!(u.role, Role::Admin);
}

#[test]
fn unknown_key_names_line_and_key() {
    let (line, key, msg) = err_at("[defaults]\nretries = 2\nintre = \"3s\"\n");
    assert_eq!((line, key.as_str()), (3, "intre"));
    assert!(msg.contains("unknown field"), "{msg}");
}

#[test]
fn unknown_key_in_listener() {
    let (line, key, _) = err_at(&format!("{BASE}balanse = \"first\"\n"));
    assert_eq!((line, key.as_str()), (15, "balanse"));
}

#[test]
fn bad_duration_names_line_and_key() {
    let (line, key, msg) = err_at("[defaults]\n\ninter = \"3\"\n");
    assert_eq!((line, key.as_str()), (3, "inter"));
    assert!(msg.contains("unit"), "{msg}");
    let (line, key, _) = err_at("[defaults]\ntimeout_check = \"soon\"\n");
    assert_eq!((line, key.as_str()), (2, "timeout_check"));
}

#[test]
fn zero_values_are_refused() {
    let (line, key, _) = err_at(&format!("[defaults]\nfall = 0\n{BASE}"));
    assert_eq!((line, key.as_str()), (2, "fall"));
    let (line, key, _) = err_at(&format!("[defaults]\ninter = \"0s\"\n{BASE}"));
    assert_eq!((line, key.as_str()), (2, "inter"));
    let (line, key, _) = err_at(&format!("[global]\nmaxconn = 0\n{BASE}"));
    assert_eq!((line, key.as_str()), (2, "global.maxconn"));
}

#[test]
fn a_bind_beside_a_wildcard_on_its_port_is_refused() {
    // Before: check passed it, and run failed with "address in use".
    let two = |a: &str, b: &str| {
        let extra = format!("[[listener]]\nname = \"x\"\nbind = \"{b}\"\ncheck = {{ path = \"/replica\" }}\n");
        format!("{}{extra}", BASE.replace("bind = \"127.0.0.1:5000\"", &format!("bind = \"{a}\"")))
    };
    for (a, b) in
        [("127.0.0.1:5000", "0.0.0.0:5000"), ("0.0.0.0:5000", "127.0.0.2:5000"), ("[::]:5000", "127.0.0.1:5000")]
    {
        let (_, key, msg) = err_at(&two(a, b));
        assert_eq!(key, "listener.bind", "{a} beside {b}: {msg}");
        assert!(msg.contains("already bound by listener"), "{msg}");
    }
    for (a, b) in
        [("127.0.0.1:5000", "127.0.0.2:5000"), ("0.0.0.0:5000", "[::1]:5000"), ("0.0.0.0:5000", "0.0.0.0:5001")]
    {
        let text = two(a, b);
        assert!(Config::parse(Path::new("t.toml"), &text).is_ok(), "{a} beside {b} refused");
    }
}

#[test]
fn node_addresses_are_host_and_port() {
    let ok = ["127.0.0.1:5432", "[::1]:5432", "db-1.example.com:5432", "pg_2:6432", "node.:5432"];
    for a in ok {
        assert!(split_host_port(a).is_some(), "{a} refused");
    }
    assert_eq!(split_host_port("[::1]:5432"), Some(("::1", 5432)));
    // Before: "::1" was host ":" port 1, and the others passed check too.
    let bad = [
        "::1",
        "::1:5432",
        "[::1:5432",
        "host name:5432",
        "http://127.0.0.12:5432",
        "${X}:5432",
        "h:0",
        ":5432",
        "[x]:5432",
        "-a:1",
    ];
    for a in bad {
        assert!(split_host_port(a).is_none(), "{a} accepted");
    }
    let (line, key, msg) = err_at(&BASE.replace("127.0.0.12:5432", "::1"));
    assert_eq!((line, key.as_str()), (8, "node.address"), "{msg}");
}

#[test]
fn a_check_port_of_0_and_two_nodes_at_one_address_are_refused() {
    // Before: both passed check; the first probed port 0, the second held writes as a
    // conflict between the two names of one node.
    let (line, key, _) = err_at(&format!("[defaults]\ncheck_port = 0\n{BASE}"));
    assert_eq!((line, key.as_str()), (2, "check_port"));
    let (line, key, msg) = err_at(&BASE.replace("127.0.0.12:5432", "127.0.0.11:5432"));
    assert_eq!((line, key.as_str()), (8, "node.address"), "{msg}");
    assert!(msg.contains("node \"n1\"'s address too"), "{msg}");
}

#[test]
fn a_nodes_check_settings_in_a_listener_are_refused_not_ignored() {
    // Before: accepted, and the check went on asking port 8008.
    let text = BASE.replace("balance = \"first\"", "balance = \"first\"\ncheck_port = 9999");
    let (line, key, msg) = err_at(&text);
    assert_eq!((line, key.as_str()), (14, "listener.check_port"), "{msg}");
    assert!(msg.contains("belong to [defaults] or a [[node]]"), "{msg}");
}

#[test]
fn only_a_regular_file_of_bounded_size_is_read() {
    // Before: a FIFO without a writer made check and run wait forever, and /dev/zero was
    // read until memory ran out.
    let dir = std::env::temp_dir().join(format!("pgfront-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo.toml");
    let _ = std::fs::remove_file(&fifo);
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for (path, says) in [
        (fifo.as_path(), "not a regular file"),
        (Path::new("/dev/zero"), "not a regular file"),
        (dir.as_path(), "a directory"),
    ] {
        let e = Config::load(path).unwrap_err().to_string();
        assert!(e.contains(says), "{e}");
    }
    let big = dir.join("big.toml");
    std::fs::write(&big, vec![b'#'; LARGEST_FILE as usize + 1]).unwrap();
    assert!(Config::load(&big).unwrap_err().to_string().contains("larger than 16 MiB"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_name_their_own_line_and_key_and_never_a_password() {
    // Before: the check's expect and client_target/fallback_to_leader were blamed on other
    // lines, an array element named itself the key, and an inline table printed a password.
    let ml = BASE.replace(
        "check = { method = \"OPTIONS\", path = \"/master\", expect = 200 }",
        "[listener.check]\npath = \"/master\"\nexpect = 201",
    );
    let (line, key, _) = err_at(&ml);
    assert_eq!((line, key.as_str()), (16, "check.expect"));
    let http = format!(
        "[global]\ncheck_mode = \"http\"\n{}",
        BASE.replace("balance = \"first\"", "balance = \"first\"\nname2 = 1")
    );
    let http = http.replace("name2 = 1", "client_target = true");
    let (line, key, _) = err_at(&http);
    assert_eq!((line, key.as_str()), (16, "client_target"));
    let arr = format!("{BASE}servers = [\n  \"n1\",\n  5,\n]\n");
    let (line, key, _) = err_at(&arr);
    assert_eq!((line, key.as_str()), (17, "servers"));
    let users = format!("{BASE}[web]\nbind = \"127.0.0.1:0\"\nuser = [ {{ name = \"a\", password = 987654321 }} ]\n");
    let e = parse(&users).unwrap_err().to_string();
    assert!(!e.contains("987654321"), "{e}");
}

#[test]
fn two_nodes_asking_one_rest_api_are_refused_with_patroni_checks() {
    // Before: accepted, and at run time both nodes were the one member's role: two leaders,
    // writes held as a conflict (an import of vitabaks' pgbouncer + direct ports did this).
    let text = BASE.replace("address = \"127.0.0.12:5432\"", "address = \"127.0.0.11:6432\"");
    let (line, key, msg) = err_at(&text);
    assert_eq!((line, key.as_str()), (8, "node.check_address"), "{msg}");
    assert!(msg.contains("127.0.0.11:8008"), "{msg}");
    // With HTTP checks each node's answer is its own business.
    assert!(parse(&format!("[global]\ncheck_mode = \"http\"\n{text}")).is_ok());
}

#[test]
fn routes_read_user_and_database_as_postgresql_does() {
    // Before: an empty database (pgjdbc's URL ending in '/') did not fall back to the user,
    // and names past 63 bytes, which PostgreSQL cuts, did not match.
    let r = Route { user: None, database: Some("app".into()), application_name: None, target: Target::Primary };
    assert!(r.matches(Some("app"), Some(""), None));
    assert!(r.matches(Some("app"), None, None));
    assert!(!r.matches(Some("other"), Some(""), None));
    let long = "u".repeat(63);
    let r = Route { user: Some(long.clone()), database: None, application_name: None, target: Target::Primary };
    assert!(r.matches(Some(&format!("{long}xyz")), None, None));
}

#[test]
fn session_counts_beyond_what_a_process_can_hold_are_refused() {
    // Before: accepted by check, and run panicked ("attempt to add with overflow").
    let (line, key, msg) = err_at(&format!("[global]\nmaxconn = 9223372036854775807\n{BASE}"));
    assert_eq!((line, key.as_str()), (2, "global.maxconn"), "{msg}");
    assert!(msg.contains("at most 1000000"), "{msg}");
    let (line, key, _) = err_at(&format!("[defaults]\nmaxconn = 1000001\n{BASE}"));
    assert_eq!((line, key.as_str()), (2, "maxconn"));
    assert!(Config::parse(Path::new("t.toml"), &format!("[global]\nmaxconn = 1000000\n{BASE}")).is_ok());
}

#[test]
fn duplicate_node_name() {
    let text = BASE.replace("name = \"n2\"", "name = \"n1\"");
    let (line, key, msg) = err_at(&text);
    assert_eq!((line, key.as_str()), (7, "node.name"));
    assert!(msg.contains("duplicate"), "{msg}");
}

#[test]
fn duplicate_listener_name_and_bind() {
    let second = "\n[[listener]]\nname = \"primary\"\nbind = \"127.0.0.1:5001\"\ncheck = { path = \"/replica\" }\n";
    let (line, key, _) = err_at(&format!("{BASE}{second}"));
    assert_eq!((line, key.as_str()), (17, "listener.name"));
    let second = "\n[[listener]]\nname = \"other\"\nbind = \"127.0.0.1:5000\"\ncheck = { path = \"/replica\" }\n";
    let (line, key, msg) = err_at(&format!("{BASE}{second}"));
    assert_eq!((line, key.as_str()), (18, "listener.bind"));
    assert!(msg.contains("already bound"), "{msg}");
}

#[test]
fn listener_without_servers() {
    let (line, key, msg) = err_at(&format!("{BASE}servers = []\n"));
    assert_eq!((line, key.as_str()), (15, "listener.servers"));
    assert!(msg.contains("no servers"), "{msg}");
    let only_listener = &BASE[BASE.find("[[listener]]").unwrap()..];
    let (_, key, msg) = err_at(only_listener);
    assert_eq!(key, "listener.servers");
    assert!(msg.contains("no [[node]]"), "{msg}");
}

#[test]
fn unknown_server_reference() {
    let (line, key, msg) = err_at(&format!("{BASE}servers = [\"n1\", \"n9\"]\n"));
    assert_eq!((line, key.as_str()), (15, "listener.servers"));
    assert!(msg.contains("n9"), "{msg}");
}

#[test]
fn bad_values() {
    let (_, key, _) = err_at(&BASE.replace("\"first\"", "\"random\""));
    assert_eq!(key, "listener.balance");
    let (_, key, _) = err_at(&BASE.replace("\"/master\"", "\"master\""));
    assert_eq!(key, "check.path");
    let (_, key, _) = err_at(&BASE.replace("\"OPTIONS\"", "\"POST\""));
    assert_eq!(key, "check.method");
    let (_, key, _) = err_at(&BASE.replace("127.0.0.11:5432", "127.0.0.11"));
    assert_eq!(key, "node.address");
    let (_, key, _) = err_at(&format!("[defaults]\non_marked_down = \"explode\"\n{BASE}"));
    assert_eq!(key, "on_marked_down");
    let (_, key, msg) = err_at(&format!("[global]\nmaxconn = \"many\"\n{BASE}"));
    assert_eq!(key, "maxconn");
    assert!(msg.contains("invalid type"), "{msg}");
}

#[test]
fn no_listener_is_an_error() {
    let (_, key, _) = err_at("[[node]]\nname = \"n1\"\naddress = \"127.0.0.1:5432\"\n");
    assert_eq!(key, "listener");
}

#[test]
fn toml_syntax_error_has_a_line() {
    let (line, _, _) = err_at("[defaults]\nretries = \n");
    assert_eq!(line, 2);
}

#[test]
fn error_display_names_file_line_and_key() {
    let e = parse("[defaults]\nintre = \"3s\"\n").unwrap_err().to_string();
    assert!(e.starts_with("test.toml:2:1: `intre`:"), "{e}");
}

#[test]
fn missing_file_is_a_read_error() {
    let e = Config::load(Path::new("/nonexistent/pgfront.toml")).unwrap_err();
    assert_eq!(e.as_label(), "read");
    assert!(e.to_string().contains("/nonexistent/pgfront.toml"));
}

#[test]
fn passwords_never_reach_debug_output() {
    let c = parse(&format!(
        "{BASE}\n[web]\nbind = \"127.0.0.1:7000\"\n[[web.user]]\nname = \"admin\"\npassword = \"hunter2\"\n"
    ))
    .unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn patroni_mode_needs_patroni_endpoints() {
    let (_, key, msg) = err_at(&BASE.replace("/master", "/custom"));
    assert_eq!(key, "check.path");
    assert!(msg.contains("check_mode"), "{msg}");
    let http = parse(&format!("[global]\ncheck_mode = \"http\"\n{}", BASE.replace("/master", "/custom"))).unwrap();
    assert_eq!(http.global.check_mode, CheckMode::Http);
    let (_, key, _) = err_at(&BASE.replace("expect = 200", "expect = 204"));
    assert_eq!(key, "check.expect");
    let (_, key, _) = err_at(&BASE.replace("/master", "/replica?lag=soon"));
    assert_eq!(key, "check.path");
}

#[test]
fn fallback_to_leader_needs_patroni_mode() {
    let text = format!("[global]\ncheck_mode = \"http\"\n{BASE}fallback_to_leader = true\n");
    let (_, key, _) = err_at(&text);
    assert_eq!(key, "fallback_to_leader");
    assert!(parse(&format!("{BASE}fallback_to_leader = true\n")).unwrap().listeners[0].fallback_to_leader);
}

#[test]
fn users_take_a_clear_password_or_a_hash_and_a_role() {
    let web = |user: &str| format!("{BASE}\n[web]\nbind = \"127.0.0.1:7000\"\n[[web.user]]\n{user}\n");
    let argon = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$3k4BDXdaJ/xsWY32y0rsM6WWO1gxVV9R+9N5TNtPkQU";
    let c = parse(&web(&format!("name = \"ops\"\npassword_hash = \"{argon}\"\nrole = \"admin\""))).unwrap();
    let u = &c.web.unwrap().users[0];
    assert!(matches!(u.secret, Secret::Argon2(_)) && u.role == Role::Admin);
    let c = parse(&web("name = \"viewer\"\npassword = \"x\"")).unwrap();
    assert_eq!(c.web.unwrap().users[0].role, Role::ReadOnly, "read-only unless said otherwise");
    let (_, key, _) = err_at(&web("name = \"a\"\npassword_hash = \"md5:abc\""));
    assert_eq!(key, "web.user.password_hash");
    let (_, key, _) = err_at(&web("name = \"a\""));
    assert_eq!(key, "web.user");
    let (_, key, _) = err_at(&web("name = \"a\"\npassword = \"x\"\nrole = \"god\""));
    assert_eq!(key, "web.user.role");
    // Longer than basic auth is let through: it could never log in.
    let (_, key, msg) = err_at(&web(&format!("name = \"a\"\npassword = \"{}\"", "x".repeat(700))));
    assert_eq!(key, "web.user.password", "{msg}");
    assert!(parse(&web(&format!("name = \"a\"\npassword = \"{}\"", "x".repeat(699)))).is_ok());
}

#[test]
fn routes_and_default_target() {
    let text =
        format!("{BASE}default_target = \"prefer-replica\"\nroutes = [ {{ user = \"etl\", target = \"primary\" }} ]\n");
    let l = &parse(&text).unwrap().listeners[0];
    assert_eq!(l.default_target, Target::PreferReplica);
    assert_eq!(l.routes[0].target, Target::Primary);
    assert!(l.routes[0].matches(Some("etl"), None, None));
    assert!(!l.routes[0].matches(Some("app"), None, None));
    let (_, key, _) = err_at(&format!("{BASE}routes = [ {{ target = \"primary\" }} ]\n"));
    assert_eq!(key, "listener.routes");
    let (_, key, _) = err_at(&format!("{BASE}routes = [ {{ user = \"a\", target = \"mars\" }} ]\n"));
    assert_eq!(key, "listener.routes.target");
    let (_, key, _) = err_at(&format!("{BASE}default_target = \"nowhere\"\n"));
    assert_eq!(key, "listener.default_target");
}

#[test]
fn a_route_on_database_defaults_it_to_the_user() {
    let r = Route { user: None, database: Some("bi".into()), application_name: None, target: Target::Replica };
    assert!(r.matches(Some("bi"), None, None), "no database parameter: the user's name");
    assert!(!r.matches(Some("bi"), Some("other"), None));
}

#[test]
fn max_replay_delay_applies_to_replica_checks() {
    let replica = BASE.replace("/master", "/replica?lag=16MB");
    let c = parse(&format!("[defaults]\nmax_replay_delay = \"30s\"\n{replica}")).unwrap();
    match &c.listeners[0].check.endpoint {
        Some(Endpoint::Replica(f)) => {
            assert_eq!(f.max_delay, Some(Duration::from_secs(30)));
            assert_eq!(f.max_lag, Some(16 << 20));
        }
        other => panic!("{other:?}"),
    }
    // Inherited by a leader listener, it does not apply.
    assert!(parse(&format!("[defaults]\nmax_replay_delay = \"30s\"\n{BASE}")).is_ok());
    let http = format!("[global]\ncheck_mode = \"http\"\n{replica}max_replay_delay = \"30s\"\n");
    let (_, key, _) = err_at(&http);
    assert_eq!(key, "max_replay_delay");
}

#[test]
fn absurd_durations_are_refused_with_their_line() {
    // Before: accepted, and a session task panicked computing its queue deadline.
    let text = format!("[defaults]\ntimeout_queue = \"100000000d\"\n{BASE}");
    let (line, key, message) = err_at(&text);
    assert_eq!(line, 2);
    assert!(key.contains("timeout_queue"), "{key}");
    assert!(message.contains("too long"), "{message}");
    assert!(parse(&format!("[defaults]\ntimeout_client = \"24d\"\n{BASE}")).is_ok(), "HAProxy's range is accepted");
}

#[test]
fn source_applies_to_every_node_unless_a_node_sets_its_own() {
    let text = format!("[global]\nsource = \"127.0.0.2\"\n{BASE}")
        .replace("address = \"127.0.0.12:5432\"", "address = \"127.0.0.12:5432\"\nsource = \"127.0.0.3\"");
    let c = parse(&text).unwrap();
    assert_eq!(c.global.source, Some("127.0.0.2".parse().unwrap()));
    assert_eq!(c.nodes[0].source, Some("127.0.0.2".parse().unwrap()));
    assert_eq!(c.nodes[1].source, Some("127.0.0.3".parse().unwrap()));
    assert_eq!(parse(BASE).unwrap().nodes[0].source, None);
    let (line, key, message) = err_at(&format!("[global]\nsource = \"lb1\"\n{BASE}"));
    assert_eq!((line, key.as_str()), (2, "global.source"));
    assert!(message.contains("not an IP address"), "{message}");
}

#[test]
fn log_sessions_is_all_errors_or_none() {
    assert_eq!(parse(BASE).unwrap().listeners[0].log_sessions, LogSessions::All);
    let c = parse(&format!("[defaults]\nlog_sessions = \"errors\"\n{BASE}")).unwrap();
    assert_eq!(c.listeners[0].log_sessions, LogSessions::Errors);
    let (line, key, message) = err_at(&format!("[defaults]\nlog_sessions = \"some\"\n{BASE}"));
    assert_eq!((line, key.as_str()), (2, "log_sessions"));
    assert!(message.contains("\"errors\""), "{message}");
}

#[test]
fn threads_default_to_the_cpus_and_are_bounded() {
    assert!(parse(BASE).unwrap().global.threads >= 1);
    assert_eq!(parse(&format!("[global]\nthreads = 3\n{BASE}")).unwrap().global.threads, 3);
    let (line, key, _) = err_at(&format!("[global]\nthreads = 0\n{BASE}"));
    assert_eq!((line, key.as_str()), (2, "global.threads"));
}

#[test]
fn client_target_on_a_pass_through_listener_is_warned_about() {
    let text = BASE.replace("balance = \"first\"", "balance = \"first\"\nclient_target = true");
    let w = parse(&text).unwrap().warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("\"primary\"") && w[0].contains("pgfront.target is ignored"), "{}", w[0]);
    assert!(parse(BASE).unwrap().warnings().is_empty());
}

#[test]
fn log_format_is_text_or_json() {
    assert_eq!(parse(BASE).unwrap().global.log_format, LogFormat::Text);
    let c = parse(&format!("[global]\nlog_format = \"json\"\n{BASE}")).unwrap();
    assert_eq!(c.global.log_format, LogFormat::Json);
    let (line, key, message) = err_at(&format!("[global]\nlog_format = \"yaml\"\n{BASE}"));
    assert_eq!((line, key.as_str()), (2, "global.log_format"));
    assert!(message.contains("\"text\" or \"json\""), "{message}");
}

const DISCOVERY: &str = r#"
[global]
discovery = "patroni"
discovery_seeds = ["127.0.0.51:8008"]
discovery_allow = ["127.0.0.48/29"]

[[node]]
name = "node1"
address = "127.0.0.11:6432"
maxconn = 7

[[listener]]
name = "primary"
bind = "127.0.0.1:0"
balance = "first"
check = { path = "/primary" }

[[listener]]
name = "pinned"
bind = "127.0.0.1:0"
servers = ["node1"]
check = { path = "/replica" }
"#;

fn members(names: &[&str]) -> Vec<Member> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| Member {
            name: (*n).into(),
            address: format!("127.0.0.5{}:5432", i + 1),
            check_address: format!("127.0.0.5{}:8008", i + 1),
            leaving: false,
        })
        .collect()
}

#[test]
fn discovery_settings_are_validated() {
    let c = parse(DISCOVERY).unwrap();
    let d = c.global.discovery.as_ref().unwrap();
    assert_eq!(d.seeds, ["127.0.0.51:8008"]);
    assert_eq!(d.allow, [Cidr::parse("127.0.0.48/29").unwrap()]);
    assert_eq!(d.inter, Duration::from_secs(2), "the checks' inter unless discovery_inter says");
    assert!(c.listeners[0].every_node && !c.listeners[1].every_node);
    assert!(parse(BASE).unwrap().global.discovery.is_none());

    let (line, key, msg) = err_at(&DISCOVERY.replace("discovery_allow = [\"127.0.0.48/29\"]\n", ""));
    assert_eq!((line, key.as_str()), (3, "global.discovery_allow"), "{msg}");
    let (_, key, msg) = err_at(&DISCOVERY.replace("\"127.0.0.48/29\"", "\"127.0.0.49/29\""));
    assert_eq!(key, "global.discovery_allow");
    assert!(msg.contains("did you mean 127.0.0.48/29"), "{msg}");
    let (line, key, _) = err_at(&DISCOVERY.replace("[\"127.0.0.51:8008\"]", "[]"));
    assert_eq!((line, key.as_str()), (4, "global.discovery_seeds"));
    let (_, key, _) = err_at(&DISCOVERY.replace("127.0.0.51:8008", "127.0.0.51"));
    assert_eq!(key, "global.discovery_seeds");
    let (_, key, _) = err_at(&DISCOVERY.replace("\"patroni\"", "\"consul\""));
    assert_eq!(key, "global.discovery");
    let (line, key, msg) = err_at(&DISCOVERY.replace("discovery = \"patroni\"\n", ""));
    assert_eq!((line, key.as_str()), (3, "global.discovery_seeds"));
    assert!(msg.contains("needs discovery"), "{msg}");
    let (_, key, _) = err_at(&DISCOVERY.replace("[global]\n", "[global]\ndiscovery_inter = \"0s\"\n"));
    assert_eq!(key, "global.discovery_inter");
    assert!(c.warnings().is_empty());
    let open = parse(&DISCOVERY.replace("\"127.0.0.48/29\"", "\"0.0.0.0/0\"")).unwrap();
    assert!(open.warnings().iter().any(|w| w.contains("0.0.0.0/0 allows every address")), "{:?}", open.warnings());
    let fast = parse(&DISCOVERY.replace("[global]\n", "[global]\ndiscovery_inter = \"10s\"\n")).unwrap();
    assert_eq!(fast.global.discovery.unwrap().inter, Duration::from_secs(10));
}

#[test]
fn with_discovery_a_listener_may_start_without_nodes() {
    let text = DISCOVERY.split("[[node]]").next().unwrap().to_owned()
        + "[[listener]]\nname = \"replicas\"\nbind = \"127.0.0.1:0\"\ncheck = { path = \"/replica\" }\n";
    let c = parse(&text).unwrap();
    assert!(c.nodes.is_empty() && c.listeners[0].servers.is_empty());
    let without =
        text.replace("discovery = \"patroni\"\n", "").replace("discovery_seeds", "#").replace("discovery_allow", "#");
    assert!(err_at(&without).2.contains("no [[node]] is defined"));
}

#[test]
fn declared_and_discovered_nodes_merge() {
    let c = parse(DISCOVERY).unwrap();
    let merged = c.with_members(&members(&["node1", "node3", "node2"]));
    let names: Vec<&str> = merged.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["node1", "node2", "node3"], "declared first, then discovered by name");
    let n1 = &merged.nodes[0];
    assert_eq!((n1.address.as_str(), n1.maxconn, n1.origin), ("127.0.0.11:6432", Some(7), Origin::Declared));
    let n2 = &merged.nodes[1];
    assert_eq!((n2.address.as_str(), n2.check_address.as_str()), ("127.0.0.53:5432", "127.0.0.53:8008"));
    assert_eq!((n2.maxconn, n2.origin), (None, Origin::Discovered));
    assert_eq!(merged.listeners[0].servers, [0, 1, 2], "a listener of every node gets the members");
    assert_eq!(merged.listeners[1].servers, [0], "a listener that lists its servers keeps them");
    assert_eq!(c.with_members(&[]), c);
    let mut gone = members(&["node2"]);
    gone[0].leaving = true;
    assert_eq!(c.with_members(&gone).nodes[1].origin, Origin::Leaving);
    // Without discovery, members are never merged.
    assert_eq!(parse(BASE).unwrap().with_members(&members(&["x"])).nodes.len(), 2);
}

#[test]
fn min_lsn_wait_defaults_overrides_and_errors() {
    let c = parse(BASE).unwrap();
    assert_eq!(c.listeners[0].min_lsn_wait, Duration::from_millis(200));
    let c = parse(&format!("[defaults]\nmin_lsn_wait = \"50ms\"\n{BASE}")).unwrap();
    assert_eq!(c.listeners[0].min_lsn_wait, Duration::from_millis(50));
    let c = parse(&format!("[defaults]\nmin_lsn_wait = \"50ms\"\n{BASE}min_lsn_wait = \"0s\"\n")).unwrap();
    assert_eq!(c.listeners[0].min_lsn_wait, Duration::ZERO, "zero: straight to the leader");
    let (line, key, msg) = err_at(&format!("[defaults]\n\nmin_lsn_wait = \"200\"\n{BASE}"));
    assert_eq!((line, key.as_str()), (3, "min_lsn_wait"), "{msg}");
    assert!(msg.contains("with a unit"), "{msg}");
    let (line, key, msg) = err_at(&format!("[global]\ncheck_mode = \"http\"\n{BASE}min_lsn_wait = \"1s\"\n"));
    assert_eq!((line, key.as_str()), (17, "min_lsn_wait"), "{msg}");
    assert!(msg.contains("patroni"), "{msg}");
}

const CLUSTERS: &str = r#"
[defaults]
inter = "3s"

[[cluster]]
name = "billing"

[[cluster.node]]
name = "node1"
address = "127.0.0.31:5432"

[[cluster.node]]
name = "node2"
address = "127.0.0.32:5432"

[[cluster.listener]]
name = "billing-primary"
bind = "127.0.0.1:5100"
balance = "first"
check = { path = "/primary" }

[[cluster.listener]]
name = "billing-replicas"
bind = "127.0.0.1:5101"
check = { path = "/replica" }
inter = "1s"

[[cluster]]
name = "orders"
discovery = "patroni"
discovery_seeds = ["127.0.0.41:8008"]
discovery_allow = ["127.0.0.40/29"]

[[cluster.node]]
name = "node1"
address = "127.0.0.41:5432"

[[cluster.listener]]
name = "orders-primary"
bind = "127.0.0.1:5200"
balance = "first"
check = { path = "/primary" }

[web]
bind = "127.0.0.1:7100"
"#;

#[test]
fn clusters_are_parsed_into_one_view_each() {
    let c = parse(CLUSTERS).unwrap();
    assert!(c.nodes.is_empty() && c.listeners.is_empty(), "a multi-cluster file has no top-level nodes");
    let views = c.views();
    let names: Vec<&str> = views.iter().map(|v| v.cluster.as_str()).collect();
    assert_eq!(names, ["billing", "orders"]);
    let (billing, orders) = (&views[0], &views[1]);
    assert_eq!(billing.nodes.len(), 2);
    assert_eq!(billing.listeners[0].servers, [0, 1]);
    assert_eq!(billing.listeners[0].check.timing.inter, Duration::from_secs(3), "[defaults] apply to every cluster");
    assert_eq!(billing.listeners[1].check.timing.inter, Duration::from_secs(1), "a listener overrides them");
    assert!(billing.global.discovery.is_none());
    let d = orders.global.discovery.as_ref().expect("discovery is per cluster");
    assert_eq!(d.seeds, ["127.0.0.41:8008"]);
    assert_eq!(orders.nodes[0].address, "127.0.0.41:5432", "node names may repeat across clusters");
    assert_eq!(orders.web, c.web, "every view has the web surface");
    assert!(c.global.discovery.is_none());
    let binds: Vec<String> = c.all_listeners().map(|l| l.bind.to_string()).collect();
    assert_eq!(binds, ["127.0.0.1:5100", "127.0.0.1:5101", "127.0.0.1:5200"]);
}

#[test]
fn a_file_without_clusters_is_one_unnamed_cluster() {
    let c = parse(BASE).unwrap();
    assert!(c.clusters.is_empty());
    let views = c.views();
    assert_eq!(views.len(), 1);
    assert_eq!(views[0], c, "the view is the file itself");
    assert_eq!(views[0].cluster, "");
    for f in ["conf/local.toml", "conf/pgfront.toml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
        let shipped = Config::load(&path).unwrap();
        assert_eq!(shipped.views().len(), 1, "{f} is one unnamed cluster");
        assert_eq!(shipped.views()[0].cluster, "", "{f}");
    }
}

#[test]
fn cluster_errors_name_the_line_and_key() {
    // A top-level [[listener]] mixed with [[cluster]].
    let mixed =
        format!("[[listener]]\nname = \"x\"\nbind = \"127.0.0.1:6000\"\ncheck = {{ path = \"/primary\" }}\n{CLUSTERS}");
    let (line, key, msg) = err_at(&mixed);
    assert_eq!((line, key.as_str()), (2, "listener"), "{msg}");
    assert!(msg.contains("cannot be mixed with [[cluster]]"), "{msg}");
    let mixed = format!("[[node]]\nname = \"x\"\naddress = \"127.0.0.1:5432\"\n{CLUSTERS}");
    let (line, key, msg) = err_at(&mixed);
    assert_eq!((line, key.as_str()), (2, "node"), "{msg}");
    // Discovery is per cluster.
    let (line, key, _) = err_at(&format!("[global]\ndiscovery = \"patroni\"\n{CLUSTERS}"));
    assert_eq!((line, key.as_str()), (2, "global.discovery"));
    // Names.
    let dup = CLUSTERS.replace("name = \"orders\"", "name = \"billing\"");
    let (line, key, msg) = err_at(&dup);
    assert_eq!((line, key.as_str()), (29, "cluster.name"), "{msg}");
    assert!(msg.contains("duplicate cluster name \"billing\""), "{msg}");
    let (_, key, _) = err_at(&CLUSTERS.replace("name = \"orders\"", "name = \"\""));
    assert_eq!(key, "cluster.name");
    let (line, key, msg) = err_at(&CLUSTERS.replace("\"orders-primary\"", "\"billing-primary\""));
    assert_eq!((line, key.as_str()), (39, "listener.name"), "{msg}");
    assert!(msg.contains("duplicate listener name"), "{msg}");
    // Binds are unique across clusters.
    let (line, key, msg) = err_at(&CLUSTERS.replace("127.0.0.1:5200", "127.0.0.1:5101"));
    assert_eq!((line, key.as_str()), (40, "listener.bind"), "{msg}");
    assert!(msg.contains("already bound by listener \"billing-replicas\""), "{msg}");
    // A listener may name only its own cluster's nodes.
    let foreign = CLUSTERS.replace("name = \"orders-primary\"", "name = \"orders-primary\"\nservers = [\"node2\"]");
    let (_, key, msg) = err_at(&foreign);
    assert_eq!(key, "listener.servers", "{msg}");
    // A cluster without listeners; unknown keys.
    let empty = CLUSTERS
        .replace("[[cluster]]\nname = \"orders\"", "[[cluster]]\nname = \"empty\"\n\n[[cluster]]\nname = \"orders\"");
    let (_, key, msg) = err_at(&empty);
    assert_eq!(key, "cluster.listener", "{msg}");
    let (_, _, msg) = err_at(&CLUSTERS.replace("name = \"orders\"\n", "name = \"orders\"\nnodes = 3\n"));
    assert!(msg.contains("unknown field `nodes`"), "{msg}");
    // Discovery keys of a cluster are checked there, with the cluster's key.
    let (line, key, _) = err_at(&CLUSTERS.replace("discovery = \"patroni\"\n", ""));
    assert_eq!((line, key.as_str()), (30, "cluster.discovery_seeds"));
}

#[test]
fn an_error_in_an_inline_table_names_its_own_key() {
    // Before: the key was everything before the line's first `=`: `{ name`.
    let users = format!("{BASE}[web]\nbind = \"127.0.0.1:0\"\nuser = [\n  {{ name = \"admin\", role = \"admin\", password = 987654321 }},\n]\n");
    let (line, key, msg) = err_at(&users);
    assert_eq!((line, key.as_str()), (18, "user.password"), "{msg}");
    assert!(!msg.contains("987654321"), "{msg}");
    let one = format!(
        "{BASE}[web]\nbind = \"127.0.0.1:0\"\nuser = [ {{ name = \"a\", role = \"admin\", password = 987654321 }} ]\n"
    );
    let (_, key, msg) = err_at(&one);
    assert_eq!(key, "user.password", "{msg}");
    assert!(!msg.contains("987654321"), "{msg}");
    // A quoted `,` or `=` in a value does not start a pair; the check's own key is named.
    let check = BASE.replace("expect = 200", "expect = \"a, b = c\"");
    let (_, key, _) = err_at(&check);
    assert_eq!(key, "check.expect");
}

#[test]
fn query_parameters_patroni_would_not_read_as_pgfront_does_are_refused_with_line_and_key() {
    // Before: Endpoint::parse dropped the query of /health, /readiness and the leader
    // paths, so /readiness?lag=16MB admitted a replica however far behind, without a word.
    for (path, says) in [
        ("/readiness?lag=16MB", "maximum_lag_on_failover"),
        ("/health?lag=16MB", "Patroni ignores lag="),
        ("/master?tag_dc=east", "Patroni ignores"),
        ("/liveness?x=1", "takes no query parameters"),
        ("/health?color=red", "tag_KEY="),
    ] {
        let (line, key, msg) = err_at(&BASE.replace("/master", path));
        assert_eq!((line, key.as_str()), (14, "check.path"), "{path}");
        assert!(msg.contains(says), "{path}: {msg}");
    }
    assert!(parse(&BASE.replace("/master", "/health?tag_dc=east")).is_ok(), "tags on /health are Patroni's");
}
