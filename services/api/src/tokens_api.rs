//! `TokenService`: creating, revoking and listing API tokens (admin
//! tokens only; see [`crate::auth`]).

use dialtone_actors::Provisioning;
use dialtone_domain::token::Scope;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::auth::{self, TokenInfo, Tokens};
use crate::payload;
use crate::payload::timestamp;
use crate::pb::token_service_server::TokenService;
use crate::pb::{
    CreateTokenRequest, CreateTokenResponse, ListTokensRequest, ListTokensResponse,
    RevokeTokenRequest, Token,
};
use crate::provisioning::domain_ref;
use crate::status;

pub struct TokenApi {
    tokens: Tokens,
    provisioning: Provisioning,
}

impl TokenApi {
    pub fn new(tokens: Tokens, provisioning: Provisioning) -> Self {
        TokenApi {
            tokens,
            provisioning,
        }
    }
}

fn token(t: &TokenInfo) -> Token {
    Token {
        token_id: t.id.to_string(),
        scope: payload::scope(&t.scope),
        description: t.description.clone(),
        created_at: timestamp(t.created_at),
        revoked: t.revoked_at.is_some(),
        revoked_at: t.revoked_at.and_then(timestamp),
    }
}

const MANAGE: &str = "managing tokens";

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        auth::access(&request).require_admin(MANAGE)?;
        let req = request.into_inner();
        let scope = match req.scope.trim() {
            "" => {
                return Err(status::invalid(
                    "scope",
                    "must be \"admin\" or a domain name",
                ))
            }
            "admin" => Scope::Admin,
            domain => {
                let domain = domain_ref(domain)
                    .map_err(|_| status::invalid("scope", "must be \"admin\" or a domain name"))?;
                let info = self
                    .provisioning
                    .get_domain(&domain)
                    .await
                    .map_err(status::from_actor)?;
                let name = info.name.ok_or_else(|| auth::not_found_domain(&domain))?;
                Scope::Domain(name)
            }
        };
        let (info, secret) = self.tokens.create(scope, req.description).await?;
        tracing::info!(token_id = %info.id, scope = %payload::scope(&info.scope), "API token created");
        Ok(Response::new(CreateTokenResponse {
            token: Some(token(&info)),
            secret,
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<RevokeTokenRequest>,
    ) -> Result<Response<Token>, Status> {
        auth::access(&request).require_admin(MANAGE)?;
        let req = request.into_inner();
        let id = Uuid::try_parse(req.token_id.trim())
            .map_err(|_| status::invalid("token_id", "not a token id (a UUID)"))?;
        let info = self.tokens.revoke(id).await?;
        tracing::info!(token_id = %info.id, "API token revoked");
        Ok(Response::new(token(&info)))
    }

    async fn list_tokens(
        &self,
        request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        auth::access(&request).require_admin(MANAGE)?;
        Ok(Response::new(ListTokensResponse {
            tokens: self.tokens.list().await?.iter().map(token).collect(),
        }))
    }
}
