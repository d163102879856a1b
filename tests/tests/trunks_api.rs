//! Trunks, dial plans and phone numbers over the API, black box (ADR
//! 0028): a real node with a secrets key file; trunks created, read,
//! listed, changed and deleted over gRPC (`TrunkService`) and the CLI
//! (`dialtone trunk`); the carrier password in no reply, no export of the
//! log (ReadAll, ReadStream, `dialtone replay`) and only sealed in the
//! stored data; a dial plan set, read and tried (`dialtone dialplan`);
//! numbers added, moved and removed (`NumberService`, `dialtone number`),
//! a number in one place only; bad input refused naming the field or rule
//! (bad URI, bad CIDR, a rule that does not compile, an unknown trunk in a
//! rule, deleting a trunk a rule uses, a duplicate number); a domain token
//! kept to its own domain; and a node without a secrets key refusing a
//! password with a message naming the flag.

mod support;

use dialtone_api::pb::number_service_client::NumberServiceClient;
use dialtone_api::pb::trunk_service_client::TrunkServiceClient;
use dialtone_api::pb::*;
use support::sip::{create_domain, create_user, DOMAIN, PASSWORD};
use support::{channel_with, read_all, Channel, TestNode};
use tonic::Code;

const OTHER: &str = "other.test";
const CARRIER_PASSWORD: &str = "Carrier-S3cret-pw";

fn carrier() -> String {
    format!("carrier@{DOMAIN}")
}

fn list(values: &[&str]) -> Option<StringList> {
    Some(StringList {
        values: values.iter().map(|v| (*v).to_owned()).collect(),
    })
}

