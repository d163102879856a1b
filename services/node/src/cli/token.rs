//! `dialtone token ...`: create, revoke and list API tokens.

use dialtone_api::pb;
use serde_json::{json, Value};

use super::connection::{status_error, Clients};
use super::output::Output;

#[derive(clap::Subcommand, Debug)]
pub enum TokenCommand {
    /// Create a token and print its secret (shown only this once).
    Create {
        /// `admin`, or the domain the token is limited to.
        scope: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Revoke a token: it is refused from the next call on.
    Revoke { token_id: String },
    /// List tokens (never their secrets).
    List,
}

pub(super) async fn run(c: &mut Clients, out: &Output, cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create { scope, description } => {
            let created = c
                .tokens
                .create_token(pb::CreateTokenRequest { scope, description })
                .await
                .map_err(status_error)?
                .into_inner();
            let info = created.token.unwrap_or_default();
            if out.json {
                let mut value = token_json(&info);
                value["secret"] = json!(created.secret);
                println!("{value}");
            } else {
                println!("token {} (scope {})", info.token_id, info.scope);
                println!("secret (shown only now): {}", created.secret);
            }
        }
        TokenCommand::Revoke { token_id } => {
            let info = c
                .tokens
                .revoke_token(pb::RevokeTokenRequest { token_id })
                .await
                .map_err(status_error)?
                .into_inner();
            if out.json {
                println!("{}", token_json(&info));
            } else {
                println!("token {} revoked", info.token_id);
            }
        }
        TokenCommand::List => {
            let list = c
                .tokens
                .list_tokens(pb::ListTokensRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            for t in &list.tokens {
                if out.json {
                    println!("{}", token_json(t));
                } else {
                    println!(
                        "{}  {:<24} {}{}",
                        t.token_id,
                        t.scope,
                        t.created_at.as_ref().map(rfc3339).unwrap_or_default(),
                        if t.revoked { "  revoked" } else { "" }
                    );
                }
            }
        }
    }
    Ok(())
}

fn token_json(t: &pb::Token) -> Value {
    json!({
        "token_id": t.token_id,
        "scope": t.scope,
        "description": t.description,
        "created_at": t.created_at.as_ref().map(rfc3339),
        "revoked": t.revoked,
        "revoked_at": t.revoked_at.as_ref().map(rfc3339),
    })
}

fn rfc3339(t: &dialtone_api::prost_types::Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp(t.seconds)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
