//! `dialtone domain ...`: create, show, list, change, suspend, resume and
//! delete domains.

use dialtone_api::pb;
use serde_json::{json, Value};

use super::connection::{status_error, Clients};
use super::output::{s, time, Output};

#[derive(clap::Subcommand, Debug)]
pub enum DomainCommand {
    /// Create a domain (its name is also the SIP realm).
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// Allow calls to and from other domains.
        #[arg(long)]
        allow_cross_domain_calls: bool,
        /// Digest algorithms offered, in challenge order: md5, sha-256, or both
        /// comma-separated [default: the node's --sip-digest-algorithms, md5 unless set].
        #[arg(long, value_delimiter = ',')]
        digest_algorithms: Vec<String>,
        /// Deprecated (use --digest-algorithms): remove MD5 from the node's default.
        #[arg(long)]
        no_md5: bool,
        /// IANA time zone the domain's schedules are read in (e.g. Europe/Berlin) [default: UTC].
        #[arg(long, default_value = "")]
        time_zone: String,
        /// Idempotency key: a retry with the same id does nothing twice.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Show a domain.
    Get { name: String },
    /// List domains.
    List {
        /// Include deleted domains.
        #[arg(long)]
        include_deleted: bool,
    },
    /// Change a domain's settings.
    Update {
        name: String,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        allow_cross_domain_calls: Option<bool>,
        /// Digest algorithms offered, in challenge order: md5, sha-256, or both
        /// comma-separated (e.g. sha-256,md5).
        #[arg(long, value_delimiter = ',')]
        digest_algorithms: Vec<String>,
        /// Deprecated (use --digest-algorithms): true adds MD5 at the end of the
        /// domain's list, false removes it.
        #[arg(long)]
        md5_allowed: Option<bool>,
        /// IANA time zone the domain's schedules are read in (e.g. Europe/Berlin).
        #[arg(long)]
        time_zone: Option<String>,
        // Boxed: they would make every client command as large.
        #[command(flatten)]
        feature_codes: Box<FeatureCodeArgs>,
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Suspend a domain: its users can no longer register or call.
    Suspend {
        name: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Resume a suspended domain.
    Resume { name: String },
    /// Delete a domain (it must have no users).
    Delete { name: String },
}

/// A domain's feature codes (ADR 0020), as `domain update` changes them.
#[derive(clap::Args, Debug)]
pub struct FeatureCodeArgs {
    /// Feature codes (dialled from a phone) on or off for the domain's users.
    #[arg(long = "feature-codes")]
    enabled: Option<bool>,
    /// The code that forwards every call to what follows it [default: *72].
    #[arg(long = "feature-code-forward-always")]
    forward_always: Option<String>,
    /// The code that removes the forward-always rule [default: *73].
    #[arg(long = "feature-code-forwarding-off")]
    forwarding_off: Option<String>,
    /// The code that turns do-not-disturb on [default: *78].
    #[arg(long = "feature-code-dnd-on")]
    dnd_on: Option<String>,
    /// The code that turns do-not-disturb off [default: *79].
    #[arg(long = "feature-code-dnd-off")]
    dnd_off: Option<String>,
    /// The code for the caller's own mailbox menu [default: *97].
    #[arg(long = "feature-code-voicemail-own")]
    voicemail_own: Option<String>,
    /// The code for any mailbox of the domain (mailbox and PIN asked) [default: *98].
    #[arg(long = "feature-code-voicemail-any")]
    voicemail_any: Option<String>,
}

pub(super) async fn run(c: &mut Clients, out: &Output, cmd: DomainCommand) -> anyhow::Result<()> {
    let p = &mut c.provisioning;
    let result = match cmd {
        DomainCommand::Create {
            name,
            description,
            allow_cross_domain_calls,
            digest_algorithms,
            no_md5,
            time_zone,
            request_id,
        } => {
            if no_md5 {
                deprecated("--no-md5");
            }
            p.create_domain(pb::CreateDomainRequest {
                name,
                description,
                allow_cross_domain_calls,
                md5_allowed: no_md5.then_some(false),
                request_id,
                digest_algorithms,
                time_zone,
            })
            .await
        }
        DomainCommand::Get { name } => p.get_domain(pb::GetDomainRequest { domain: name }).await,
        DomainCommand::List { include_deleted } => {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = p
                    .list_domains(pb::ListDomainsRequest {
                        page_size: 500,
                        page_token: page_token.clone(),
                        include_deleted,
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                all.extend(page.domains);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            out.list(all.iter().map(domain_json).collect(), domain_line);
            return Ok(());
        }
        DomainCommand::Update {
            name,
            description,
            allow_cross_domain_calls,
            digest_algorithms,
            md5_allowed,
            time_zone,
            feature_codes,
            expected_version,
        } => {
            let FeatureCodeArgs {
                enabled,
                forward_always,
                forwarding_off,
                dnd_on,
                dnd_off,
                voicemail_own,
                voicemail_any,
            } = *feature_codes;
            if md5_allowed.is_some() {
                deprecated("--md5-allowed");
            }
            p.update_domain(pb::UpdateDomainRequest {
                domain: name,
                description,
                allow_cross_domain_calls,
                md5_allowed,
                request_id: String::new(),
                expected_version,
                digest_algorithms,
                time_zone,
                feature_codes_enabled: enabled,
                feature_code_forward_always: forward_always,
                feature_code_forwarding_off: forwarding_off,
                feature_code_dnd_on: dnd_on,
                feature_code_dnd_off: dnd_off,
                feature_code_voicemail_own: voicemail_own,
                feature_code_voicemail_any: voicemail_any,
            })
            .await
        }
        DomainCommand::Suspend { name, reason } => {
            p.suspend_domain(pb::SuspendDomainRequest {
                domain: name,
                reason,
                ..Default::default()
            })
            .await
        }
        DomainCommand::Resume { name } => {
            p.resume_domain(pb::ResumeDomainRequest {
                domain: name,
                ..Default::default()
            })
            .await
        }
        DomainCommand::Delete { name } => {
            p.delete_domain(pb::DeleteDomainRequest {
                domain: name,
                ..Default::default()
            })
            .await
        }
    };
    let domain = result.map_err(status_error)?.into_inner();
    out.one(domain_json(&domain), domain_details);
    Ok(())
}

/// Says on stderr that a flag is deprecated (it still works).
fn deprecated(flag: &str) {
    eprintln!(
        "warning: {flag} is deprecated; use --digest-algorithms (md5, sha-256, or both in \
         challenge order, e.g. --digest-algorithms sha-256,md5)"
    );
}

pub(super) fn domain_status(status: i32) -> &'static str {
    match pb::DomainStatus::try_from(status) {
        Ok(pb::DomainStatus::Active) => "active",
        Ok(pb::DomainStatus::Suspended) => "suspended",
        Ok(pb::DomainStatus::Deleted) => "deleted",
        _ => "unknown",
    }
}

fn domain_json(d: &pb::Domain) -> Value {
    json!({
        "id": d.id,
        "name": d.name,
        "status": domain_status(d.status),
        "description": d.description,
        "allow_cross_domain_calls": d.allow_cross_domain_calls,
        "digest_algorithms": d.digest_algorithms,
        "time_zone": d.time_zone,
        "feature_codes": d.feature_codes.as_ref().map(|c| json!({
            "enabled": c.enabled,
            "forward_always": c.forward_always,
            "forwarding_off": c.forwarding_off,
            "dnd_on": c.dnd_on,
            "dnd_off": c.dnd_off,
            "voicemail_own": c.voicemail_own,
            "voicemail_any": c.voicemail_any,
        })),
        "md5_allowed": d.md5_allowed,
        "suspend_reason": d.suspend_reason,
        "user_count": d.user_count,
        "created_at": time(&d.created_at),
        "version": d.version,
    })
}

fn domain_line(v: &Value) -> String {
    format!(
        "{:<40} {:<10} users={:<6} version={}",
        s(v, "name"),
        s(v, "status"),
        s(v, "user_count"),
        s(v, "version")
    )
}

fn domain_details(v: &Value) -> String {
    let mut text = format!(
        "domain   {}\nid       {}\nstatus   {}\nusers    {}\ncreated  {}\nversion  {}\ndigest   {}\ncross-domain calls {}",
        s(v, "name"),
        s(v, "id"),
        s(v, "status"),
        s(v, "user_count"),
        s(v, "created_at"),
        s(v, "version"),
        names(v, "digest_algorithms"),
        s(v, "allow_cross_domain_calls"),
    );
    text.push_str(&format!("\ntime zone {}", s(v, "time_zone")));
    let codes = &v["feature_codes"];
    if codes["enabled"].as_bool() == Some(true) {
        text.push_str(&format!(
            "\nfeature codes forward-always {}  forwarding-off {}  dnd-on {}  dnd-off {}  \
             voicemail-own {}  voicemail-any {}",
            s(codes, "forward_always"),
            s(codes, "forwarding_off"),
            s(codes, "dnd_on"),
            s(codes, "dnd_off"),
            s(codes, "voicemail_own"),
            s(codes, "voicemail_any"),
        ));
    } else if codes.is_object() {
        text.push_str("\nfeature codes off");
    }
    if !s(v, "description").is_empty() {
        text.push_str(&format!("\ndescription {}", s(v, "description")));
    }
    if !s(v, "suspend_reason").is_empty() {
        text.push_str(&format!("\nsuspended because {}", s(v, "suspend_reason")));
    }
    text
}

/// A list of names as `A,B` (`-` when absent).
fn names(v: &Value, key: &str) -> String {
    match v[key].as_array() {
        Some(list) if !list.is_empty() => list
            .iter()
            .map(|n| n.as_str().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(","),
        _ => "-".into(),
    }
}
