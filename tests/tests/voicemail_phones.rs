//! Voicemail over real phones (ADR 0022, ADR 0023): baresip 1.0 leaves
//! messages, then dials the mailbox menus and drives them with RFC 4733
//! digits (`/sndcode`), as a person at a keypad would.
//!
//! What is checked, and how:
//! - what the node did: the mailbox's events in its user's stream
//!   (`VoicemailRead`, `VoicemailDeleted`, `MailboxPinRejected`, ...),
//!   the box over the API (`GetMailbox`, `GetMessageAudio`), and after a
//!   stop the blob store's own list of audio;
//! - what the phone heard: baresip records what it decodes (the `sndfile`
//!   filter). A message is baresip's 440 Hz microphone tone, found with
//!   the Goertzel detector; a prompt is speech, found by its loudness
//!   envelope (20 ms frames) against the shipped recording's: G.711 both
//!   ways keeps a prompt's samples nearly as they were, so its envelope
//!   correlates with the recording's at the moment it was heard.
//!
//! Digits are sent when the menu is known to wait for them: after an event
//! says the previous step was done where there is one, otherwise after a
//! pause long enough for the node's in-memory step (a mailbox look-up). A
//! digit during a prompt interrupts it, so no test waits for a prompt to
//! end except to hear it whole.

mod softphones;
mod support;

use std::time::Duration;

use dialtone_api::pb::{
    ConfigureMailboxRequest, GetMailboxRequest, GetMessageAudioRequest, ListMessagesRequest,
    SetForwardingRequest, User,
};
use dialtone_voicemail::prompts::{Prompt, Prompts};
use softphones::*;
use support::sip::{bounded, create_user, eventually, stream_events};
use support::TestNode;

/// A phone's digits as RFC 4733 telephone-events (baresip sends each for
/// at least 180 ms, then ends it).
async fn send_digits(phone: &mut Phone, digits: &str) {
    phone
        .command(&format!("sndcode {digits}"))
        .await
        .unwrap_or_else(|e| panic!("{}", phone.fail(e)));
}

/// The `(type, data)` of every event in `user`'s stream.
async fn user_events(node: &TestNode, user: &User) -> Vec<(String, serde_json::Value)> {
    stream_events(node, &format!("user-{}", user.id))
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            let data = serde_json::from_str(&e.data_json).unwrap_or_default();
            (e.r#type, data)
        })
        .collect()
}

/// How many of `user`'s events are `ty`.
async fn count(node: &TestNode, user: &User, ty: &str) -> usize {
    user_events(node, user)
        .await
        .iter()
        .filter(|(t, _)| t == ty)
        .count()
}

/// Waits until `user`'s stream holds `n` events `ty`; their data.
async fn wait_for(
    node: &TestNode,
    user: &User,
    ty: &str,
    n: usize,
) -> anyhow::Result<Vec<serde_json::Value>> {
    eventually(STEP, &format!("{n} × {ty} of {}", user.address), || async {
        let found: Vec<_> = user_events(node, user)
            .await
            .into_iter()
            .filter(|(t, _)| t == ty)
            .map(|(_, d)| d)
            .collect();
        Ok((found.len() >= n).then_some(found))
    })
    .await
}

/// The end of the node's log, for failure messages.
fn node_log(node: &TestNode) -> String {
    let log = std::fs::read_to_string(node.data_dir.join("node.log")).unwrap_or_default();
    // Without the HTTP/2 frames of the test's own gRPC calls.
    let tail: Vec<&str> = log
        .lines()
        .rev()
        .filter(|l| !l.contains("h2::"))
        .take(40)
        .collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    format!(
        "--- the node's log (DIALTONE_TEST_NODE_LOG=debug for more) ---\n{}",
        tail.join("\n")
    )
}