/// A node with a secrets key, two domains, users alice and bob, a ring
/// group `sales` and (in OTHER) a user carol.
async fn node(dir: &std::path::Path) -> TestNode {
    let key = dir.join("secrets.key");
    // Base64 of 32 bytes, one key per line.
    std::fs::write(
        &key,
        "# test key\nAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=\n",
    )
    .unwrap();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let node = TestNode::start(&data, &["--secrets-key-file", key.to_str().unwrap()])
        .await
        .unwrap();
    create_domain(&node, DOMAIN).await.unwrap();
    create_domain(&node, OTHER).await.unwrap();
    for user in ["alice", "bob"] {
        create_user(&node, DOMAIN, user, PASSWORD, 0).await.unwrap();
    }
    create_user(&node, OTHER, "carol", PASSWORD, 0)
        .await
        .unwrap();
    node.provisioning()
        .await
        .unwrap()
        .create_ring_group(CreateRingGroupRequest {
            address: format!("sales@{DOMAIN}"),
            settings: Some(RingGroupChange {
                members: Some(RingGroupMembers {
                    members: vec!["alice".into()],
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    node
}

async fn trunks(node: &TestNode) -> TrunkServiceClient<Channel> {
    TrunkServiceClient::new(node.channel().await.unwrap())
}

async fn numbers(node: &TestNode) -> NumberServiceClient<Channel> {
    NumberServiceClient::new(node.channel().await.unwrap())
}

fn stdout(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn full_trunk() -> TrunkChange {
    TrunkChange {
        gateways: list(&[
            "sip:gw1.carrier.example:5060",
            "sip:[2001:db8::10]:5070;transport=tcp",
        ]),
        username: Some("acct-1001".into()),
        password: Some(CARRIER_PASSWORD.into()),
        realm: Some("carrier.example".into()),
        register: Some(true),
        register_expiry_secs: Some(600),
        caller_id: Some("+15550100".into()),
        codecs: list(&["PCMA", "PCMU"]),
        max_calls: Some(30),
        inbound_sources: list(&["203.0.113.0/24", "2001:db8::/32", "198.51.100.7"]),
        ..Default::default()
    }
}

fn rule(pattern: &str, strip: u32, prefix: &str, trunk: &str, allow: &str) -> DialPlanRule {
    DialPlanRule {
        pattern: pattern.into(),
        strip,
        prefix: prefix.into(),
        trunk: trunk.into(),
        allow: allow.into(),
    }
}

#[tokio::test]
async fn trunks_dial_plans_and_numbers_are_provisioned_without_showing_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let mut api = trunks(&node).await;

    // Create: every setting as given, the password only as a key id.
    let created = api
        .create_trunk(CreateTrunkRequest {
            address: carrier(),
            settings: Some(full_trunk()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.address, carrier());
    let gateways: Vec<(&str, &str)> = created
        .gateways
        .iter()
        .map(|g| (g.uri.as_str(), g.transport.as_str()))
        .collect();
    assert_eq!(
        gateways,
        [
            ("sip:gw1.carrier.example:5060", "udp"),
            ("sip:[2001:db8::10]:5070", "tcp")
        ]
    );
    assert!(created.has_credentials);
    assert_eq!(created.username, "acct-1001");
    assert_eq!(created.realm, "carrier.example");
    assert_eq!(created.password_key_id.len(), 16, "{created:?}");
    assert!(created.register);
    assert_eq!(created.register_expiry_secs, 600);
    assert_eq!(created.caller_id, "+15550100");
    assert_eq!(created.from_user, "caller_id");
    assert_eq!(created.codecs, ["PCMA", "PCMU"]);
    assert_eq!(created.max_calls, 30);
    assert_eq!(
        created.inbound_sources,
        ["203.0.113.0/24", "2001:db8::/32", "198.51.100.7/32"]
    );
    assert!(!format!("{created:?}").contains(CARRIER_PASSWORD));

    // Get and list say the same; update keeps the password when only the
    // username changes, and a new password is sealed anew.
    let got = api
        .get_trunk(GetTrunkRequest { address: carrier() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, created);
    let updated = api
        .update_trunk(UpdateTrunkRequest {
            address: carrier(),
            settings: Some(TrunkChange {
                username: Some("acct-1002".into()),
                max_calls: Some(0),
                caller_id: Some("anonymous".into()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.username, "acct-1002");
    assert!(updated.has_credentials);
    assert_eq!(updated.password_key_id, created.password_key_id);
    assert_eq!(
        (updated.max_calls, updated.caller_id.as_str()),
        (0, "anonymous")
    );
    assert_eq!(updated.version, created.version + 1);
    let listed = api
        .list_trunks(ListTrunksRequest {
            domain: DOMAIN.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .trunks;
    assert_eq!(listed, std::slice::from_ref(&updated));

    // Bad input, each refused naming the field; nothing written.
    for (change, field) in [
        (
            TrunkChange {
                gateways: list(&["http://gw.example"]),
                ..Default::default()
            },
            "invalid gateways",
        ),
        (
            TrunkChange {
                gateways: list(&["sips:gw.example;transport=udp"]),
                ..Default::default()
            },
            "invalid gateways",
        ),
        (
            TrunkChange {
                gateways: list(&["sip:gw.example"]),
                inbound_sources: list(&["203.0.113.5/24"]),
                ..Default::default()
            },
            "invalid inbound_sources",
        ),
        (
            TrunkChange {
                gateways: list(&["sip:gw.example"]),
                inbound_sources: list(&["10.0.0.0/33"]),
                ..Default::default()
            },
            "invalid inbound_sources",
        ),
        (
            TrunkChange {
                gateways: list(&["sip:gw.example"]),
                register: Some(true),
                ..Default::default()
            },
            "invalid register",
        ),
        (
            TrunkChange {
                gateways: list(&["sip:gw.example"]),
                codecs: list(&["G729"]),
                ..Default::default()
            },
            "invalid codecs",
        ),
    ] {
        let err = api
            .create_trunk(CreateTrunkRequest {
                address: format!("bad@{DOMAIN}"),
                settings: Some(change),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(field), "{}", err.message());
    }
    let err = api
        .create_trunk(CreateTrunkRequest {
            address: carrier(),
            settings: Some(full_trunk()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");

    // The dial plan: rules that do not compile are named; an unknown trunk
    // is NOT_FOUND naming the rule; a good plan routes.
    let err = api
        .set_dial_plan(SetDialPlanRequest {
            domain: DOMAIN.into(),
            rules: vec![
                rule("_NXXNXXXXXX", 0, "+1", "carrier", ""),
                rule("_9N[XX", 0, "+1", "carrier", ""),
            ],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message()
            .contains("rule 2 ('_9N[XX'): '[' at position 4 is never closed"),
        "{}",
        err.message()
    );
    let err = api
        .set_dial_plan(SetDialPlanRequest {
            domain: DOMAIN.into(),
            rules: vec![rule("_X.", 0, "+", "nosuch", "")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(
        err.message().contains(&format!(
            "trunk nosuch@{DOMAIN} (named by dial plan rule 1)"
        )),
        "{}",
        err.message()
    );
    let plan = api
        .set_dial_plan(SetDialPlanRequest {
            domain: DOMAIN.into(),
            classes: vec![DialPlanClass {
                name: "intl".into(),
                users: vec!["alice".into()],
            }],
            rules: vec![
                rule("_00Z.", 2, "+", "carrier", "class:intl"),
                rule("_NXXNXXXXXX", 0, "+1", "carrier", "all"),
            ],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plan.rules.len(), 2);
    assert_eq!(plan.rules[0].allow, "class:intl");
    assert_eq!(
        api.get_dial_plan(GetDialPlanRequest {
            domain: DOMAIN.into()
        })
        .await
        .unwrap()
        .into_inner(),
        plan
    );
    let route = |caller: &str, dialled: &str| RouteDialledRequest {
        caller: format!("{caller}@{DOMAIN}"),
        dialled: dialled.into(),
    };
    let routed = api
        .route_dialled(route("alice", "00442071234567"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            routed.routed,
            routed.number.as_str(),
            routed.trunk.as_str(),
            routed.rule
        ),
        (true, "+442071234567", carrier().as_str(), 1)
    );
    let refused = api
        .route_dialled(route("bob", "00442071234567"))
        .await
        .unwrap()
        .into_inner();
    assert!(!refused.routed, "bob is not in the intl class");
    let local = api
        .route_dialled(route("bob", "2125551234"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((local.number.as_str(), local.rule), ("+12125551234", 2));

    // A trunk a rule uses is not deleted.
    let err = api
        .delete_trunk(DeleteTrunkRequest {
            address: carrier(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("used by dial plan rule 1 ('_00Z.')"),
        "{}",
        err.message()
    );

    // Numbers: one place only, targets checked, moved and freed.
    let mut nums = numbers(&node).await;
    let add = |number: &str, domain: &str, target: &str| AddNumberRequest {
        number: number.into(),
        domain: domain.into(),
        target: target.into(),
        ..Default::default()
    };
    let added = nums
        .add_number(add("+15550001", DOMAIN, "alice"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            added.number.as_str(),
            added.domain.as_str(),
            added.target.as_str()
        ),
        ("+15550001", DOMAIN, "alice")
    );
    nums.add_number(add("+15550002", DOMAIN, "group:sales"))
        .await
        .unwrap();
    let err = nums
        .add_number(add("+15550001", OTHER, "carol"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(
        err.message().contains("another domain"),
        "{}",
        err.message()
    );
    let err = nums
        .add_number(add("+15550001", DOMAIN, "bob"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    for (number, target, code) in [
        ("15550003", "alice", Code::InvalidArgument),
        ("+0155", "alice", Code::InvalidArgument),
        ("+15550003", "fax:alice", Code::InvalidArgument),
        ("+15550003", "nobody", Code::NotFound),
        ("+15550003", "group:nosuch", Code::NotFound),
        ("+15550003", "conference:nosuch", Code::NotFound),
    ] {
        let err = nums
            .add_number(add(number, DOMAIN, target))
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{number} {target}: {err:?}");
    }
    let moved = nums
        .update_number(UpdateNumberRequest {
            number: "+15550001".into(),
            target: Some("voicemail:bob".into()),
            description: Some("front desk".into()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (moved.target.as_str(), moved.description.as_str()),
        ("voicemail:bob", "front desk")
    );
    let listed: Vec<(String, String)> = nums
        .list_numbers(ListNumbersRequest {
            domain: DOMAIN.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .numbers
        .into_iter()
        .map(|n| (n.number, n.target))
        .collect();
    assert_eq!(
        listed,
        [
            ("+15550001".to_owned(), "voicemail:bob".to_owned()),
            ("+15550002".to_owned(), "group:sales".to_owned())
        ]
    );
    nums.remove_number(RemoveNumberRequest {
        number: "+15550001".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = nums
        .get_number(GetNumberRequest {
            number: "+15550001".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // Free again: the other domain takes it.
    let taken = nums
        .add_number(add("+15550001", OTHER, "carol"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(taken.domain, OTHER);

    // The audit of the domain now shows its trunks and plan (no password).
    let audited = node
        .audit()
        .await
        .unwrap()
        .get_domain_state_at(GetDomainStateAtRequest {
            domain: DOMAIN.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .state
        .unwrap();
    assert_eq!(audited.trunks.len(), 1);
    assert_eq!(audited.trunks[0].address, carrier());
    assert_eq!(audited.trunks[0].username, "acct-1002");
    assert_eq!(audited.dial_plan.unwrap().rules.len(), 2);
    assert!(!format!("{:?}", audited.trunks).contains(CARRIER_PASSWORD));

    // The events: on the domain stream and the number's stream; the
    // password in none of the exported data, nor the sealed form.
    let all = read_all(&node).await.unwrap();
    let types: Vec<&str> = all.iter().map(|e| e.r#type.as_str()).collect();
    for t in [
        "TrunkCreated",
        "TrunkUpdated",
        "DialPlanChanged",
        "NumberAssigned",
        "NumberUpdated",
        "NumberReleased",
    ] {
        assert!(types.contains(&t), "{t} in {types:?}");
    }
    let number_stream: Vec<&str> = all
        .iter()
        .filter(|e| e.stream == "number-+15550001")
        .map(|e| e.r#type.as_str())
        .collect();
    assert_eq!(
        number_stream,
        [
            "NumberAssigned",
            "NumberUpdated",
            "NumberReleased",
            "NumberAssigned"
        ]
    );
    for e in &all {
        assert!(!e.data_json.contains(CARRIER_PASSWORD), "{}", e.data_json);
        assert!(!e.data_json.contains("aead$"), "{}", e.data_json);
    }
    let trunk_event = all.iter().find(|e| e.r#type == "TrunkCreated").unwrap();
    assert!(
        trunk_event.data_json.contains("\"username\":\"acct-1001\""),
        "{}",
        trunk_event.data_json
    );
    let export = stdout(&node.cli(&["--json", "replay"]).await.unwrap());
    assert!(export.contains("TrunkCreated"));
    assert!(!export.contains(CARRIER_PASSWORD));
    assert!(!export.contains("aead$"));

    // Stopped, the log file itself holds the password sealed only.
    node.stop().await.unwrap();
    let mut stored = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("data")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            stored.extend(std::fs::read(&path).unwrap());
        }
    }
    let stored = String::from_utf8_lossy(&stored);
    assert!(stored.contains("aead$"), "the sealed password is stored");
    assert!(!stored.contains(CARRIER_PASSWORD));
}

#[tokio::test]
async fn a_domain_token_is_kept_to_its_domain_and_the_cli_drives_it_all() {
    let dir = tempfile::tempdir().unwrap();
    let node = node(dir.path()).await;
    let mut tokens = token_service_client::TokenServiceClient::new(node.channel().await.unwrap());
    let mut secrets = Vec::new();
    for domain in [DOMAIN, OTHER] {
        let request = CreateTokenRequest {
            scope: domain.into(),
            ..Default::default()
        };
        secrets.push(
            tokens
                .create_token(request)
                .await
                .unwrap()
                .into_inner()
                .secret,
        );
    }
    let url = node.grpc_url.clone();
    let own = TrunkServiceClient::new(channel_with(&url, Some(&secrets[0])).await.unwrap());
    let mut other = TrunkServiceClient::new(channel_with(&url, Some(&secrets[1])).await.unwrap());
    let mut own = own;
    own.create_trunk(CreateTrunkRequest {
        address: carrier(),
        settings: Some(full_trunk()),
        ..Default::default()
    })
    .await
    .unwrap();
    // Another domain's token: NOT_FOUND, as for an absent domain.
    let err = other
        .get_trunk(GetTrunkRequest { address: carrier() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), format!("domain {DOMAIN} not found"));
    for result in [
        other
            .create_trunk(CreateTrunkRequest {
                address: format!("sneaky@{DOMAIN}"),
                settings: Some(full_trunk()),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        other
            .delete_trunk(DeleteTrunkRequest {
                address: carrier(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
        other
            .list_trunks(ListTrunksRequest {
                domain: DOMAIN.into(),
            })
            .await
            .map(|_| ()),
        other
            .set_dial_plan(SetDialPlanRequest {
                domain: DOMAIN.into(),
                ..Default::default()
            })
            .await
            .map(|_| ()),
    ] {
        assert_eq!(result.unwrap_err().code(), Code::NotFound);
    }
    let mut own_numbers =
        NumberServiceClient::new(channel_with(&url, Some(&secrets[0])).await.unwrap());
    let mut other_numbers =
        NumberServiceClient::new(channel_with(&url, Some(&secrets[1])).await.unwrap());
    own_numbers
        .add_number(AddNumberRequest {
            number: "+442071234567".into(),
            domain: DOMAIN.into(),
            target: "alice".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for err in [
        other_numbers
            .get_number(GetNumberRequest {
                number: "+442071234567".into(),
            })
            .await
            .unwrap_err(),
        other_numbers
            .remove_number(RemoveNumberRequest {
                number: "+442071234567".into(),
                ..Default::default()
            })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(err.message(), "number +442071234567 not found");
    }

    // The CLI: a second trunk with the password from a file, listed,
    // the plan set and tried, a number added and listed; then the trunk
    // the plan uses cannot be deleted, and can once the plan is emptied.
    let pw = dir.path().join("pw.txt");
    std::fs::write(&pw, "Another-Pass-7\n").unwrap();
    let out = stdout(
        &node
            .cli(&[
                "--json",
                "trunk",
                "create",
                &format!("backup@{DOMAIN}"),
                "--gateway",
                "sips:gw.backup.example",
                "--username",
                "bk",
                "--password-file",
                pw.to_str().unwrap(),
                "--inbound-source",
                "192.0.2.0/24,2001:db8:1::/48",
                "--codecs",
                "PCMU",
            ])
            .await
            .unwrap(),
    );
    let trunk: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(trunk["gateways"][0]["transport"], "tls");
    assert_eq!(trunk["has_credentials"], true);
    assert_eq!(trunk["codecs"], serde_json::json!(["PCMU"]));
    assert!(!out.contains("Another-Pass-7"));
    let listed = stdout(&node.cli(&["trunk", "list", DOMAIN]).await.unwrap());
    assert!(listed.contains(&format!("backup@{DOMAIN}")), "{listed}");
    assert!(listed.contains(&carrier()), "{listed}");
    let plan = stdout(
        &node
            .cli(&[
                "dialplan",
                "set",
                DOMAIN,
                "--class",
                "intl=alice",
                "--rule",
                "_00Z. backup strip=2 prefix=+ allow=class:intl",
                "--rule",
                "_NXXNXXXXXX carrier prefix=+1",
            ])
            .await
            .unwrap(),
    );
    assert!(plan.contains("1. _00Z."), "{plan}");
    let routed = stdout(
        &node
            .cli(&[
                "dialplan",
                "route",
                &format!("alice@{DOMAIN}"),
                "0033123456789",
            ])
            .await
            .unwrap(),
    );
    assert_eq!(
        routed.trim(),
        format!("+33123456789 via backup@{DOMAIN} (rule 1)")
    );
    let bad = node
        .cli(&["dialplan", "set", DOMAIN, "--rule", "_9Q carrier prefix=+1"])
        .await
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("rule 1 ('_9Q')"), "{stderr}");
    stdout(
        &node
            .cli(&[
                "number",
                "add",
                "+15557777",
                "--domain",
                DOMAIN,
                "--to",
                "group:sales",
            ])
            .await
            .unwrap(),
    );
    let numbers: serde_json::Value = serde_json::from_str(&stdout(
        &node
            .cli(&["--json", "number", "list", DOMAIN])
            .await
            .unwrap(),
    ))
    .unwrap();
    let listed: Vec<&str> = numbers
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["number"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["+15557777", "+442071234567"]);
    let refused = node
        .cli(&["trunk", "delete", &format!("backup@{DOMAIN}")])
        .await
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("FailedPrecondition"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    stdout(&node.cli(&["dialplan", "set", DOMAIN]).await.unwrap());
    stdout(
        &node
            .cli(&["trunk", "delete", &format!("backup@{DOMAIN}")])
            .await
            .unwrap(),
    );
}

#[tokio::test]
async fn without_a_secrets_key_a_carrier_password_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), &[]).await.unwrap();
    create_domain(&node, DOMAIN).await.unwrap();
    let mut api = trunks(&node).await;
    let err = api
        .create_trunk(CreateTrunkRequest {
            address: carrier(),
            settings: Some(full_trunk()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("--secrets-key-file"),
        "{}",
        err.message()
    );
    // Without credentials a trunk needs no key.
    let plain = api
        .create_trunk(CreateTrunkRequest {
            address: carrier(),
            settings: Some(TrunkChange {
                gateways: list(&["sip:gw1.carrier.example"]),
                inbound_sources: list(&["203.0.113.0/24"]),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!plain.has_credentials);
    let types: Vec<String> = read_all(&node)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.r#type)
        .filter(|t| t.starts_with("Trunk"))
        .collect();
    assert_eq!(types, ["TrunkCreated"]);
}
