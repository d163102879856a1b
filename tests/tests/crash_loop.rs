//! Crash tolerance under load: 20 cycles of `kill -9` at
//! a random moment while SIPp registers users, SIPp makes calls (to callees
//! registered at a SIPp UAS) and gRPC clients create users, then a restart
//! on the same data directory. After every restart:
//! - the log opens without manual repair (the node starts);
//! - every REGISTER that got a `200 OK` is in the log exactly once (one
//!   ContactRegistered/ContactRefreshed whose correlation id is its Call-ID);
//! - every acknowledged CreateUser is there exactly once (one UserCreated);
//! - global positions run 1..N without a gap and every stream's versions
//!   run 0..n without a gap;
//! - no call leg has two ends, and none stays in progress (the legs cut by
//!   the crash are closed at start-up).

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dialtone_api::pb::CreateUserRequest;
use support::sip::{
    bounded, create_domain, create_users, eventually, sipp_dir, spawn_sipp, with_password,
    CallPairs, Sipp, DOMAIN, PASSWORD,
};
use support::{read_all, TestNode};

const CYCLES: usize = 20;
const SIPP_USERS: usize = 200;
const CALL_PAIRS: usize = 100;

/// Call-IDs of the REGISTERs SIPp saw a `200 OK` for.
fn acknowledged_registrations(received: &[String]) -> Vec<String> {
    received
        .iter()
        .filter(|m| m.starts_with("SIP/2.0 200") && m.contains("REGISTER"))
        .filter_map(|m| {
            m.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                (name.trim().eq_ignore_ascii_case("Call-ID") || name.trim() == "i")
                    .then(|| value.trim().to_owned())
            })
        })
        .collect()
}

/// A cheap pseudo-random number (no extra dependency): the kill moment.
fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    h.finish() % n
}

#[tokio::test]
async fn twenty_kill_9_cycles_under_load_lose_nothing_acknowledged() {
    bounded(400, async {
        let dir = tempfile::tempdir().unwrap();
        let args = ["--sip-challenge-md5-first", "--sip-source-rate", "0"];
        let mut node = TestNode::start(dir.path(), &args).await.unwrap();
        create_domain(&node, DOMAIN).await.unwrap();
        let names: Vec<String> = (0..SIPP_USERS).map(|i| format!("phone{i:03}")).collect();
        create_users(&node, DOMAIN, &names, PASSWORD, 8)
            .await
            .unwrap();
        let credentials = with_password(&names);

        // Callers and callees; every callee's contact is the one UAS, which
        // runs through every cycle (killed when the test ends), so that its
        // port is never free for another process to take.
        let work = dir.path().join("calls");
        let uas_args = ["-nostdin", "-timeout", "450s"];
        let pairs = CallPairs::provision(&node, CALL_PAIRS, &work, &uas_args)
            .await
            .unwrap();

        let mut legs = 0;
        let mut registered: Vec<String> = Vec::new();
        let mut created: Vec<String> = Vec::new();
        for cycle in 0..CYCLES {
            // SIPp registers every phone (300/s) while 4 gRPC clients create
            // users, until the node dies under them.
            let sipp = Sipp::new("register_auth.xml", node.sip_addr(), dir.path())
                .users(&credentials)
                .rate(300)
                .timeout_secs(6)
                .spawn();
            // Calls: 100/s, each held 300 ms.
            let target = node.sip_addr().to_string();
            let uac = spawn_sipp(&work, Ipv4Addr::LOCALHOST, |_| {
                let scenario = sipp_dir().join("load_uac_auth.xml");
                let mut args: Vec<OsString> =
                    vec![target.clone().into(), "-sf".into(), scenario.into()];
                args.extend(["-inf", "calls.csv", "-key", "domain", DOMAIN].map(OsString::from));
                args.extend(["-auth_uri", DOMAIN, "-r", "100", "-d", "300"].map(OsString::from));
                args.extend(["-nostdin", "-timeout", "8s"].map(OsString::from));
                args
            })
            .await
            .unwrap();
            let acked = Arc::new(Mutex::new(Vec::new()));
            let mut creators = Vec::new();
            for client in 0..4 {
                let mut provisioning = node.provisioning().await.unwrap();
                let acked = acked.clone();
                creators.push(tokio::spawn(async move {
                    for i in 0.. {
                        let username = format!("c{cycle:02}x{client}x{i:04}");
                        let request = CreateUserRequest {
                            domain: DOMAIN.into(),
                            username: username.clone(),
                            password: PASSWORD.into(),
                            request_id: format!("req-{username}"),
                            ..Default::default()
                        };
                        match provisioning.create_user(request).await {
                            Ok(_) => acked.lock().unwrap().push(username),
                            Err(_) => break,
                        }
                    }
                }));
            }
            let wait = 200 + random_below(1_200);
            tokio::time::sleep(Duration::from_millis(wait)).await;
            node.kill9().await.unwrap();
            for c in creators {
                let _ = tokio::time::timeout(Duration::from_secs(10), c).await;
            }
            let run = sipp.await.unwrap().unwrap();
            drop(uac); // killed
            registered.extend(acknowledged_registrations(&run.received));
            created.extend(acked.lock().unwrap().drain(..));

            // The log opens as it is.
            node = TestNode::start(dir.path(), &args).await.unwrap_or_else(|e| {
                panic!("cycle {cycle}: the node did not start after kill -9: {e:#}")
            });
            legs = check(&node, cycle, &registered, &created).await;
        }
        assert!(
            registered.len() > CYCLES * 20,
            "too few acknowledged REGISTERs to mean anything: {}",
            registered.len()
        );
        assert!(created.len() > CYCLES * 5, "too few creates: {}", created.len());
        assert!(legs > CYCLES * 10, "too few call legs: {legs}");
        eprintln!(
            "{CYCLES} kill -9 cycles: {} acknowledged REGISTERs and {} acknowledged creates, all in the log exactly once; {legs} call legs, each ended exactly once",
            registered.len(),
            created.len()
        );
        node.stop().await.unwrap();
        drop(pairs); // kills the UAS
    })
    .await
}