/// Waits until the phone says its `over_before + 1`th call is over.
async fn call_over(node: &TestNode, phone: &Phone, over_before: usize) {
    eventually(STEP, "the call to end", || async {
        Ok((phone.calls_over() > over_before).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{}\n{}", phone.fail(e), node_log(node)))
    .unwrap();
}

/// What the phone heard in its last call (8 kHz mono), once baresip has
/// closed the file.
async fn heard(phone: &Phone) -> Vec<i16> {
    eventually(STEP, "a readable recording", || async {
        Ok(phone.recording().and_then(|path| {
            let bytes = std::fs::read(path).ok()?;
            dialtone_media::wav::read_wav(
                &bytes,
                dialtone_media::wav::WavLimits {
                    max_duration_ms: 900_000,
                },
            )
            .ok()
            .filter(|s| !s.is_empty())
        }))
    })
    .await
    .map_err(|e| phone.fail(e))
    .unwrap()
}

/// Loudness of each 20 ms frame, in dB-like units.
fn envelope(samples: &[i16]) -> Vec<f64> {
    samples
        .chunks_exact(160)
        .map(|frame| {
            let power = frame
                .iter()
                .map(|&s| f64::from(s) * f64::from(s))
                .sum::<f64>()
                / 160.0;
            10.0 * (1.0 + power).log10()
        })
        .collect()
}

/// Where (ms into `heard`) `prompt` was heard, and how well its loudness
/// envelope matched there (Pearson's r, 1 = exactly): the best match over
/// every 20 ms offset. The prompt's last 300 ms are left out: a phone
/// drops what its jitter buffer holds when the node's BYE comes right
/// after a prompt.
fn best_match(heard: &[i16], prompt: &[i16]) -> (u32, f64) {
    let prompt = &prompt[..prompt.len().saturating_sub(300 * 8)];
    let (heard, prompt) = (envelope(heard), envelope(prompt));
    let n = prompt.len();
    if n < 2 || heard.len() < n {
        return (0, 0.0);
    }
    let mean = |x: &[f64]| x.iter().sum::<f64>() / x.len() as f64;
    let p_mean = mean(&prompt);
    let p_dev: Vec<f64> = prompt.iter().map(|p| p - p_mean).collect();
    let p_norm = p_dev.iter().map(|d| d * d).sum::<f64>().sqrt();
    let mut best = (0, 0.0);
    for offset in 0..=heard.len() - n {
        let window = &heard[offset..offset + n];
        let h_mean = mean(window);
        let (mut dot, mut h_norm) = (0.0, 0.0);
        for (h, p) in window.iter().zip(&p_dev) {
            dot += (h - h_mean) * p;
            h_norm += (h - h_mean) * (h - h_mean);
        }
        let r = dot / (h_norm.sqrt() * p_norm).max(f64::MIN_POSITIVE);
        if r > best.1 {
            best = (u32::try_from(offset * 20).unwrap_or(u32::MAX), r);
        }
    }
    best
}

/// A prompt is taken as heard when its envelope matches this well; a
/// different prompt or a tone scores far below (the tests check one that
/// was not played, too).
const HEARD_R: f64 = 0.85;

/// How long a prompt plays, in ms.
fn prompt_ms(prompts: &Prompts, prompt: Prompt) -> u64 {
    prompts.get(prompt).len() as u64 / 8
}

/// `caller` (baresip, its microphone a 440 Hz tone) calls `callee`, whose
/// calls go to voicemail: `#` skips the greeting to the beep, then about
/// `tone_ms` of tone and `#` end the message. Returns once the message is
/// in the box (`VoicemailLeft`) and the node has ended the call.
async fn leave_message(node: &TestNode, caller: &mut Phone, callee: &User, tone_ms: u64) {
    let left = count(node, callee, "VoicemailLeft").await;
    let over = caller.calls_over();
    caller
        .command(&format!("dial {}", callee.address))
        .await
        .unwrap();
    answered(caller).await.unwrap();
    // The ACK and the first RTP reach the node before the digit does.
    tokio::time::sleep(Duration::from_millis(800)).await;
    send_digits(caller, "#").await;
    // The beep (250 ms), then the message.
    tokio::time::sleep(Duration::from_millis(250 + tone_ms)).await;
    send_digits(caller, "#").await;
    wait_for(node, callee, "VoicemailLeft", left + 1)
        .await
        .map_err(|e| caller.fail(e))
        .unwrap();
    // "Goodbye", then the node hangs up.
    call_over(node, caller, over).await;
}

/// Starts baresip for `user` over UDP and waits until it is registered.
async fn registered_baresip(node: &TestNode, user: &User) -> Phone {
    let mut phone = Phone::baresip(user, node, Transport::Udp).await.unwrap();
    phone.registered(node, Transport::Udp).await.unwrap();
    phone
}

/// The box's one message over the API: its id and length.
async fn only_message(vm: &mut VoicemailClient, user: &User) -> (String, u32) {
    let list = vm
        .list_messages(ListMessagesRequest {
            user: user.address.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.messages.len(), 1, "{list:?}");
    let m = &list.messages[0];
    (m.message_id.clone(), m.duration_ms)
}

/// `(new, saved)` of `user`'s box.
async fn counts(vm: &mut VoicemailClient, user: &User) -> (u32, u32) {
    let b = vm
        .get_mailbox(GetMailboxRequest {
            user: user.address.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    (b.new_messages, b.saved_messages)
}

/// bob's baresip leaves a 4 s message in alice's box (her calls go to it
/// while she has no phone). Then alice's baresip dials `*97` and keys:
/// `1` (new messages: "Message one", the message plays; she hears its
/// tone), `5` half-way through (saved: `VoicemailRead`, the box shows 0
/// new / 1 saved), `2` (saved messages: it plays again, to its end: she
/// hears all of it), `7` (deleted: `VoicemailDeleted`, its audio gone),
/// `*` (goodbye: the node hangs up).
#[tokio::test]
async fn the_owner_listens_saves_and_deletes_with_a_phones_digits() {
    bounded(120, async {
        let (_dir, node, alice, bob) = node_with_two_users().await.unwrap();
        let mut vm = box_with_forward(
            &node,
            &alice,
            SetForwardingRequest {
                unavailable: Some("voicemail".into()),
                ..Default::default()
            },
        )
        .await;
        let mut bob_phone = registered_baresip(&node, &bob).await;
        leave_message(&node, &mut bob_phone, &alice, 4_000).await;
        bob_phone.quit().await;
        let (message_id, message_ms) = only_message(&mut vm, &alice).await;
        // `#` ends it: what was sent after the beep, less the `#` itself.
        assert!(
            (3_000..=4_500).contains(&message_ms),
            "a {message_ms} ms message"
        );
        assert_eq!(counts(&mut vm, &alice).await, (1, 0));

        let prompts = Prompts::load().unwrap();
        let mut phone = registered_baresip(&node, &alice).await;
        let over = phone.calls_over();
        phone
            .command(&format!("dial sip:*97@{DOMAIN}"))
            .await
            .unwrap();
        answered(&phone).await.unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        // "You have one new message..." is interrupted by `1`.
        send_digits(&mut phone, "1").await;
        // "Message one", then half of the message.
        let announce_ms = prompt_ms(&prompts, Prompt::Message) + prompt_ms(&prompts, Prompt::One);
        tokio::time::sleep(Duration::from_millis(
            announce_ms + u64::from(message_ms) / 2,
        ))
        .await;
        assert_eq!(count(&node, &alice, "VoicemailRead").await, 0);
        send_digits(&mut phone, "5").await;
        let read = wait_for(&node, &alice, "VoicemailRead", 1)
            .await
            .map_err(|e| phone.fail(e))
            .unwrap();
        assert_eq!(read[0]["message_id"], message_id.as_str());
        assert_eq!(counts(&mut vm, &alice).await, (0, 1));

        // "Message saved. No more messages. To listen..." interrupted by
        // `2`: the saved message, played to its end this time.
        send_digits(&mut phone, "2").await;
        tokio::time::sleep(Duration::from_millis(
            announce_ms + u64::from(message_ms) + 1_500,
        ))
        .await;
        assert_eq!(count(&node, &alice, "VoicemailDeleted").await, 0);
        // The message menu plays; `7` deletes.
        send_digits(&mut phone, "7").await;
        let deleted = wait_for(&node, &alice, "VoicemailDeleted", 1)
            .await
            .map_err(|e| phone.fail(e))
            .unwrap();
        assert_eq!(deleted[0]["message_id"], message_id.as_str());
        assert_eq!(counts(&mut vm, &alice).await, (0, 0));
        let gone = eventually(STEP, "the message's audio to be gone", || async {
            let status = voicemail_client(&node)
                .await
                .get_message_audio(GetMessageAudioRequest {
                    user: alice.address.clone(),
                    message_id: message_id.clone(),
                })
                .await;
            let code = match status {
                Ok(response) => {
                    // A stream: the status comes with its first item.
                    match response.into_inner().message().await {
                        Ok(_) => tonic::Code::Ok,
                        Err(e) => e.code(),
                    }
                }
                Err(e) => e.code(),
            };
            Ok((code == tonic::Code::NotFound).then_some(code))
        })
        .await;
        assert_eq!(gone.unwrap(), tonic::Code::NotFound);

        // "Message deleted. No more messages. To listen..." and `*`:
        // goodbye, and the node hangs up.
        send_digits(&mut phone, "*").await;
        call_over(&node, &phone, over).await;

        // What alice heard: the message's tone twice, half of it, then
        // all of it (±0.3 s).
        let samples = heard(&phone).await;
        let spans = tone_spans(&samples, 440.0);
        let lengths: Vec<u32> = spans.iter().map(|(s, e)| e - s).collect();
        let longest = lengths.iter().copied().max().unwrap_or(0);
        assert!(
            (i64::from(longest) - i64::from(message_ms)).abs() <= 300,
            "the whole {message_ms} ms message was heard: tone spans {spans:?}"
        );
        let total: u32 = lengths.iter().sum();
        let first_play = total - longest;
        assert!(
            first_play >= 1_000 && first_play < message_ms,
            "half the message was heard before `5`: tone spans {spans:?}"
        );
        // "Message" before it (not interrupted) and "Goodbye" at the end;
        // not what a locked box says.
        for prompt in [Prompt::Message, Prompt::Goodbye] {
            let (at_ms, r) = best_match(&samples, &prompts.get(prompt));
            assert!(r >= HEARD_R, "{prompt:?} heard (r {r:.2} at {at_ms} ms)");
        }
        let (at_ms, r) = best_match(&samples, &prompts.get(Prompt::LockedOut));
        assert!(r < HEARD_R, "LockedOut not heard (r {r:.2} at {at_ms} ms)");
        phone.quit().await;
        node.stop().await.unwrap();
    })
    .await
}

/// How long a phone's `sndcode` of a mailbox number and `#` may take to be
/// sent (about 240 ms a digit) and the node to look the mailbox up, with
/// room for a loaded machine: digits before the look-up ends are not
/// heard (the menu takes none while it looks).
const MAILBOX_ENTRY: Duration = Duration::from_millis(2_500);

/// A node with `bob` (the caller) and users named by digits, each with a
/// box (PIN 4321): `*98` asks for a mailbox by its user's name, and a
/// keypad has only digits.
async fn node_with_numbered_boxes(
    numbers: &[&str],
) -> (tempfile::TempDir, TestNode, User, Vec<User>) {
    let (dir, node, _alice, bob) = node_with_two_users().await.unwrap();
    let mut boxes = Vec::new();
    for number in numbers {
        let user = create_user(&node, DOMAIN, number, PASSWORD, 0)
            .await
            .unwrap();
        voicemail_client(&node)
            .await
            .configure_mailbox(ConfigureMailboxRequest {
                user: user.address.clone(),
                enabled: Some(true),
                pin: Some("4321".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        boxes.push(user);
    }
    (dir, node, bob, boxes)
}

/// `phone` dials `*98` and waits for the answer (and for the node to hear
/// it before the first digit).
async fn dial_any_mailbox(phone: &mut Phone) {
    phone
        .command(&format!("dial sip:*98@{DOMAIN}"))
        .await
        .unwrap();
    answered(phone).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
}

/// At "Please enter the mailbox number": `owner`'s number, then `pin`;
/// waits until `owner`'s stream holds `rejected_after` `MailboxPinRejected`s
/// (for a wrong PIN: one more than before).
async fn enter_pin(
    node: &TestNode,
    phone: &mut Phone,
    owner: &User,
    pin: &str,
    rejected_after: usize,
) {
    send_digits(phone, &format!("{}#", owner.username)).await;
    tokio::time::sleep(MAILBOX_ENTRY).await;
    send_digits(phone, &format!("{pin}#")).await;
    wait_for(node, owner, "MailboxPinRejected", rejected_after)
        .await
        .map_err(|e| anyhow::anyhow!("{}\n{}", phone.fail(e), node_log(node)))
        .unwrap();
}

/// bob's baresip dials `*98`, names mailbox 2001 and keys a wrong PIN:
/// three times in a first call (the third ends it: "That PIN is not
/// correct. Goodbye."), twice in a second, whose fifth wrong PIN locks
/// the box ("Too many wrong PINs..."): `MailboxPinRejected` ×5 (attempts
/// 1 to 5) and `MailboxLockedOut` for 15 minutes in 2001's stream. A
/// third call with the right PIN is refused all the same: the caller
/// hears the locked prompt, nothing is accepted.
#[tokio::test]
async fn wrong_pins_from_any_phone_lock_the_box_out() {
    bounded(120, async {
        let (_dir, node, bob, boxes) = node_with_numbered_boxes(&["2001"]).await;
        let owner = &boxes[0];
        let prompts = Prompts::load().unwrap();
        let mut phone = registered_baresip(&node, &bob).await;

        // First call: three wrong PINs, then goodbye.
        let over = phone.calls_over();
        dial_any_mailbox(&mut phone).await;
        for attempt in 1..=3 {
            enter_pin(&node, &mut phone, owner, "1111", attempt).await;
        }
        call_over(&node, &phone, over).await;
        let first = heard(&phone).await;
        let (at_ms, r) = best_match(&first, &prompts.get(Prompt::Goodbye));
        assert!(r >= HEARD_R, "Goodbye heard (r {r:.2} at {at_ms} ms)");
        let (at_ms, r) = best_match(&first, &prompts.get(Prompt::LockedOut));
        assert!(
            r < HEARD_R,
            "LockedOut not heard yet (r {r:.2} at {at_ms} ms)"
        );
        assert_eq!(count(&node, owner, "MailboxLockedOut").await, 0);

        // Second call: the fifth wrong PIN in a row locks the box.
        let over = phone.calls_over();
        dial_any_mailbox(&mut phone).await;
        for attempt in 4..=5 {
            enter_pin(&node, &mut phone, owner, "9999", attempt).await;
        }
        let locked = wait_for(&node, owner, "MailboxLockedOut", 1).await.unwrap();
        call_over(&node, &phone, over).await;
        let second = heard(&phone).await;
        let (at_ms, r) = best_match(&second, &prompts.get(Prompt::LockedOut));
        assert!(r >= HEARD_R, "LockedOut heard (r {r:.2} at {at_ms} ms)");

        let events = user_events(&node, owner).await;
        let attempts: Vec<_> = events
            .iter()
            .filter(|(t, _)| t == "MailboxPinRejected")
            .map(|(_, d)| d["attempts"].as_u64().unwrap_or(0))
            .collect();
        assert_eq!(attempts, [1, 2, 3, 4, 5], "{events:?}");
        assert_eq!(locked[0]["attempts"], 5);
        // Locked for 15 minutes from about now.
        let now_us = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000;
        let until_us = i128::from(locked[0]["locked_until"].as_i64().unwrap());
        let locked_for_s = (until_us - now_us) / 1_000_000;
        assert!(
            (840..=900).contains(&locked_for_s),
            "locked for {locked_for_s} s more: {:?}",
            locked[0]
        );

        // Third call: the right PIN, but the box is locked.
        let over = phone.calls_over();
        dial_any_mailbox(&mut phone).await;
        send_digits(&mut phone, &format!("{}#", owner.username)).await;
        tokio::time::sleep(MAILBOX_ENTRY).await;
        send_digits(&mut phone, "4321#").await;
        call_over(&node, &phone, over).await;
        let third = heard(&phone).await;
        let (at_ms, r) = best_match(&third, &prompts.get(Prompt::LockedOut));
        assert!(r >= HEARD_R, "LockedOut heard (r {r:.2} at {at_ms} ms)");
        for prompt in [Prompt::NoMessages, Prompt::MainMenu] {
            let (at_ms, r) = best_match(&third, &prompts.get(prompt));
            assert!(r < HEARD_R, "{prompt:?} not heard (r {r:.2} at {at_ms} ms)");
        }
        let events = user_events(&node, owner).await;
        let security: Vec<&str> = events
            .iter()
            .map(|(t, _)| t.as_str())
            .filter(|t| t.starts_with("MailboxPin") || *t == "MailboxLockedOut")
            .collect();
        assert_eq!(
            security,
            [
                "MailboxPinChanged",
                "MailboxPinRejected",
                "MailboxPinRejected",
                "MailboxPinRejected",
                "MailboxPinRejected",
                "MailboxPinRejected",
                "MailboxLockedOut"
            ],
            "nothing accepted while locked"
        );
        phone.quit().await;
        node.stop().await.unwrap();
    })
    .await
}

/// On a box that is not locked, `*98` with a wrong PIN and then the right
/// one opens it: `MailboxPinRejected` (1), `MailboxPinAccepted` (the count
/// starts again), and the caller hears the box's summary ("You have no
/// messages") and, after `*`, goodbye.
#[tokio::test]
async fn the_right_pin_from_any_phone_opens_the_box() {
    bounded(90, async {
        let (_dir, node, bob, boxes) = node_with_numbered_boxes(&["2002"]).await;
        let owner = &boxes[0];
        let prompts = Prompts::load().unwrap();
        let mut phone = registered_baresip(&node, &bob).await;
        let over = phone.calls_over();
        dial_any_mailbox(&mut phone).await;
        enter_pin(&node, &mut phone, owner, "1234", 1).await;
        // "That PIN is not correct." heard whole, then "Please enter the
        // mailbox number..." interrupted.
        tokio::time::sleep(Duration::from_millis(
            prompt_ms(&prompts, Prompt::WrongPin) + 300,
        ))
        .await;
        send_digits(&mut phone, &format!("{}#", owner.username)).await;
        tokio::time::sleep(MAILBOX_ENTRY).await;
        send_digits(&mut phone, "4321#").await;
        wait_for(&node, owner, "MailboxPinAccepted", 1)
            .await
            .map_err(|e| phone.fail(e))
            .unwrap();
        // The summary, heard whole, then `*` during the main menu.
        tokio::time::sleep(Duration::from_millis(
            prompt_ms(&prompts, Prompt::NoMessages) + 1_000,
        ))
        .await;
        send_digits(&mut phone, "*").await;
        call_over(&node, &phone, over).await;
        let samples = heard(&phone).await;
        for prompt in [Prompt::WrongPin, Prompt::NoMessages, Prompt::Goodbye] {
            let (at_ms, r) = best_match(&samples, &prompts.get(prompt));
            assert!(r >= HEARD_R, "{prompt:?} heard (r {r:.2} at {at_ms} ms)");
        }
        let events: Vec<String> = user_events(&node, owner)
            .await
            .into_iter()
            .map(|(t, _)| t)
            .filter(|t| t.starts_with("MailboxPin") || t == "MailboxLockedOut")
            .collect();
        assert_eq!(
            events,
            [
                "MailboxPinChanged",
                "MailboxPinRejected",
                "MailboxPinAccepted"
            ]
        );
        phone.quit().await;
        node.stop().await.unwrap();
    })
    .await
}

/// alice's box takes one message (`max_messages` 1) and holds one: bob's
/// next call forwarded to it hears "The mailbox of the person you called
/// is full..." whole, and the node hangs up. alice's stream records
/// `VoicemailRefused` (reason `mailbox_full`, from bob); the box still
/// holds one message, and the blob store only its audio.
#[tokio::test]
async fn a_full_box_refuses_the_caller() {
    bounded(90, async {
        let (_dir, node, alice, bob) = node_with_two_users().await.unwrap();
        let mut vm = box_with_forward(
            &node,
            &alice,
            SetForwardingRequest {
                unavailable: Some("voicemail".into()),
                ..Default::default()
            },
        )
        .await;
        vm.configure_mailbox(ConfigureMailboxRequest {
            user: alice.address.clone(),
            max_messages: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
        let prompts = Prompts::load().unwrap();
        let mut phone = registered_baresip(&node, &bob).await;
        leave_message(&node, &mut phone, &alice, 2_000).await;
        let (message_id, _) = only_message(&mut vm, &alice).await;
        assert_eq!(counts(&mut vm, &alice).await, (1, 0));

        let over = phone.calls_over();
        phone
            .command(&format!("dial {}", alice.address))
            .await
            .unwrap();
        answered(&phone).await.unwrap();
        call_over(&node, &phone, over).await;
        let samples = heard(&phone).await;
        let full = prompts.get(Prompt::MailboxFull);
        let (at_ms, r) = best_match(&samples, &full);
        assert!(r >= HEARD_R, "MailboxFull heard (r {r:.2} at {at_ms} ms)");
        // Nothing else: no greeting, no beep; the call ends with the
        // prompt (what the phone heard is about as long).
        let (at_ms, r) = best_match(&samples, &prompts.get(Prompt::GreetingDefault));
        assert!(r < HEARD_R, "no greeting (r {r:.2} at {at_ms} ms)");
        assert!(
            tone_spans(&samples, 1000.0).is_empty(),
            "no beep: {:?}",
            tone_spans(&samples, 1000.0)
        );
        let full_ms = full.len() as i64 / 8;
        let heard_ms = samples.len() as i64 / 8;
        assert!(
            (full_ms - 500..=full_ms + 2_000).contains(&heard_ms),
            "heard {heard_ms} ms for a {full_ms} ms prompt"
        );
        let loud = samples.iter().filter(|s| s.unsigned_abs() > 1000).count();
        assert!(loud > 8_000, "the prompt is speech ({loud} loud samples)");

        let refused = wait_for(&node, &alice, "VoicemailRefused", 1)
            .await
            .unwrap();
        assert_eq!(refused[0]["reason"], "mailbox_full", "{:?}", refused[0]);
        assert!(
            refused[0]["from"]
                .as_str()
                .is_some_and(|f| f.starts_with("bob@")),
            "{:?}",
            refused[0]
        );
        assert_eq!(count(&node, &alice, "VoicemailLeft").await, 1);
        assert_eq!(counts(&mut vm, &alice).await, (1, 0));
        phone.quit().await;

        // The blob store holds the one message's audio, nothing more.
        let data_dir = node.data_dir.clone();
        node.stop().await.unwrap();
        let store = dialtone_eventlog::sqlite_blob::SqliteBlobStore::open(
            &data_dir.join("blobs.sqlite3"),
            dialtone_eventlog::sqlite_blob::SqliteBlobOptions::default(),
        )
        .unwrap();
        let blobs = dialtone_eventlog::blob::BlobStore::list(&store, None, 100)
            .await
            .unwrap();
        let ids: Vec<String> = blobs.iter().map(|b| b.id.to_string()).collect();
        assert_eq!(ids, [message_id]);
        dialtone_eventlog::blob::BlobStore::close(&store)
            .await
            .unwrap();
    })
    .await
}
