//! `dialtone group ...`: create, show, list, change and delete ring groups.

use dialtone_api::pb;
use serde_json::{json, Value};

use super::connection::{status_error, Clients};
use super::output::{s, Output};
use super::user::{forwarding_json, forwarding_line};

#[derive(clap::Subcommand, Debug)]
pub enum GroupCommand {
    /// Create a ring group:
    /// `dialtone group create sales@example.com --members alice,bob:15 --strategy sequential`.
    Create {
        /// name@domain (a name no user of the domain has)
        group: String,
        // Boxed: many options, and client commands stay small.
        #[command(flatten)]
        settings: Box<GroupSettings>,
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Show a ring group.
    Get { group: String },
    /// List the ring groups of a domain.
    List {
        #[arg(long)]
        domain: String,
    },
    /// Change some settings of a ring group (the others are kept).
    Update {
        group: String,
        // Boxed: many options, and client commands stay small.
        #[command(flatten)]
        settings: Box<GroupSettings>,
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Delete a ring group.
    Delete { group: String },
}

/// A group's settings; each one not given is kept (or defaults, on create).
#[derive(clap::Args, Debug)]
pub struct GroupSettings {
    /// The members, in order, comma-separated: user names of the group's
    /// domain, each with an optional ring time, e.g. `alice,bob:15,carol`.
    #[arg(long, value_delimiter = ',')]
    members: Option<Vec<String>>,
    /// simultaneous (default), sequential, round-robin or longest-idle.
    #[arg(long)]
    strategy: Option<String>,
    /// A member's ring time in the sequential strategies (default 20 s).
    #[arg(long)]
    ring: Option<u32>,
    /// How long the group rings in all (default 60 s); then the call goes
    /// to --no-answer, if given.
    #[arg(long)]
    timeout: Option<u32>,
    /// Skip members on a call (default true).
    #[arg(long)]
    skip_busy: Option<bool>,
    /// Skip members with do-not-disturb on (default true).
    #[arg(long)]
    skip_dnd: Option<bool>,
    /// Send every call here instead (with --when: only then, e.g. after hours).
    #[arg(long)]
    always: Option<String>,
    /// Where calls go when every member is busy or has do-not-disturb on.
    #[arg(long)]
    busy: Option<String>,
    /// Where calls go when nobody answers within --timeout.
    #[arg(long)]
    no_answer: Option<String>,
    /// Where calls go when no member has a phone registered.
    #[arg(long)]
    unavailable: Option<String>,
    /// The targets given apply only while this holds, e.g.
    /// "outside mon-fri 09:00-17:00; holidays 2026-12-25" (the domain's
    /// time zone); `always` removes their condition.
    #[arg(long)]
    when: Option<String>,
}

impl GroupSettings {
    fn change(self) -> anyhow::Result<pb::RingGroupChange> {
        let when = self.when;
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
        let whens = [
            when_for(&self.always),
            when_for(&self.busy),
            when_for(&self.no_answer),
            when_for(&self.unavailable),
        ];
        if when.is_some() && whens.iter().all(Option::is_none) {
            anyhow::bail!(
                "--when applies to the targets given with it: add --always, --busy, --no-answer or --unavailable with a target"
            );
        }
        let [always_when, busy_when, no_answer_when, unavailable_when] = whens;
        // `none` removes a target: the API's empty string.
        let rule = |t: Option<String>| {
            t.map(|t| {
                if t.eq_ignore_ascii_case("none") {
                    String::new()
                } else {
                    t
                }
            })
        };
        Ok(pb::RingGroupChange {
            members: self.members.map(|members| pb::RingGroupMembers {
                members: members
                    .into_iter()
                    .map(|m| m.trim().to_owned())
                    .filter(|m| !m.is_empty())
                    .collect(),
            }),
            strategy: self.strategy,
            ring_secs: self.ring,
            timeout_secs: self.timeout,
            skip_busy: self.skip_busy,
            skip_dnd: self.skip_dnd,
            always: rule(self.always),
            busy: rule(self.busy),
            no_answer: rule(self.no_answer),
            unavailable: rule(self.unavailable),
            always_when,
            busy_when,
            no_answer_when,
            unavailable_when,
        })
    }
}

pub(super) async fn run(c: &mut Clients, out: &Output, cmd: GroupCommand) -> anyhow::Result<()> {
    let p = &mut c.provisioning;
    let result = match cmd {
        GroupCommand::Create {
            group,
            settings,
            request_id,
        } => {
            p.create_ring_group(pb::CreateRingGroupRequest {
                address: group,
                settings: Some((*settings).change()?),
                request_id,
                expected_version: None,
            })
            .await
        }
        GroupCommand::Get { group } => {
            p.get_ring_group(pb::GetRingGroupRequest { address: group })
                .await
        }
        GroupCommand::List { domain } => {
            let list = p
                .list_ring_groups(pb::ListRingGroupsRequest { domain })
                .await
                .map_err(status_error)?
                .into_inner();
            out.list(
                list.ring_groups.iter().map(group_json).collect(),
                group_line,
            );
            return Ok(());
        }
        GroupCommand::Update {
            group,
            settings,
            expected_version,
        } => {
            p.update_ring_group(pb::UpdateRingGroupRequest {
                address: group,
                settings: Some((*settings).change()?),
                request_id: String::new(),
                expected_version,
            })
            .await
        }
        GroupCommand::Delete { group } => {
            p.delete_ring_group(pb::DeleteRingGroupRequest {
                address: group,
                ..Default::default()
            })
            .await
        }
    };
    let group = result.map_err(status_error)?.into_inner();
    out.one(group_json(&group), group_details);
    Ok(())
}

fn strategy_name(strategy: i32) -> &'static str {
    match pb::RingStrategy::try_from(strategy) {
        Ok(pb::RingStrategy::Simultaneous) => "simultaneous",
        Ok(pb::RingStrategy::Sequential) => "sequential",
        Ok(pb::RingStrategy::RoundRobin) => "round_robin",
        Ok(pb::RingStrategy::LongestIdle) => "longest_idle",
        _ => "unspecified",
    }
}

pub(super) fn group_json(g: &pb::RingGroup) -> Value {
    json!({
        "address": g.address,
        "members": g.members.iter().map(|m| json!({
            "user": m.user,
            "ring_secs": (m.ring_secs > 0).then_some(m.ring_secs),
        })).collect::<Vec<_>>(),
        "strategy": strategy_name(g.strategy),
        "ring_secs": g.ring_secs,
        "timeout_secs": g.timeout_secs,
        "skip_busy": g.skip_busy,
        "skip_dnd": g.skip_dnd,
        "forwarding": forwarding_json(g.forwarding.as_ref()),
        "version": g.version,
    })
}

/// `alice, bob (15 s)`.
fn members_line(v: &Value) -> String {
    v["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .map(|m| match m["ring_secs"].as_u64() {
                    Some(secs) => format!("{} ({secs} s)", s(m, "user")),
                    None => s(m, "user"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

pub(super) fn group_line(v: &Value) -> String {
    format!(
        "{:<40} {:<13} {}",
        s(v, "address"),
        s(v, "strategy"),
        members_line(v)
    )
}

fn group_details(v: &Value) -> String {
    let skip: Vec<&str> = [("skip_busy", "on a call"), ("skip_dnd", "do-not-disturb")]
        .into_iter()
        .filter(|(key, _)| v[*key] == Value::Bool(true))
        .map(|(_, label)| label)
        .collect();
    format!(
        "ring group    {}\nmembers       {}\nstrategy      {}\nring time     {} s per member (sequential strategies)\ntimeout       {} s\nskips         {}\nforwarding    {}\nversion       {}",
        s(v, "address"),
        members_line(v),
        s(v, "strategy"),
        s(v, "ring_secs"),
        s(v, "timeout_secs"),
        if skip.is_empty() { "nobody".to_owned() } else { skip.join(", ") },
        forwarding_line(v).replace("no answer (", "no answer after ("),
        s(v, "version"),
    )
}
