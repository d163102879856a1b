//! `dialtone trunk ...`, `dialtone dialplan ...` and `dialtone number ...`
//! (ADR 0028): trunks to carriers, a domain's dial plan, phone numbers.
//! A carrier password is sent as given (from `--password`, its
//! environment variable, or `--password-file`) and never shown: the server
//! answers whether a trunk has credentials and which key sealed them.

use anyhow::Context as _;
use dialtone_api::pb;
use serde_json::{json, Value};

use super::connection::{status_error, Clients};
use super::output::{s, time, Output};

#[derive(clap::Subcommand, Debug)]
pub enum TrunkCommand {
    /// Create a trunk:
    /// `dialtone trunk create carrier@example.com --gateway sip:gw1.carrier.example --gateway 'sip:gw2.carrier.example;transport=tcp' --username acct --password-file pw.txt --inbound-source 203.0.113.0/24`.
    Create {
        /// name@domain
        trunk: String,
        #[command(flatten)]
        settings: Box<TrunkSettings>,
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Show a trunk.
    Get { trunk: String },
    /// List the trunks of a domain.
    List {
        /// Domain name or id
        domain: String,
    },
    /// Change some settings of a trunk (the others are kept).
    Update {
        trunk: String,
        #[command(flatten)]
        settings: Box<TrunkSettings>,
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Delete a trunk (refused while a dial plan rule uses it).
    Delete { trunk: String },
}

/// A trunk's settings; each one not given is kept (or defaults, on create).
#[derive(clap::Args)]
pub struct TrunkSettings {
    /// A gateway, in priority order (repeat): sip:host[:port] or
    /// sips:host[:port], with ;transport=udp|tcp|tls.
    #[arg(long = "gateway")]
    gateways: Vec<String>,
    /// The carrier account's username (digest credentials).
    #[arg(long)]
    username: Option<String>,
    /// The carrier account's password (prefer --password-file: a command
    /// line is visible to other users of the machine).
    #[arg(
        long,
        env = "DIALTONE_TRUNK_PASSWORD",
        hide_env_values = true,
        conflicts_with = "password_file"
    )]
    password: Option<String>,
    /// A file holding the carrier password (its first line).
    #[arg(long)]
    password_file: Option<std::path::PathBuf>,
    /// Answer challenges of this realm only; `none` removes it.
    #[arg(long)]
    realm: Option<String>,
    /// Remove the credentials.
    #[arg(long, conflicts_with_all = ["username", "password", "password_file", "realm"])]
    no_credentials: bool,
    /// Register to the carrier (needs credentials). `--register false`
    /// stops it.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    register: Option<bool>,
    /// Registration expiry in seconds, 60 to 86400 (3600).
    #[arg(long)]
    register_expiry: Option<u32>,
    /// The From header's host (`none`: the gateway's).
    #[arg(long)]
    from_domain: Option<String>,
    /// The From header's user part: caller_id, username, or a fixed value.
    #[arg(long)]
    from_user: Option<String>,
    /// The caller ID the carrier sees: user, anonymous, or an E.164 number.
    #[arg(long)]
    caller_id: Option<String>,
    /// Codecs in order of preference: PCMU,PCMA.
    #[arg(long, value_delimiter = ',')]
    codecs: Option<Vec<String>>,
    /// Calls at once (0: no limit).
    #[arg(long)]
    max_calls: Option<u32>,
    /// An address or network calls from the carrier come from (repeat, or
    /// comma-separated); `none` clears the list.
    #[arg(long = "inbound-source", value_delimiter = ',')]
    inbound_sources: Vec<String>,
}

// The password is a secret: a debug print of the command line shows that
// it was given, not what it is.
impl std::fmt::Debug for TrunkSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrunkSettings")
            .field("gateways", &self.gateways)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_file", &self.password_file)
            .field("realm", &self.realm)
            .field("no_credentials", &self.no_credentials)
            .field("register", &self.register)
            .finish_non_exhaustive()
    }
}

fn none_is_empty(v: Option<String>) -> Option<String> {
    v.map(|v| {
        if v.eq_ignore_ascii_case("none") {
            String::new()
        } else {
            v
        }
    })
}

