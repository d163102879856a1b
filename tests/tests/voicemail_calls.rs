//! Calls to voicemail boxes over SIP with SIPp phones (ADR 0022): what a
//! call that cannot reach a box gets. Real phones leaving messages and the
//! box surviving `kill -9` are in `phones.rs`; real phones driving the
//! menus with their digits, the PIN lock-out and a full box in
//! `voicemail_phones.rs`.

mod support;

use dialtone_api::pb::voicemail_service_client::VoicemailServiceClient;
use dialtone_api::pb::{ConfigureMailboxRequest, SetForwardingRequest};
use support::pbx::{invite_statuses, Pbx};
use support::sip::bounded;

async fn enable_box(pbx: &Pbx, user: &str) {
    VoicemailServiceClient::new(pbx.node.channel().await.unwrap())
        .configure_mailbox(ConfigureMailboxRequest {
            user: format!("{user}@{}", support::sip::DOMAIN),
            enabled: Some(true),
            pin: Some("4321".into()),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// A caller that offers only opus reaches bob's box (bob has no phone;
/// his calls go to voicemail when unavailable): 488 with the reason, and
/// the call is not answered.
#[tokio::test]
async fn an_offer_without_a_common_codec_gets_488_from_the_box() {
    bounded(60, async {
        let pbx = Pbx::start(&[]).await;
        enable_box(&pbx, "bob").await;
        pbx.forward(
            "bob",
            SetForwardingRequest {
                unavailable: Some("voicemail".into()),
                ..Default::default()
            },
        )
        .await;
        let run = pbx.call_bob("call_uac_opus_only.xml").await;
        assert_eq!(invite_statuses(&run), [407, 488], "{:#?}", run.received);
        let refusal = run
            .received
            .iter()
            .find(|m| m.starts_with("SIP/2.0 488"))
            .unwrap();
        assert!(
            refusal.lines().next().unwrap().contains("opus"),
            "the reason names what was offered: {refusal}"
        );
        pbx.node.stop().await.unwrap();
    })
    .await
}

/// A box that is off is no forward target: the call to bob (no phone) is
/// refused as unavailable, as without the rule.
#[tokio::test]
async fn a_box_that_is_off_is_not_a_target() {
    bounded(60, async {
        let pbx = Pbx::start(&[]).await;
        pbx.forward(
            "bob",
            SetForwardingRequest {
                unavailable: Some("voicemail".into()),
                ..Default::default()
            },
        )
        .await;
        let run = pbx.call_bob("call_uac_fails.xml").await;
        assert_eq!(invite_statuses(&run), [407, 480], "{:#?}", run.received);
        pbx.node.stop().await.unwrap();
    })
    .await
}
