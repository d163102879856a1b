//! `dialtone user ...`: create, show, list, change, disable, enable and
//! delete users, and set their SIP passwords.

use anyhow::Context as _;
use dialtone_api::pb;
use serde_json::{json, Value};

use super::connection::{status_error, Clients};
use super::output::{s, time, Output};

#[derive(clap::Subcommand, Debug)]
pub enum UserCommand {
    /// Create a user: `dialtone user create alice@example.com --password ...`.
    Create {
        /// username@domain
        user: String,
        #[arg(long, env = "DIALTONE_USER_PASSWORD", hide_env_values = true)]
        password: String,
        #[arg(long, default_value = "")]
        display_name: String,
        #[arg(long, default_value = "")]
        caller_id: String,
        /// Maximum simultaneous registrations (default 10).
        #[arg(long)]
        max_contacts: Option<u32>,
        /// Create the user disabled.
        #[arg(long)]
        disabled: bool,
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Show a user (by username@domain or id).
    Get { user: String },
    /// List the users of a domain.
    List {
        #[arg(long)]
        domain: String,
    },
    /// Change a user's settings.
    Update {
        user: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        caller_id: Option<String>,
        #[arg(long)]
        max_contacts: Option<u32>,
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Set a user's SIP password.
    SetPassword {
        user: String,
        #[arg(long, env = "DIALTONE_USER_PASSWORD", hide_env_values = true)]
        password: String,
    },
    /// Set a user's call forwarding rules:
    /// `dialtone user forward alice@example.com --busy bob --no-answer carol --after 15`.
    /// A target is `bob` (same domain), `bob@other.example`, `+15551234567`,
    /// `voicemail[:user]`, `group:name` or `conference:room`; `none` removes
    /// that rule. Rules not given are kept. `--when` limits the rules given
    /// with it to a schedule in the domain's time zone:
    /// `dialtone user forward alice@example.com --always bob --when "outside mon-fri 09:00-17:00"`.
    Forward {
        user: String,
        /// Forward every call (the phones do not ring).
        #[arg(long)]
        always: Option<String>,
        /// Forward when every phone answers busy, or do-not-disturb is on.
        #[arg(long)]
        busy: Option<String>,
        /// Forward when nobody answers within --after seconds.
        #[arg(long)]
        no_answer: Option<String>,
        /// Ring time before the no-answer rule forwards (default 20 s).
        #[arg(long)]
        after: Option<u32>,
        /// Forward when no phone is registered or none can be reached.
        #[arg(long)]
        unavailable: Option<String>,
        /// The rules given apply only while this holds: `[inside|outside] DAYS HH:MM-HH:MM[; ...][; holidays DATE, ...]`,
        /// e.g. "outside mon-fri 09:00-17:00; holidays 2026-12-25"; `always` removes their condition.
        #[arg(long)]
        when: Option<String>,
        /// Remove every rule (then apply the ones given).
        #[arg(long)]
        off: bool,
        /// Find-me/follow-me: after --follow-me-after seconds these users'
        /// phones ring too (comma-separated, e.g. `bob,carol@other.example`);
        /// `none` turns it off.
        #[arg(long, value_delimiter = ',')]
        follow_me: Option<Vec<String>>,
        /// How long the own phones ring alone first (default 10 s; 0: all at once).
        #[arg(long)]
        follow_me_after: Option<u32>,
        /// Ring the follow-me targets one after the other instead of together.
        #[arg(long)]
        follow_me_sequential: Option<bool>,
        /// Each target's ring time when sequential (default 20 s).
        #[arg(long)]
        follow_me_ring: Option<u32>,
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Turn do-not-disturb on or off: `dialtone user dnd alice@example.com on`.
    Dnd {
        user: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Disable a user: it can no longer register or call.
    Disable { user: String },
    /// Enable a disabled user.
    Enable { user: String },
    /// Delete a user.
    Delete { user: String },
}

pub(super) async fn run(c: &mut Clients, out: &Output, cmd: UserCommand) -> anyhow::Result<()> {
    let p = &mut c.provisioning;
    let result = match cmd {
        UserCommand::Create {
            user,
            password,
            display_name,
            caller_id,
            max_contacts,
            disabled,
            request_id,
        } => {
            let (username, domain) = user
                .rsplit_once('@')
                .with_context(|| format!("'{user}' is not username@domain"))?;
            p.create_user(pb::CreateUserRequest {
                domain: domain.to_owned(),
                username: username.to_owned(),
                password,
                display_name,
                caller_id,
                max_contacts: max_contacts.unwrap_or(0),
                enabled: Some(!disabled),
                request_id,
            })
            .await
        }
        UserCommand::Get { user } => p.get_user(pb::GetUserRequest { user }).await,
        UserCommand::List { domain } => {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = p
                    .list_users(pb::ListUsersRequest {
                        domain: domain.clone(),
                        page_size: 1000,
                        page_token: page_token.clone(),
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                all.extend(page.users);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            out.list(all.iter().map(user_json).collect(), user_line);
            return Ok(());
        }
        UserCommand::Update {
            user,
            display_name,
            caller_id,
            max_contacts,
            expected_version,
        } => {
            p.update_user(pb::UpdateUserRequest {
                user,
                display_name,
                caller_id,
                max_contacts,
                enabled: None,
                request_id: String::new(),
                expected_version,
            })
            .await
        }
        UserCommand::SetPassword { user, password } => {
            p.set_password(pb::SetPasswordRequest {
                user,
                password,
                ..Default::default()
            })
            .await
        }
        UserCommand::Forward {
            user,
            always,
            busy,
            no_answer,
            after,
            unavailable,
            when,
            off,
            follow_me,
            follow_me_after,
            follow_me_sequential,
            follow_me_ring,
            expected_version,
        } => {
            // --when goes with each rule given a target in this command.
            let when_for = |rule: &Option<String>| match (&when, rule) {
                (Some(w), Some(t)) if !t.eq_ignore_ascii_case("none") => {
                    Some(if w.eq_ignore_ascii_case("always") {
                        String::new()
                    } else {
                        w.clone()
                    })
                }
                _ => None,
            };
            let (always_when, busy_when, no_answer_when, unavailable_when) = (
                when_for(&always),
                when_for(&busy),
                when_for(&no_answer),
                when_for(&unavailable),
            );
            if when.is_some()
                && [&always_when, &busy_when, &no_answer_when, &unavailable_when]
                    .iter()
                    .all(|w| w.is_none())
            {
                anyhow::bail!(
                    "--when applies to the rules given with it: add --always, --busy, --no-answer or --unavailable with a target"
                );
            }
            // `none` removes a rule: the API's empty string.
            let rule = |t: Option<String>| {
                t.map(|t| {
                    if t.eq_ignore_ascii_case("none") {
                        String::new()
                    } else {
                        t
                    }
                })
            };
            p.set_forwarding(pb::SetForwardingRequest {
                user,
                always: rule(always),
                busy: rule(busy),
                no_answer: rule(no_answer),
                no_answer_after_secs: after,
                unavailable: rule(unavailable),
                clear: off,
                request_id: String::new(),
                expected_version,
                always_when,
                busy_when,
                no_answer_when,
                unavailable_when,
                follow_me: follow_me.map(|targets| pb::FollowMeTargets {
                    targets: targets
                        .into_iter()
                        .filter(|t| !t.eq_ignore_ascii_case("none"))
                        .collect(),
                }),
                follow_me_after_secs: follow_me_after,
                follow_me_sequential,
                follow_me_ring_secs: follow_me_ring,
            })
            .await
        }
        UserCommand::Dnd { user, state } => {
            p.set_dnd(pb::SetDndRequest {
                user,
                dnd: state == "on",
                ..Default::default()
            })
            .await
        }
        UserCommand::Disable { user } => {
            p.update_user(pb::UpdateUserRequest {
                user,
                enabled: Some(false),
                ..Default::default()
            })
            .await
        }
        UserCommand::Enable { user } => {
            p.update_user(pb::UpdateUserRequest {
                user,
                enabled: Some(true),
                ..Default::default()
            })
            .await
        }
        UserCommand::Delete { user } => {
            p.delete_user(pb::DeleteUserRequest {
                user,
                ..Default::default()
            })
            .await
        }
    };
    let user = result.map_err(status_error)?.into_inner();
    out.one(user_json(&user), user_details);
    Ok(())
}

fn user_json(u: &pb::User) -> Value {
    json!({
        "id": u.id,
        "address": u.address,
        "username": u.username,
        "domain": u.domain,
        "domain_id": u.domain_id,
        "display_name": u.display_name,
        "caller_id": u.caller_id,
        "max_contacts": u.max_contacts,
        "enabled": u.enabled,
        "deleted": u.deleted,
        "created_at": time(&u.created_at),
        "password_set_at": time(&u.password_set_at),
        "version": u.version,
        "forwarding": forwarding_json(u.forwarding.as_ref()),
        "dnd": u.dnd,
    })
}

pub(super) fn forwarding_json(f: Option<&pb::Forwarding>) -> Value {
    let f = f.cloned().unwrap_or_default();
    let rule = |t: &str| if t.is_empty() { Value::Null } else { json!(t) };
    json!({
        "always": rule(&f.always),
        "busy": rule(&f.busy),
        "no_answer": rule(&f.no_answer),
        "no_answer_after_secs": (f.no_answer_after_secs > 0).then_some(f.no_answer_after_secs),
        "unavailable": rule(&f.unavailable),
        "when": {
            "always": rule(&f.always_when),
            "busy": rule(&f.busy_when),
            "no_answer": rule(&f.no_answer_when),
            "unavailable": rule(&f.unavailable_when),
        },
        "follow_me": f.follow_me.as_ref().map(|fm| json!({
            "targets": fm.targets,
            "after_secs": fm.after_secs,
            "sequential": fm.sequential,
            "ring_secs": fm.ring_secs,
        })),
    })
}

/// The rules in one line: `busy -> bob@example.com, no answer (15 s) -> ...`.
pub(super) fn forwarding_line(v: &Value) -> String {
    let f = &v["forwarding"];
    let mut rules = Vec::new();
    for (key, label) in [
        ("always", "always"),
        ("busy", "busy"),
        ("no_answer", "no answer"),
        ("unavailable", "unavailable"),
    ] {
        if let Some(target) = f[key].as_str() {
            let label = if key == "no_answer" {
                format!("{label} ({} s)", s(f, "no_answer_after_secs"))
            } else {
                label.to_owned()
            };
            match f["when"][key].as_str() {
                Some(when) => rules.push(format!("{label} -> {target} ({when})")),
                None => rules.push(format!("{label} -> {target}")),
            }
        }
    }
    let fm = &f["follow_me"];
    if let Some(targets) = fm["targets"].as_array() {
        let targets: Vec<&str> = targets.iter().filter_map(Value::as_str).collect();
        let how = if fm["sequential"] == Value::Bool(true) {
            format!("one after the other, {} s each", s(fm, "ring_secs"))
        } else {
            "together".to_owned()
        };
        rules.push(format!(
            "follow me after {} s -> {} ({how})",
            s(fm, "after_secs"),
            targets.join(", ")
        ));
    }
    if rules.is_empty() {
        "off".to_owned()
    } else {
        rules.join(", ")
    }
}

fn user_line(v: &Value) -> String {
    format!(
        "{:<48} {:<8} {:<24} version={}",
        s(v, "address"),
        if v["enabled"] == Value::Bool(true) {
            "enabled"
        } else {
            "disabled"
        },
        s(v, "display_name"),
        s(v, "version")
    )
}

fn user_details(v: &Value) -> String {
    format!(
        "user          {}\nid            {}\nstatus        {}\ndisplay name  {}\ncaller id     {}\nmax contacts  {}\nforwarding    {}\ndnd           {}\ncreated       {}\npassword set  {}\nversion       {}",
        s(v, "address"),
        s(v, "id"),
        if v["deleted"] == Value::Bool(true) {
            "deleted"
        } else if v["enabled"] == Value::Bool(true) {
            "enabled"
        } else {
            "disabled"
        },
        s(v, "display_name"),
        s(v, "caller_id"),
        s(v, "max_contacts"),
        forwarding_line(v),
        if v["dnd"] == Value::Bool(true) { "on" } else { "off" },
        s(v, "created_at"),
        s(v, "password_set_at"),
        s(v, "version"),
    )
}