impl TrunkSettings {
    fn change(self) -> anyhow::Result<pb::TrunkChange> {
        let password = match (&self.password, &self.password_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the password file {}", path.display()))?;
                Some(text.lines().next().unwrap_or_default().to_owned())
            }
            (None, None) => None,
        };
        let list = |v: Vec<String>| pb::StringList { values: v };
        let sources = if self.inbound_sources.is_empty() {
            None
        } else if self
            .inbound_sources
            .iter()
            .any(|s| s.eq_ignore_ascii_case("none"))
        {
            Some(list(vec![]))
        } else {
            Some(list(self.inbound_sources))
        };
        Ok(pb::TrunkChange {
            gateways: (!self.gateways.is_empty()).then(|| list(self.gateways)),
            username: self.username,
            password,
            realm: none_is_empty(self.realm),
            remove_credentials: self.no_credentials,
            register: self.register,
            register_expiry_secs: self.register_expiry,
            from_domain: none_is_empty(self.from_domain),
            from_user: self.from_user,
            caller_id: self.caller_id,
            codecs: self.codecs.map(list),
            max_calls: self.max_calls,
            inbound_sources: sources,
        })
    }
}

pub(super) async fn run(c: &mut Clients, out: &Output, cmd: TrunkCommand) -> anyhow::Result<()> {
    let api = &mut c.trunks;
    let result = match cmd {
        TrunkCommand::Create {
            trunk,
            settings,
            request_id,
        } => {
            api.create_trunk(pb::CreateTrunkRequest {
                address: trunk,
                settings: Some((*settings).change()?),
                request_id,
                expected_version: None,
            })
            .await
        }
        TrunkCommand::Get { trunk } => api.get_trunk(pb::GetTrunkRequest { address: trunk }).await,
        TrunkCommand::List { domain } => {
            let list = api
                .list_trunks(pb::ListTrunksRequest { domain })
                .await
                .map_err(status_error)?
                .into_inner();
            out.list(list.trunks.iter().map(trunk_json).collect(), trunk_line);
            return Ok(());
        }
        TrunkCommand::Update {
            trunk,
            settings,
            expected_version,
        } => {
            api.update_trunk(pb::UpdateTrunkRequest {
                address: trunk,
                settings: Some((*settings).change()?),
                request_id: String::new(),
                expected_version,
            })
            .await
        }
        TrunkCommand::Delete { trunk } => {
            api.delete_trunk(pb::DeleteTrunkRequest {
                address: trunk,
                ..Default::default()
            })
            .await
        }
    };
    let trunk = result.map_err(status_error)?.into_inner();
    out.one(trunk_json(&trunk), details);
    Ok(())
}

fn trunk_json(t: &pb::Trunk) -> Value {
    json!({
        "address": t.address,
        "gateways": t.gateways.iter().map(|g| json!({"uri": g.uri, "transport": g.transport})).collect::<Vec<_>>(),
        "has_credentials": t.has_credentials,
        "username": t.username,
        "realm": t.realm,
        "password_key_id": t.password_key_id,
        "register": t.register,
        "register_expiry_secs": t.register_expiry_secs,
        "from_domain": t.from_domain,
        "from_user": t.from_user,
        "caller_id": t.caller_id,
        "codecs": t.codecs,
        "max_calls": t.max_calls,
        "inbound_sources": t.inbound_sources,
        "version": t.version,
    })
}

/// `carrier@example.com   2 gateways   credentials   registers`.
fn trunk_line(v: &Value) -> String {
    let gateways = v["gateways"].as_array().map(Vec::len).unwrap_or(0);
    let mut flags = vec![format!("{gateways} gateway(s)")];
    if v["has_credentials"] == Value::Bool(true) {
        flags.push(format!("credentials ({})", s(v, "username")));
    }
    if v["register"] == Value::Bool(true) {
        flags.push("registers".into());
    }
    format!("{:<40} {}", s(v, "address"), flags.join(", "))
}

/// Every field, one per line (`key: value`).
fn details(v: &Value) -> String {
    match v {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                format!("{k}: {text}")
            })
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

