//! `kill -9` while 100 calls are in progress: after the restart no
//! call leg is left "in progress" forever. The proxy's dialog state died
//! with the process, so every leg that was started and not ended in the
//! log is closed at start-up with a recorded cause (`node_restart`).
//!
//! Real processes only: the node binary, SIPp as 100 callers (one UAC run,
//! each call held for a minute) and SIPp as the UAS every callee is
//! registered at.

mod support;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::time::Duration;

use support::sip::{bounded, create_domain, eventually, sipp_dir, spawn_sipp, CallPairs, DOMAIN};
use support::{read_all, TestNode};

const SIPP_ARGS: &[&str] = &["--sip-challenge-md5-first"];
const CALLS: usize = 100;

/// Per call leg (`stream`, `call_id`): the call event types, in order.
async fn legs(node: &TestNode) -> BTreeMap<(String, String), Vec<(String, serde_json::Value)>> {
    let mut legs: BTreeMap<(String, String), Vec<(String, serde_json::Value)>> = BTreeMap::new();
    for e in read_all(node).await.unwrap() {
        if e.category != "call" {
            continue;
        }
        let data: serde_json::Value = serde_json::from_str(&e.data_json).unwrap();
        let call_id = data["call_id"].as_str().unwrap_or_default().to_owned();
        legs.entry((e.stream.clone(), call_id))
            .or_default()
            .push((e.r#type.clone(), data));
    }
    legs
}

/// `dialtone calls DOMAIN [--active] --json`: the rows.
async fn cli_calls(node: &TestNode, active: bool) -> Vec<serde_json::Value> {
    let mut args = vec!["calls", DOMAIN, "--json"];
    if active {
        args.push("--active");
    }
    let out = node.cli(&args).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .flat_map(
            |l| match serde_json::from_str::<serde_json::Value>(l).unwrap() {
                serde_json::Value::Array(rows) => rows,
                row => vec![row],
            },
        )
        .collect()
}

fn is_terminal(event_type: &str) -> bool {
    event_type == "CallEnded" || event_type == "CallFailed"
}

#[tokio::test]
async fn kill_9_during_100_calls_leaves_no_leg_in_progress() {
    bounded(150, async {
        let dir = tempfile::tempdir().unwrap();
        let node = TestNode::start(dir.path(), SIPP_ARGS).await.unwrap();
        create_domain(&node, DOMAIN).await.unwrap();
        // Every callee's contact is the one UAS.
        let work = dir.path().join("sipp");
        let calls = CALLS.to_string();
        let uas_args = ["-m", calls.as_str(), "-nostdin", "-timeout", "120s"];
        let mut pairs = CallPairs::provision(&node, CALLS, &work, &uas_args)
            .await
            .unwrap();
        // Caller i calls callee i (`calls.csv`) and holds the call for a minute.
        let target = node.sip_addr().to_string();
        let mut uac = spawn_sipp(&work, Ipv4Addr::LOCALHOST, |_| {
            let scenario = sipp_dir().join("load_uac_auth.xml");
            let mut args: Vec<OsString> =
                vec![target.clone().into(), "-sf".into(), scenario.into()];
            args.extend(["-inf", "calls.csv", "-key", "domain", DOMAIN].map(OsString::from));
            args.extend(
                ["-auth_uri", DOMAIN, "-m", calls.as_str(), "-r", "50"].map(OsString::from),
            );
            args.extend(["-d", "60000", "-nostdin", "-timeout", "120s"].map(OsString::from));
            args
        })
        .await
        .unwrap();

        // Wait until (nearly) every call is answered, then kill the node.
        eventually(Duration::from_secs(30), "calls answered", || async {
            let answered = legs(&node)
                .await
                .values()
                .filter(|l| l.iter().any(|(t, _)| t == "CallAnswered"))
                .count();
            Ok((answered >= CALLS * 2 * 9 / 10).then_some(()))
        })
        .await
        .unwrap();
        let before = legs(&node).await;
        let in_progress = before
            .values()
            .filter(|l| !l.iter().any(|(t, _)| is_terminal(t)))
            .count();
        assert!(in_progress >= CALLS, "{in_progress} legs in progress");
        let active = cli_calls(&node, true).await;
        assert!(
            active.len() >= CALLS * 9 / 10,
            "{} active calls",
            active.len()
        );
        node.kill9().await.unwrap();
        uac.kill();
        pairs.uas.kill();

        let node = TestNode::start(dir.path(), SIPP_ARGS).await.unwrap();
        let after = eventually(Duration::from_secs(20), "every leg closed", || async {
            let legs = legs(&node).await;
            let open = legs
                .values()
                .filter(|l| !l.iter().any(|(t, _)| is_terminal(t)))
                .count();
            Ok((open == 0).then_some(legs))
        })
        .await
        .unwrap();
        // Every leg seen before the kill is still there (more may have been
        // appended between that read and the kill), each closed exactly
        // once; those that were in progress with cause node_restart.
        assert!(before.keys().all(|leg| after.contains_key(leg)));
        let mut restarted = 0;
        for (leg, events) in &after {
            let terminal: Vec<_> = events.iter().filter(|(t, _)| is_terminal(t)).collect();
            assert_eq!(terminal.len(), 1, "{leg:?}: {events:?}");
            let was_open = before
                .get(leg)
                .is_some_and(|b| !b.iter().any(|(t, _)| is_terminal(t)));
            if was_open {
                assert_eq!(
                    terminal[0].1["cause"], "node_restart",
                    "{leg:?}: {events:?}"
                );
            }
            if terminal[0].1["cause"] == "node_restart" {
                restarted += 1;
            }
        }
        assert!(restarted >= in_progress, "{restarted} < {in_progress}");
        // Nothing listed as in progress any more; the records of the calls
        // cut by the crash say so.
        assert_eq!(
            cli_calls(&node, true).await,
            Vec::<serde_json::Value>::new()
        );
        let records = cli_calls(&node, false).await;
        assert!(records.len() >= active.len(), "{} records", records.len());
        assert!(
            records.iter().all(|r| r["cause"] == "node_restart"),
            "{records:?}"
        );
        node.stop().await.unwrap();
    })
    .await;
}
