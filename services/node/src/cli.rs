//! The CLI client: `dialtone domain|user|group|conference|voicemail|history|events|audit|replay|calls
//! ...` over gRPC.
//!
//! One module per command group (`domain`, `user`, `token`, `events` for
//! history, tail and replay, `audit`, `status` for status, online and
//! security, `calls`, `voicemail`, `conference`, `trunk` for trunks, dial plans and numbers); `connection` connects and authenticates, `output`
//! prints JSON or text.

mod audit;
mod calls;
mod conference;
mod connection;
mod domain;
mod events;
mod group;
mod output;
mod status;
mod token;
mod trunk;
mod user;
mod voicemail;

use dialtone_api::pb;

pub use audit::{AuditAt, AuditCommand};
pub use conference::ConferenceCommand;
pub use connection::Target;
pub use domain::DomainCommand;
pub use events::{EventsCommand, HistoryCommand};
pub use group::GroupCommand;
pub use token::TokenCommand;
pub use trunk::{DialplanCommand, NumberCommand, TrunkCommand};
pub use user::UserCommand;
pub use voicemail::VoicemailCommand;

use connection::connect;
use output::{parse_time_arg, Output};

#[derive(clap::Subcommand, Debug)]
pub enum ClientCommand {
    /// Manage SIP domains.
    #[command(subcommand)]
    Domain(DomainCommand),
    /// Manage SIP users.
    #[command(subcommand)]
    User(UserCommand),
    /// Manage ring groups (domain-level extensions that ring their
    /// members' phones).
    #[command(subcommand)]
    Group(GroupCommand),
    /// Manage conference rooms (domain-level extensions callers dial to
    /// meet).
    #[command(subcommand)]
    Conference(ConferenceCommand),
    /// Manage trunks to carriers (ADR 0028).
    #[command(subcommand)]
    Trunk(TrunkCommand),
    /// Show, set or try a domain's dial plan (which trunk what users dial
    /// leaves by).
    #[command(subcommand)]
    Dialplan(DialplanCommand),
    /// Manage phone numbers (DIDs): which domain and extension a number
    /// reaches.
    #[command(subcommand)]
    Number(NumberCommand),
    /// Manage users' voicemail boxes and their messages.
    #[command(subcommand)]
    Voicemail(VoicemailCommand),
    /// Print the event history of a user or domain.
    #[command(subcommand)]
    History(HistoryCommand),
    /// Show a user's registrations (contacts) and presence.
    Status {
        /// username@domain or user id
        user: String,
    },
    /// List the users of a domain that are registered now.
    Online {
        /// Domain name or id
        domain: String,
    },
    /// List the calls of a domain: call detail records (one per call,
    /// oldest first), or with --active the calls in progress.
    Calls {
        /// Domain name or id
        domain: String,
        /// The calls in progress now instead of the records.
        #[arg(long)]
        active: bool,
        /// Records of calls started at or after this RFC 3339 time.
        #[arg(long, conflicts_with = "active")]
        from: Option<String>,
        /// Records of calls started before this RFC 3339 time.
        #[arg(long, conflicts_with = "active")]
        to: Option<String>,
    },
    /// The SIP lock-outs of a domain (sources refused after failed digest
    /// authentications), oldest first.
    Security {
        /// Domain name or id
        domain: String,
    },
    /// Follow the event log.
    #[command(subcommand)]
    Events(EventsCommand),
    /// The state of a user or domain at a version or a moment, with the
    /// history that led to it.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage API tokens (admin token needed).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Export the events between two positions (JSON lines with --json):
    /// `dialtone replay --from 1 --to 5000 --json > events.jsonl`.
    Replay {
        /// First position (inclusive).
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Last position (inclusive); default: the head when the export
        /// starts.
        #[arg(long)]
        to: Option<u64>,
    },
}

pub async fn run(target: &Target, json_output: bool, command: ClientCommand) -> anyhow::Result<()> {
    let mut clients = connect(target).await?;
    let out = Output { json: json_output };
    match command {
        ClientCommand::Domain(cmd) => domain::run(&mut clients, &out, cmd).await,
        ClientCommand::User(cmd) => user::run(&mut clients, &out, cmd).await,
        ClientCommand::Group(cmd) => group::run(&mut clients, &out, cmd).await,
        ClientCommand::Conference(cmd) => conference::run(&mut clients, &out, cmd).await,
        ClientCommand::Trunk(cmd) => trunk::run(&mut clients, &out, cmd).await,
        ClientCommand::Dialplan(cmd) => trunk::run_dialplan(&mut clients, &out, cmd).await,
        ClientCommand::Number(cmd) => trunk::run_number(&mut clients, &out, cmd).await,
        ClientCommand::Voicemail(cmd) => voicemail::run(&mut clients, &out, cmd).await,
        ClientCommand::History(cmd) => events::history(&mut clients, &out, cmd).await,
        ClientCommand::Status { user } => status::status(&mut clients, &out, user).await,
        ClientCommand::Online { domain } => status::online(&mut clients, &out, domain).await,
        ClientCommand::Security { domain } => status::security(&mut clients, &out, domain).await,
        ClientCommand::Calls {
            domain,
            active: true,
            ..
        } => calls::active(&mut clients, &out, domain).await,
        ClientCommand::Calls {
            domain, from, to, ..
        } => {
            let from = from
                .as_deref()
                .map(|t| parse_time_arg("--from", t))
                .transpose()?;
            let to = to
                .as_deref()
                .map(|t| parse_time_arg("--to", t))
                .transpose()?;
            calls::records(&mut clients, &out, domain, from, to).await
        }
        ClientCommand::Events(EventsCommand::Tail {
            from,
            domain,
            user,
            event_type,
            category,
        }) => {
            let filter = pb::EventFilter {
                domains: domain,
                users: user,
                event_types: event_type,
                categories: category,
            };
            events::tail(&mut clients, &out, &from, filter).await
        }
        ClientCommand::Audit(cmd) => audit::run(&mut clients, &out, cmd).await,
        ClientCommand::Replay { from, to } => events::replay(&mut clients, &out, from, to).await,
        ClientCommand::Token(cmd) => token::run(&mut clients, &out, cmd).await,
    }
}