#[derive(clap::Subcommand, Debug)]
pub enum DialplanCommand {
    /// Show a domain's dial plan.
    Get {
        /// Domain name or id
        domain: String,
    },
    /// Replace a domain's dial plan:
    /// `dialtone dialplan set example.com --class intl=alice,bob --rule '_00Z. carrier strip=2 prefix=+ allow=class:intl' --rule '_NXXNXXXXXX carrier prefix=+1'`.
    /// With no --rule the plan is emptied (no call leaves by a trunk).
    Set {
        /// Domain name or id
        domain: String,
        /// A rule, in order (repeat): `PATTERN TRUNK [strip=N] [prefix=+1]
        /// [allow=all|users:a,b|class:NAME]`.
        #[arg(long = "rule")]
        rules: Vec<String>,
        /// A class of users rules allow by name (repeat): `NAME=alice,bob`.
        #[arg(long = "class")]
        classes: Vec<String>,
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// What the plan does with a number a user dials (no call is made):
    /// `dialtone dialplan route alice@example.com 2125551234`.
    Route {
        /// The calling user, name@domain
        caller: String,
        dialled: String,
    },
}

/// A rule as the CLI writes it (see `DialplanCommand::Set`).
fn parse_rule(text: &str) -> anyhow::Result<pb::DialPlanRule> {
    let mut words = text.split_whitespace();
    let (Some(pattern), Some(trunk)) = (words.next(), words.next()) else {
        anyhow::bail!("--rule '{text}': give PATTERN TRUNK [strip=N] [prefix=+1] [allow=...]");
    };
    let mut rule = pb::DialPlanRule {
        pattern: pattern.to_owned(),
        trunk: trunk.to_owned(),
        ..Default::default()
    };
    for word in words {
        match word.split_once('=') {
            Some(("strip", n)) => {
                rule.strip = n
                    .parse()
                    .with_context(|| format!("--rule '{text}': strip={n} is not a number"))?
            }
            Some(("prefix", p)) => rule.prefix = p.to_owned(),
            Some(("allow", a)) => rule.allow = a.to_owned(),
            _ => anyhow::bail!(
                "--rule '{text}': '{word}' is not strip=N, prefix=+1 or allow=all|users:a,b|class:NAME"
            ),
        }
    }
    Ok(rule)
}

fn plan_json(p: &pb::DialPlan) -> Value {
    json!({
        "domain": p.domain,
        "classes": p.classes.iter().map(|c| json!({"name": c.name, "users": c.users})).collect::<Vec<_>>(),
        "rules": p.rules.iter().map(|r| json!({
            "pattern": r.pattern, "strip": r.strip, "prefix": r.prefix,
            "trunk": r.trunk, "allow": r.allow,
        })).collect::<Vec<_>>(),
        "version": p.version,
    })
}

fn plan_text(v: &Value) -> String {
    let mut lines = vec![format!(
        "dial plan of {} (version {})",
        s(v, "domain"),
        s(v, "version")
    )];
    for c in v["classes"].as_array().into_iter().flatten() {
        lines.push(format!("class {}: {}", s(c, "name"), c["users"]));
    }
    let rules = v["rules"].as_array().cloned().unwrap_or_default();
    if rules.is_empty() {
        lines.push("(no rules: no call leaves by a trunk)".into());
    }
    for (i, r) in rules.iter().enumerate() {
        lines.push(format!(
            "{:>3}. {:<20} strip {} prefix '{}' -> {} (allow {})",
            i + 1,
            s(r, "pattern"),
            s(r, "strip"),
            s(r, "prefix"),
            s(r, "trunk"),
            s(r, "allow")
        ));
    }
    lines.join("\n")
}

pub(super) async fn run_dialplan(
    c: &mut Clients,
    out: &Output,
    cmd: DialplanCommand,
) -> anyhow::Result<()> {
    let api = &mut c.trunks;
    let plan = match cmd {
        DialplanCommand::Get { domain } => {
            api.get_dial_plan(pb::GetDialPlanRequest { domain }).await
        }
        DialplanCommand::Set {
            domain,
            rules,
            classes,
            expected_version,
        } => {
            let rules = rules
                .iter()
                .map(|r| parse_rule(r))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let classes = classes
                .iter()
                .map(|c| {
                    let (name, users) = c
                        .split_once('=')
                        .with_context(|| format!("--class '{c}': give NAME=user,user"))?;
                    Ok(pb::DialPlanClass {
                        name: name.trim().to_owned(),
                        users: users
                            .split(',')
                            .map(|u| u.trim().to_owned())
                            .filter(|u| !u.is_empty())
                            .collect(),
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            api.set_dial_plan(pb::SetDialPlanRequest {
                domain,
                classes,
                rules,
                request_id: String::new(),
                expected_version,
            })
            .await
        }
        DialplanCommand::Route { caller, dialled } => {
            let route = api
                .route_dialled(pb::RouteDialledRequest { caller, dialled })
                .await
                .map_err(status_error)?
                .into_inner();
            let value = json!({
                "routed": route.routed,
                "number": route.number,
                "trunk": route.trunk,
                "rule": route.rule,
            });
            out.one(value, |v| {
                if v["routed"] == Value::Bool(true) {
                    format!(
                        "{} via {} (rule {})",
                        s(v, "number"),
                        s(v, "trunk"),
                        s(v, "rule")
                    )
                } else {
                    "no route (no rule matches for this caller)".into()
                }
            });
            return Ok(());
        }
    };
    let plan = plan.map_err(status_error)?.into_inner();
    out.one(plan_json(&plan), plan_text);
    Ok(())
}

#[derive(clap::Subcommand, Debug)]
pub enum NumberCommand {
    /// Give a number to a domain:
    /// `dialtone number add +15550001 --domain example.com --to alice`
    /// (or group:sales, conference:standup, voicemail:bob, app:NAME).
    Add {
        /// E.164: + and 2 to 15 digits
        number: String,
        #[arg(long)]
        domain: String,
        #[arg(long)]
        to: String,
        #[arg(long, default_value = "")]
        description: String,
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Show a number and where it goes.
    Get { number: String },
    /// List the numbers of a domain.
    List {
        /// Domain name or id
        domain: String,
    },
    /// Change where a number goes (or its description).
    Update {
        number: String,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Free a number.
    Remove { number: String },
}

fn number_json(n: &pb::PhoneNumber) -> Value {
    json!({
        "number": n.number,
        "domain": n.domain,
        "target": n.target,
        "description": n.description,
        "assigned_at": time(&n.assigned_at),
        "version": n.version,
    })
}

fn number_line(v: &Value) -> String {
    format!(
        "{:<17} {:<30} {:<24} {}",
        s(v, "number"),
        s(v, "domain"),
        s(v, "target"),
        s(v, "description")
    )
}

pub(super) async fn run_number(
    c: &mut Clients,
    out: &Output,
    cmd: NumberCommand,
) -> anyhow::Result<()> {
    let api = &mut c.numbers;
    let result = match cmd {
        NumberCommand::Add {
            number,
            domain,
            to,
            description,
            request_id,
        } => {
            api.add_number(pb::AddNumberRequest {
                number,
                domain,
                target: to,
                description,
                request_id,
            })
            .await
        }
        NumberCommand::Get { number } => api.get_number(pb::GetNumberRequest { number }).await,
        NumberCommand::List { domain } => {
            let list = api
                .list_numbers(pb::ListNumbersRequest { domain })
                .await
                .map_err(status_error)?
                .into_inner();
            out.list(list.numbers.iter().map(number_json).collect(), number_line);
            return Ok(());
        }
        NumberCommand::Update {
            number,
            to,
            description,
        } => {
            api.update_number(pb::UpdateNumberRequest {
                number,
                target: to,
                description,
                request_id: String::new(),
            })
            .await
        }
        NumberCommand::Remove { number } => {
            api.remove_number(pb::RemoveNumberRequest {
                number,
                request_id: String::new(),
            })
            .await
        }
    };
    let number = result.map_err(status_error)?.into_inner();
    out.one(number_json(&number), number_line);
    Ok(())
}
