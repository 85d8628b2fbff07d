//! `pgfront status` against a running pgfront: the table, the JSON, the exit codes.

mod support;

use std::process::Command;
use std::time::Duration;

use support::*;

const LIMIT: Duration = Duration::from_secs(10);
const BIN: &str = env!("CARGO_BIN_EXE_pgfront");

async fn status(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let (args, env): (Vec<String>, Vec<(String, String)>) = (
        args.iter().map(|a| a.to_string()).collect(),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    );
    tokio::task::spawn_blocking(move || {
        let out = Command::new(BIN)
            .arg("status")
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
        let rt = pg.shared().runtime.load();
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

    // No leader admitted: exit 1.
    for n in &lab.nodes {
        n.rest.patroni("replica", 9);
    }
    eventually(LIMIT, "leader gone", || pg.shared().runtime.load().listener("primary").unwrap().servers_up() == 0)
        .await;
    let (code, out, _) = status(&["--url", &url, "--user", "viewer"], &[("PGFRONT_PASSWORD", "look")]).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("NO LEADER"), "{out}");

    // Nothing listening: exit 2.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (code, _, err) = status(&["--url", &format!("http://{closed}")], &[]).await;
    assert_eq!(code, 2);
    assert!(err.contains("cannot reach"), "{err}");
}
