//! `pgfront status` against a running pgfront: the table, the JSON, the exit codes.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(10);
const BIN: &str = env!("CARGO_BIN_EXE_pgfront");

/// Runs `pgfront SUBCOMMAND ARGS` with only the credentials given in `env`: exit code,
/// stdout, stderr.
async fn run(sub: &str, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let (sub, args, env): (String, Vec<String>, Vec<(String, String)>) = (
        sub.to_owned(),
        args.iter().map(|a| a.to_string()).collect(),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    );
    tokio::task::spawn_blocking(move || {
        let out = Command::new(BIN)
            .arg(sub)
            .args(&args)
            .env_remove("PGFRONT_USER")
            .env_remove("PGFRONT_PASSWORD")
            .envs(env)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_the_cluster_and_says_whether_a_leader_is_admitted() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    let pg = start(&lab.config(""));
    eventually(LIMIT, "all up", || {
        let rt = pg.shared().runtime();
        rt.listener("primary").unwrap().servers_up() == 1 && rt.listener("replicas").unwrap().servers_up() == 2
    })
    .await;
    let url = format!("http://{}", pg.web_addr().unwrap());

    // The password from the environment: never on the command line.
    let (code, out, err) = status(&["--url", &url, "--user", "admin"], &[("PGFRONT_PASSWORD", "secret")]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("leader node1"), "{out}");
    assert!(out.contains("| node1 ") && out.contains("primary (leader)"), "{out}");
    assert!(out.contains("listener replicas"), "{out}");
    assert!(!out.contains("secret") && !err.contains("secret"), "the password is never echoed");

    // For scripts: the JSON itself.
    let (code, out, _) = status(&["--url", &url, "--user", "admin", "--json"], &[("PGFRONT_PASSWORD", "secret")]).await;
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["leader"], "node1");

    // A wrong password: a clear error, exit 2 (pgfront could not be read).
    let (code, _, err) = status(&["--url", &url, "--user", "admin", "--password", "wrong"], &[]).await;
    assert_eq!(code, 2);
    assert!(err.contains("refused the credentials"), "{err}");
    // A user without a password: said so before asking (it was sent without credentials
    // and reported as refused).
    let (code, _, err) = status(&["--url", &url, "--user", "admin"], &[]).await;
    assert_eq!(code, 2);
    assert!(err.contains("--user needs a password"), "{err}");

    // No leader admitted: exit 1.
    for n in &lab.nodes {
        n.rest.patroni("replica", 9);
    }
    eventually(LIMIT, "leader gone", || pg.shared().runtime().listener("primary").unwrap().servers_up() == 0).await;
    let (code, out, _) = status(&["--url", &url, "--user", "viewer"], &[("PGFRONT_PASSWORD", "look")]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("NO LEADER"), "{out}");

    // Nothing listening: exit 2.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (code, _, err) = status(&["--url", &format!("http://{closed}")], &[]).await;
    assert_eq!(code, 2);
    assert!(err.contains("cannot reach"), "{err}");
}

async fn status(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    run("status", args, env).await
}

async fn ctl(args: &[&str], password: &str) -> (i32, String, String) {
    run("ctl", args, &[("PGFRONT_PASSWORD", password)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_acts_through_the_admin_api_for_admins_only() {
    let lab = Lab::start(3).await;
    lab.leader(0);
    let pg = start(&lab.config(""));
    eventually(LIMIT, "all up", || pg.shared().runtime().listener("replicas").unwrap().servers_up() == 2).await;
    let url = format!("http://{}", pg.web_addr().unwrap());
    let admin_of = |listener: &str, server: &str| {
        let rt = pg.shared().runtime();
        rt.listener(listener).unwrap().servers.iter().find(|s| s.name == server).unwrap().admin()
    };
    use pgfront::cluster::AdminState;

    // Drain node2 on every listener that has it.
    let (code, out, err) = ctl(&["drain", "node2", "--url", &url, "--user", "admin"], "secret").await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("replicas/node2: set DRAIN") && out.contains("primary/node2: set DRAIN"), "{out}");
    assert_eq!(admin_of("replicas", "node2"), AdminState::Drain);
    // Sessions keep away from it: all to node3.
    let addr = pg.listener_addr("replicas").unwrap();
    for _ in 0..4 {
        assert_eq!(connect(addr).await.unwrap().server, "node3");
    }
    // One listener only.
    let (code, _, _) =
        ctl(&["ready", "node2", "--listener", "replicas", "--url", &url, "--user", "admin"], "secret").await;
    assert_eq!(code, 0);
    assert_eq!(admin_of("replicas", "node2"), AdminState::Ready);
    assert_eq!(admin_of("primary", "node2"), AdminState::Drain);

    // A wrong password: a clear error, exit 1, nothing changed.
    let (code, _, err) = ctl(&["maint", "node3", "--url", &url, "--user", "admin"], "wrong").await;
    assert_eq!(code, 1);
    assert!(err.contains("refused the credentials"), "{err}");
    assert_eq!(admin_of("replicas", "node3"), AdminState::Ready);
    // A read-only user: refused.
    let (code, _, err) = ctl(&["maint", "node3", "--url", &url, "--user", "viewer"], "look").await;
    assert_eq!(code, 1);
    assert!(err.contains("admin role required"), "{err}");
    assert_eq!(admin_of("replicas", "node3"), AdminState::Ready);
    // An unknown node.
    let (code, _, err) = ctl(&["drain", "node9", "--url", &url, "--user", "admin"], "secret").await;
    assert_eq!(code, 1);
    assert!(err.contains("node9"), "{err}");
    // The API takes JSON only: a cross-site form cannot drive it.
    let mut s = tokio::net::TcpStream::connect(pg.web_addr().unwrap()).await.unwrap();
    let body = "action=drain&node=node3";
    let req = format!("POST /api/admin HTTP/1.0\r\nAuthorization: Basic YWRtaW46c2VjcmV0\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    tokio::io::AsyncWriteExt::write_all(&mut s, req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut s, &mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.0 415") || answer.starts_with("HTTP/1.1 415"), "{answer}");
    assert_eq!(admin_of("replicas", "node3"), AdminState::Ready);
}
