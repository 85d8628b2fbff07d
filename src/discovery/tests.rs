use super::task::leaving;
use super::*;

/// What Patroni 4.1 answers to `GET /cluster` (trimmed to the keys that matter, plus some
/// it adds that pgfront ignores).
const CLUSTER: &str = r#"{"members": [
 {"name": "node1", "role": "leader", "state": "running", "api_url": "http://127.0.0.51:8008/patroni",
  "host": "127.0.0.51", "port": 5432, "timeline": 1},
 {"name": "node2", "role": "replica", "state": "streaming", "api_url": "https://127.0.0.52:8008/patroni",
  "host": "127.0.0.52", "port": 5433, "timeline": 1, "receive_lag": 0, "replay_lag": 0, "lag": 0,
  "tags": {"nofailover": true}},
 {"name": "node3", "role": "replica", "state": "starting", "api_url": "http://127.0.0.53:8008/patroni"}
], "scope": "lab"}"#;

fn allow(blocks: &[&str]) -> Vec<Cidr> {
    blocks.iter().map(|b| Cidr::parse(b).unwrap()).collect()
}

#[test]
fn parses_patronis_member_list() {
    let answer = parse_cluster(CLUSTER.as_bytes()).unwrap();
    assert_eq!(answer.scope.as_deref(), Some("lab"));
    let listed = answer.members;
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0].name, "node1");
    assert_eq!(listed[0].host.as_deref(), Some("127.0.0.51"));
    assert_eq!(listed[0].port, Some(5432));
    assert_eq!(listed[0].api.as_deref(), Some("127.0.0.51:8008"));
    assert!(!listed[0].https);
    assert!(listed[1].https);
    assert_eq!((listed[1].role.as_str(), listed[1].state.as_str()), ("replica", "streaming"));
    assert_eq!(listed[2].host, None, "a member that has not published its address yet");
}

#[test]
fn refuses_what_is_not_a_member_list() {
    assert!(parse_cluster(b"").is_err());
    assert!(parse_cluster(b"{}").is_err());
    assert!(parse_cluster(b"{\"members\": 3}").is_err());
    assert!(parse_cluster(b"<html>").is_err());
    assert_eq!(parse_cluster(b"{\"members\": []}").unwrap().members, vec![]);
}

#[test]
fn api_urls_give_the_rest_address() {
    assert_eq!(api_address("http://10.0.0.1:8008/patroni"), Some(("10.0.0.1:8008".into(), false)));
    assert_eq!(api_address("HTTPS://10.0.0.1:8443/patroni"), Some(("10.0.0.1:8443".into(), true)));
    assert_eq!(api_address("http://10.0.0.1/patroni"), Some(("10.0.0.1:80".into(), false)));
    assert_eq!(api_address("http://[fd00::1]:8008/patroni"), Some(("[fd00::1]:8008".into(), false)));
    assert_eq!(api_address("http://u:p@10.0.0.1:8008/"), None, "no credentials in a followed URL");
    assert_eq!(api_address("ftp://10.0.0.1:8008/"), None);
    assert_eq!(api_address("10.0.0.1:8008"), None);
}

#[test]
fn only_members_inside_the_allow_list_are_used() {
    let listed = parse_cluster(CLUSTER.as_bytes()).unwrap().members;
    let (members, refused) = admit(&listed, &allow(&["127.0.0.48/29"]));
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["node1", "node2"]);
    assert_eq!(members[1].address, "127.0.0.52:5433");
    assert_eq!(members[1].check_address, "127.0.0.52:8008");
    assert_eq!(
        refused,
        vec![Refused { name: "node3".into(), why: "no PostgreSQL host and port in the answer".into() }]
    );

    let (members, refused) = admit(&listed, &allow(&["127.0.0.51/32"]));
    assert_eq!(members.len(), 1);
    assert!(refused.iter().any(|r| r.name == "node2" && r.why.contains("127.0.0.52 is outside discovery_allow")));
}

#[test]
fn a_forged_answer_cannot_point_anywhere() {
    let forged = r#"{"members": [
      {"name": "evil", "host": "203.0.113.7", "port": 5432, "api_url": "http://127.0.0.51:8008/patroni"},
      {"name": "evil2", "host": "127.0.0.51", "port": 5432, "api_url": "http://203.0.113.7:8008/patroni"},
      {"name": "named", "host": "db.example.com", "port": 5432, "api_url": "http://127.0.0.51:8008/patroni"},
      {"name": "bad name!", "host": "127.0.0.51", "port": 5432, "api_url": "http://127.0.0.51:8008/patroni"},
      {"name": "twice", "host": "127.0.0.51", "port": 5432, "api_url": "http://127.0.0.51:8008/patroni"},
      {"name": "twice", "host": "127.0.0.52", "port": 5432, "api_url": "http://127.0.0.52:8008/patroni"}
    ]}"#;
    let (members, refused) = admit(&parse_cluster(forged.as_bytes()).unwrap().members, &allow(&["127.0.0.0/8"]));
    assert_eq!(members.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["twice"]);
    assert_eq!(members[0].address, "127.0.0.51:5432", "the first listing wins");
    assert_eq!(refused.len(), 5, "{refused:?}");
    assert!(refused.iter().any(|r| r.name == "named" && r.why.contains("outside")), "a name is never inside");
}

fn member(name: &str) -> Member {
    Member {
        name: name.into(),
        address: format!("127.0.0.5{}:5432", name.len()),
        check_address: "127.0.0.51:8008".into(),
        leaving: false,
    }
}

#[test]
fn a_member_that_left_stays_only_while_it_holds_sessions() {
    let before = vec![member("a"), member("b"), member("c")];
    let now = vec![member("a")];
    let kept = leaving(&before, &now, |n| n == "b");
    assert_eq!(kept, vec![Member { leaving: true, ..member("b") }]);
    assert!(leaving(&before, &now, |_| false).is_empty());
    assert!(leaving(&before, &before, |_| true).is_empty(), "listed members are not leaving");
}
