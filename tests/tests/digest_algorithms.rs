//! Each domain's digest algorithms, black box: the node's default for new
//! domains (MD5 only, or `--sip-digest-algorithms`), `CreateDomain` /
//! `UpdateDomain` / `GetDomain` and the CLI, refusals naming the bad
//! value, the deprecated `md5_allowed`, and what a phone sees: one
//! challenge per algorithm, in the domain's order, and answers with other
//! algorithms refused (ADR 0012).

mod support;

use std::time::Duration;

use dialtone_api::pb::{CreateDomainRequest, GetDomainRequest, UpdateDomainRequest};
use dialtone_sip::auth::digest::Algorithm;
use dialtone_sip::test_ua::{Register, TestUa};
use support::sip::{bounded, create_user, PASSWORD};
use support::TestNode;

const T: Duration = Duration::from_secs(5);

async fn node(args: &[&str]) -> (tempfile::TempDir, TestNode) {
    let dir = tempfile::tempdir().unwrap();
    let node = TestNode::start(dir.path(), args).await.unwrap();
    (dir, node)
}

async fn create(node: &TestNode, name: &str, algorithms: &[&str]) -> Vec<String> {
    node.provisioning()
        .await
        .unwrap()
        .create_domain(CreateDomainRequest {
            name: name.into(),
            digest_algorithms: algorithms.iter().map(|a| (*a).to_owned()).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .digest_algorithms
}

async fn update(
    node: &TestNode,
    name: &str,
    algorithms: &[&str],
    md5_allowed: Option<bool>,
) -> Result<Vec<String>, tonic::Status> {
    Ok(node
        .provisioning()
        .await
        .unwrap()
        .update_domain(UpdateDomainRequest {
            domain: name.into(),
            digest_algorithms: algorithms.iter().map(|a| (*a).to_owned()).collect(),
            md5_allowed,
            ..Default::default()
        })
        .await?
        .into_inner()
        .digest_algorithms)
}

/// The algorithms of the challenges a REGISTER of `user@domain` gets, in
/// order.
async fn challenged_with(node: &TestNode, user: &str, domain: &str) -> Vec<Option<Algorithm>> {
    let mut ua = TestUa::udp(node.sip_addr()).await.unwrap();
    let first = ua
        .register_once(&Register::new(user, domain).password(PASSWORD))
        .await
        .unwrap();
    assert_eq!(first.code, 401, "{first:?}");
    first.challenges().iter().map(|c| c.algorithm).collect()
}

/// Registers `user@domain` answering the first challenge with `algorithm`
/// (whatever the challenge named); returns the final status.
async fn register_answering_with(
    node: &TestNode,
    user: &str,
    domain: &str,
    algorithm: Algorithm,
) -> u16 {
    let mut ua = TestUa::udp(node.sip_addr()).await.unwrap();
    let r = Register::new(user, domain)
        .password(PASSWORD)
        .algorithm(algorithm);
    let first = ua.register_once(&r).await.unwrap();
    let mut challenge = first.challenges()[0].clone();
    challenge.algorithm = Some(algorithm);
    let auth = ua.authorization(&r, &challenge).unwrap();
    let text = ua.register_text(&r.clone().cseq(2), &TestUa::branch(), Some(&auth));
    ua.send_raw(text.as_bytes()).await.unwrap();
    ua.expect(T).await.unwrap().code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_domain_offers_md5_only_and_refuses_other_answers() {
    bounded(60, async {
        let (_dir, node) = node(&[]).await;
        assert_eq!(create(&node, "plain.test", &[]).await, ["MD5"]);
        create_user(&node, "plain.test", "alice", PASSWORD, 0)
            .await
            .unwrap();
        assert_eq!(
            challenged_with(&node, "alice", "plain.test").await,
            [Some(Algorithm::Md5)]
        );
        // An unknown user is challenged exactly as a known one.
        assert_eq!(
            challenged_with(&node, "nobody", "plain.test").await,
            [Some(Algorithm::Md5)]
        );
        assert_eq!(
            register_answering_with(&node, "alice", "plain.test", Algorithm::Md5).await,
            200
        );
        // The right password with an algorithm the domain does not offer.
        assert_eq!(
            register_answering_with(&node, "alice", "plain.test", Algorithm::Sha256).await,
            403
        );

        // SHA-256 only: MD5 answers are a downgrade, refused.
        assert_eq!(
            update(&node, "plain.test", &["sha-256"], None)
                .await
                .unwrap(),
            ["SHA-256"]
        );
        assert_eq!(
            challenged_with(&node, "alice", "plain.test").await,
            [Some(Algorithm::Sha256)]
        );
        assert_eq!(
            register_answering_with(&node, "alice", "plain.test", Algorithm::Md5).await,
            403
        );
        assert_eq!(
            register_answering_with(&node, "alice", "plain.test", Algorithm::Sha256).await,
            200
        );
        node.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_challenge_order_is_the_domains_and_the_node_default_applies_to_new_domains() {
    bounded(60, async {
        let (_dir, node) = node(&["--sip-digest-algorithms", "SHA-256,md5"]).await;
        assert_eq!(create(&node, "both.test", &[]).await, ["SHA-256", "MD5"]);
        assert_eq!(create(&node, "given.test", &["md5"]).await, ["MD5"]);
        create_user(&node, "both.test", "bob", PASSWORD, 0)
            .await
            .unwrap();
        assert_eq!(
            challenged_with(&node, "bob", "both.test").await,
            [Some(Algorithm::Sha256), Some(Algorithm::Md5)]
        );
        assert_eq!(
            update(&node, "both.test", &["Md5", "sha-256"], None)
                .await
                .unwrap(),
            ["MD5", "SHA-256"]
        );
        assert_eq!(
            challenged_with(&node, "bob", "both.test").await,
            [Some(Algorithm::Md5), Some(Algorithm::Sha256)]
        );
        // Both answers are accepted when both are offered.
        for algorithm in [Algorithm::Md5, Algorithm::Sha256] {
            assert_eq!(
                register_answering_with(&node, "bob", "both.test", algorithm).await,
                200
            );
        }
        // GetDomain shows the list; an empty list in an update changes nothing.
        assert_eq!(
            update(&node, "both.test", &[], None).await.unwrap(),
            ["MD5", "SHA-256"]
        );
        let got = node
            .provisioning()
            .await
            .unwrap()
            .get_domain(GetDomainRequest {
                domain: "both.test".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.digest_algorithms, ["MD5", "SHA-256"]);
        assert!(got.md5_allowed);
        node.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_lists_are_refused_naming_the_bad_value_and_md5_allowed_still_works() {
    bounded(60, async {
        let (_dir, node) = node(&[]).await;
        create(&node, "x.test", &["sha-256", "md5"]).await;
        for (list, named) in [
            (&["sha-1"][..], "sha-1"),
            (&["md5", "MD5"][..], "MD5"),
            (&["md5", ""][..], "\"\""),
        ] {
            let refused = update(&node, "x.test", list, None).await.unwrap_err();
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{list:?}");
            assert!(
                refused.message().contains(named) && refused.message().contains("digest"),
                "{list:?}: {}",
                refused.message()
            );
        }
        let refused = node
            .provisioning()
            .await
            .unwrap()
            .create_domain(CreateDomainRequest {
                name: "y.test".into(),
                digest_algorithms: vec!["SHA-512-256".into()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains("SHA-512-256"), "{refused:?}");

        // The deprecated flag removes and adds MD5; contradicting the list
        // given with it is refused.
        assert_eq!(
            update(&node, "x.test", &[], Some(false)).await.unwrap(),
            ["SHA-256"]
        );
        assert_eq!(
            update(&node, "x.test", &[], Some(true)).await.unwrap(),
            ["SHA-256", "MD5"]
        );
        let refused = update(&node, "x.test", &["sha-256"], Some(true))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        node.stop().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_sets_and_shows_the_list() {
    bounded(60, async {
        let (_dir, node) = node(&[]).await;
        let out = node
            .cli(&[
                "domain",
                "create",
                "cli.test",
                "--digest-algorithms",
                "sha-256",
            ])
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let out = node
            .cli(&[
                "domain",
                "update",
                "cli.test",
                "--digest-algorithms",
                "sha-256,md5",
            ])
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let out = node.cli(&["domain", "get", "cli.test"]).await.unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("digest   SHA-256,MD5"), "{text}");
        let out = node
            .cli(&["--json", "domain", "get", "cli.test"])
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            json["digest_algorithms"],
            serde_json::json!(["SHA-256", "MD5"])
        );

        let out = node
            .cli(&["domain", "update", "cli.test", "--digest-algorithms", "md4"])
            .await
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("md4"), "{err}");

        let out = node
            .cli(&["domain", "update", "cli.test", "--md5-allowed", "false"])
            .await
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("deprecated"));
        assert!(String::from_utf8_lossy(&out.stdout).contains("digest   SHA-256\n"));
        node.stop().await.unwrap();
    })
    .await;
}