/// No leg ended twice; after the start-up clean-up, none in progress.
/// Returns the number of legs.
async fn check_call_legs(node: &TestNode, cycle: usize) -> usize {
    let closed = eventually(Duration::from_secs(10), "call legs closed", || async {
        let mut legs: HashMap<(String, String), (bool, usize)> = HashMap::new();
        for e in read_all(node).await? {
            if e.category != "call" {
                continue;
            }
            let data: serde_json::Value = serde_json::from_str(&e.data_json)?;
            let call_id = data["call_id"].as_str().unwrap_or_default().to_owned();
            let leg = legs.entry((e.stream.clone(), call_id)).or_default();
            match e.r#type.as_str() {
                "CallStarted" => leg.0 = true,
                "CallEnded" | "CallFailed" => leg.1 += 1,
                _ => {}
            }
        }
        let twice = legs.iter().find(|(_, (_, ends))| *ends > 1);
        assert!(
            twice.is_none(),
            "cycle {cycle}: a leg ended twice: {twice:?}"
        );
        let open = legs.values().filter(|(_, ends)| *ends == 0).count();
        Ok((open == 0).then_some(legs.len()))
    })
    .await;
    closed.unwrap_or_else(|e| panic!("cycle {cycle}: {e:#}"))
}

async fn check(node: &TestNode, cycle: usize, registered: &[String], created: &[String]) -> usize {
    let legs = check_call_legs(node, cycle).await;
    let events = read_all(node).await.unwrap();
    // Positions 1..N, no gap; versions 0..n per stream, no gap.
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.position, i as u64 + 1, "cycle {cycle}: position gap");
    }
    let mut versions: BTreeMap<&str, u64> = BTreeMap::new();
    for e in &events {
        let next = versions.entry(e.stream.as_str()).or_insert(0);
        assert_eq!(
            e.version, *next,
            "cycle {cycle}: version gap in {}",
            e.stream
        );
        *next += 1;
    }
    // Every acknowledged REGISTER, exactly once.
    let mut contact_events: HashMap<&str, usize> = HashMap::new();
    for e in &events {
        if e.r#type == "ContactRegistered" || e.r#type == "ContactRefreshed" {
            *contact_events.entry(e.correlation_id.as_str()).or_default() += 1;
        }
    }
    for call_id in registered {
        assert_eq!(
            contact_events.get(call_id.as_str()).copied().unwrap_or(0),
            1,
            "cycle {cycle}: REGISTER {call_id} got 200 OK but is not in the log exactly once"
        );
    }
    // Every acknowledged create, exactly once.
    let mut created_events: HashMap<String, usize> = HashMap::new();
    for e in &events {
        if e.r#type == "UserCreated" {
            let data: serde_json::Value = serde_json::from_str(&e.data_json).unwrap();
            let name = data["username"].as_str().unwrap_or_default().to_owned();
            *created_events.entry(name).or_default() += 1;
        }
    }
    let unique: HashSet<&String> = created.iter().collect();
    assert_eq!(unique.len(), created.len());
    for name in created {
        assert_eq!(
            created_events.get(name).copied().unwrap_or(0),
            1,
            "cycle {cycle}: {name} was acknowledged but is not in the log exactly once"
        );
    }
    legs
}
