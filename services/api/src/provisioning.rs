//! `ProvisioningService`: domains and users.

use dialtone_actors::{
    DomainRef, Meta, NewDomain, NewUserRequest, Provisioning, UserRef, WrittenForwarding,
    WrittenRingGroup,
};
use dialtone_domain::domain::{DigestAlgorithms, Settings, SettingsPatch};
use dialtone_domain::names::UserAddress;
use dialtone_domain::schedule::TimeZone;
use dialtone_domain::user::Patch;
use dialtone_domain::{DomainName, UserName};
use tonic::{Request, Response, Status};

use crate::auth::{self, Access};
use crate::pb::provisioning_service_server::ProvisioningService;
use crate::pb::*;
use crate::{convert, status};

pub struct ProvisioningApi {
    provisioning: Provisioning,
    /// What a new domain gets when its request names no digest algorithms
    /// (the node's `sip_digest_algorithms`).
    default_digest_algorithms: DigestAlgorithms,
}

impl ProvisioningApi {
    pub fn new(provisioning: Provisioning) -> Self {
        ProvisioningApi {
            provisioning,
            default_digest_algorithms: DigestAlgorithms::default(),
        }
    }

    /// Sets the digest algorithms of new domains that name none.
    pub fn with_default_digest_algorithms(mut self, algorithms: DigestAlgorithms) -> Self {
        self.default_digest_algorithms = algorithms;
        self
    }
}

/// The digest algorithms of a request: `None` for an empty list (not
/// given); a bad name is INVALID_ARGUMENT naming it.
fn digest_algorithms(names: &[String]) -> Result<Option<DigestAlgorithms>, Status> {
    if names.is_empty() {
        return Ok(None);
    }
    DigestAlgorithms::parse(names)
        .map(Some)
        .map_err(status::from_domain)
}

/// A request's time zone: `None` when not given (empty); a name not in the
/// time zone database is INVALID_ARGUMENT naming it.
fn time_zone(name: &str) -> Result<Option<TimeZone>, Status> {
    if name.trim().is_empty() {
        return Ok(None);
    }
    TimeZone::parse(name.trim())
        .map(Some)
        .map_err(|e| status::invalid("time_zone", e.to_string()))
}

/// Longest accepted client request id.
const MAX_REQUEST_ID_LEN: usize = 128;
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

pub(crate) fn meta(request_id: &str, expected_version: Option<u64>) -> Result<Meta, Status> {
    let request_id = request_id.trim();
    if request_id.len() > MAX_REQUEST_ID_LEN {
        return Err(status::invalid(
            "request_id",
            format!("at most {MAX_REQUEST_ID_LEN} characters"),
        ));
    }
    if request_id.chars().any(char::is_control) {
        return Err(status::invalid(
            "request_id",
            "must not contain control characters",
        ));
    }
    Ok(Meta {
        request_id: (!request_id.is_empty()).then(|| request_id.to_owned()),
        expected_version,
        correlation_id: None,
    })
}

/// A domain id or name, or INVALID_ARGUMENT naming `domain`.
pub(crate) fn domain_ref(input: &str) -> Result<DomainRef, Status> {
    DomainRef::parse(input).map_err(|e| match e {
        dialtone_domain::Error::Invalid { reason, .. } => status::invalid("domain", reason),
        other => status::from_domain(other),
    })
}

/// A user id or `username@domain`, or INVALID_ARGUMENT naming `user`.
pub(crate) fn user_ref(input: &str) -> Result<UserRef, Status> {
    UserRef::parse(input).map_err(|e| match e {
        dialtone_domain::Error::Invalid {
            field: "user",
            reason,
        } => status::invalid("user", reason),
        dialtone_domain::Error::Invalid { field, reason } => {
            status::invalid("user", format!("{field}: {reason}"))
        }
        other => status::from_domain(other),
    })
}

fn page_size(requested: u32) -> Result<usize, Status> {
    match requested {
        0 => Ok(DEFAULT_PAGE as usize),
        n if n > MAX_PAGE => Err(status::invalid(
            "page_size",
            format!("at most {MAX_PAGE}, got {n}"),
        )),
        n => Ok(n as usize),
    }
}

fn page_token(token: &str) -> Option<String> {
    let token = token.trim();
    (!token.is_empty()).then(|| token.to_owned())
}

impl ProvisioningApi {
    /// NOT_FOUND (as for a user that does not exist) unless `access` may
    /// see `user`: a user named by address is judged by its domain, one
    /// named by id by the domain it belongs to.
    pub(crate) async fn check_user(&self, access: Access, user: &UserRef) -> Result<(), Status> {
        check_user(&self.provisioning, access, user).await
    }
}

/// See [`ProvisioningApi::check_user`].
pub(crate) async fn check_user(
    provisioning: &Provisioning,
    access: Access,
    user: &UserRef,
) -> Result<(), Status> {
    let Some(domain) = access.domain() else {
        return Ok(());
    };
    let visible = match user {
        UserRef::Address(address) => dialtone_domain::DomainId::for_name(&address.domain) == domain,
        UserRef::Id(_) => {
            let view = provisioning
                .get_user(user)
                .await
                .map_err(status::from_actor)?;
            view.state.domain_id == Some(domain)
        }
    };
    if visible {
        Ok(())
    } else {
        Err(auth::not_found_user(user))
    }
}

#[tonic::async_trait]
impl ProvisioningService for ProvisioningApi {
    async fn create_domain(
        &self,
        request: Request<CreateDomainRequest>,
    ) -> Result<Response<Domain>, Status> {
        auth::access(&request).require_admin("creating a domain")?;
        let req = request.into_inner();
        let meta = meta(&req.request_id, None)?;
        let name = DomainName::parse(&req.name).map_err(|e| match e {
            dialtone_domain::Error::Invalid { reason, .. } => status::invalid("name", reason),
            other => status::from_domain(other),
        })?;
        let defaults = Settings {
            digest_algorithms: self.default_digest_algorithms,
            ..Settings::default()
        };
        let settings = SettingsPatch {
            description: Some(req.description),
            allow_cross_domain_calls: Some(req.allow_cross_domain_calls),
            digest_algorithms: digest_algorithms(&req.digest_algorithms)?,
            md5_allowed: req.md5_allowed,
            time_zone: time_zone(&req.time_zone)?,
            feature_codes: Default::default(),
        }
        .over(&defaults)
        .map_err(status::from_domain)?;
        let new = NewDomain { name, settings };
        let info = self
            .provisioning
            .create_domain(new, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::domain(&info)))
    }

    async fn get_domain(
        &self,
        request: Request<GetDomainRequest>,
    ) -> Result<Response<Domain>, Status> {
        let access = auth::access(&request);
        let domain = domain_ref(&request.into_inner().domain)?;
        access.check_domain(&domain)?;
        let info = self
            .provisioning
            .get_domain(&domain)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::domain(&info)))
    }

    async fn list_domains(
        &self,
        request: Request<ListDomainsRequest>,
    ) -> Result<Response<ListDomainsResponse>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let size = page_size(req.page_size)?;
        if let Some(own) = access.domain() {
            // A domain token's list is its own domain (if it exists), on
            // one page.
            let info = match self.provisioning.get_domain(&DomainRef::Id(own)).await {
                Ok(info) => Some(info),
                Err(dialtone_actors::Error::Domain(dialtone_domain::Error::NotFound(_))) => None,
                Err(e) => return Err(status::from_actor(e)),
            };
            let domains = info
                .filter(|info| {
                    req.page_token.trim().is_empty()
                        && (req.include_deleted
                            || info.status != dialtone_domain::domain::Status::Deleted)
                        && info.status != dialtone_domain::domain::Status::Absent
                })
                .map(|info| convert::domain(&info))
                .into_iter()
                .collect();
            return Ok(Response::new(ListDomainsResponse {
                domains,
                next_page_token: String::new(),
            }));
        }
        let after = page_token(&req.page_token);
        if let Some(token) = &after {
            if dialtone_domain::DomainId::from_stream(token).is_none() {
                return Err(status::invalid(
                    "page_token",
                    "not a token from a previous page",
                ));
            }
        }
        let page = self
            .provisioning
            .list_domains(size, after, req.include_deleted)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(ListDomainsResponse {
            domains: page.items.iter().map(convert::domain).collect(),
            next_page_token: page.next.unwrap_or_default(),
        }))
    }

    async fn update_domain(
        &self,
        request: Request<UpdateDomainRequest>,
    ) -> Result<Response<Domain>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, req.expected_version)?;
        let domain = domain_ref(&req.domain)?;
        access.check_domain(&domain)?;
        let patch = SettingsPatch {
            description: req.description,
            allow_cross_domain_calls: req.allow_cross_domain_calls,
            digest_algorithms: digest_algorithms(&req.digest_algorithms)?,
            md5_allowed: req.md5_allowed,
            time_zone: match req.time_zone.as_deref() {
                Some(name) if name.trim().is_empty() => {
                    return Err(status::invalid(
                        "time_zone",
                        "must not be empty (\"UTC\" for UTC)",
                    ))
                }
                Some(name) => time_zone(name)?,
                None => None,
            },
            feature_codes: dialtone_domain::feature_codes::Patch {
                enabled: req.feature_codes_enabled,
                forward_always: req.feature_code_forward_always,
                forwarding_off: req.feature_code_forwarding_off,
                dnd_on: req.feature_code_dnd_on,
                dnd_off: req.feature_code_dnd_off,
                voicemail_own: req.feature_code_voicemail_own,
                voicemail_any: req.feature_code_voicemail_any,
            },
        };
        let info = self
            .provisioning
            .update_domain(&domain, patch, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::domain(&info)))
    }

    async fn suspend_domain(
        &self,
        request: Request<SuspendDomainRequest>,
    ) -> Result<Response<Domain>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, req.expected_version)?;
        let domain = domain_ref(&req.domain)?;
        access.check_domain(&domain)?;
        let reason = (!req.reason.trim().is_empty()).then(|| req.reason.trim().to_owned());
        let info = self
            .provisioning
            .suspend_domain(&domain, reason, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::domain(&info)))
    }

    async fn resume_domain(
        &self,
        request: Request<ResumeDomainRequest>,
    ) -> Result<Response<Domain>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, req.expected_version)?;
        let domain = domain_ref(&req.domain)?;
        access.check_domain(&domain)?;
        let info = self
            .provisioning
            .resume_domain(&domain, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::domain(&info)))
    }

    async fn delete_domain(
        &self,
        request: Request<DeleteDomainRequest>,
    ) -> Result<Response<Domain>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, req.expected_version)?;
        let domain = domain_ref(&req.domain)?;
        access.check_domain(&domain)?;
        let info = self
            .provisioning
            .delete_domain(&domain, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::domain(&info)))
    }

    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<User>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, None)?;
        let domain = domain_ref(&req.domain)?;
        access.check_domain(&domain)?;
        let username = UserName::parse(req.username.trim()).map_err(|e| match e {
            dialtone_domain::Error::Invalid { reason, .. } => status::invalid("username", reason),
            other => status::from_domain(other),
        })?;
        if req.password.is_empty() {
            return Err(status::invalid("password", "must not be empty"));
        }
        let new = NewUserRequest {
            domain,
            username,
            password: req.password,
            display_name: req.display_name,
            caller_id: req.caller_id,
            max_contacts: (req.max_contacts != 0).then_some(req.max_contacts),
            enabled: req.enabled.unwrap_or(true),
        };
        let view = self
            .provisioning
            .create_user(new, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::user(&view)))
    }

    async fn get_user(&self, request: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let access = auth::access(&request);
        let user = user_ref(&request.into_inner().user)?;
        self.check_user(access, &user).await?;
        let view = self
            .provisioning
            .get_user(&user)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::user(&view)))
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let domain = domain_ref(&req.domain)?;
        access.check_domain(&domain)?;
        let size = page_size(req.page_size)?;
        let page = self
            .provisioning
            .list_users(&domain, size, page_token(&req.page_token))
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(ListUsersResponse {
            users: page.items.iter().map(convert::user).collect(),
            next_page_token: page.next.unwrap_or_default(),
        }))
    }

    async fn update_user(
        &self,
        request: Request<UpdateUserRequest>,
    ) -> Result<Response<User>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, req.expected_version)?;
        let user = user_ref(&req.user)?;
        self.check_user(access, &user).await?;
        let patch = Patch {
            display_name: req.display_name,
            caller_id: req.caller_id,
            max_contacts: req.max_contacts,
            enabled: req.enabled,
        };
        let view = self
            .provisioning
            .update_user(&user, patch, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::user(&view)))
    }

    async fn set_password(
        &self,
        request: Request<SetPasswordRequest>,
    ) -> Result<Response<User>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, req.expected_version)?;
        let user = user_ref(&req.user)?;
        self.check_user(access, &user).await?;
        if req.password.is_empty() {
            return Err(status::invalid("password", "must not be empty"));
        }
        let view = self
            .provisioning
            .set_password(&user, req.password, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::user(&view)))
    }

    async fn set_forwarding(
        &self,
        request: Request<SetForwardingRequest>,
    ) -> Result<Response<User>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, req.expected_version)?;
        let user = user_ref(&req.user)?;
        self.check_user(access, &user).await?;
        let written = WrittenForwarding {
            always: req.always,
            busy: req.busy,
            no_answer: req.no_answer,
            no_answer_after_secs: req.no_answer_after_secs,
            unavailable: req.unavailable,
            always_when: req.always_when,
            busy_when: req.busy_when,
            no_answer_when: req.no_answer_when,
            unavailable_when: req.unavailable_when,
            clear: req.clear,
            follow_me: req.follow_me.map(|f| f.targets),
            follow_me_after_secs: req.follow_me_after_secs,
            follow_me_sequential: req.follow_me_sequential,
            follow_me_ring_secs: req.follow_me_ring_secs,
        };
        let view = self
            .provisioning
            .set_forwarding(&user, written, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::user(&view)))
    }

    async fn set_dnd(&self, request: Request<SetDndRequest>) -> Result<Response<User>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, req.expected_version)?;
        let user = user_ref(&req.user)?;
        self.check_user(access, &user).await?;
        let view = self
            .provisioning
            .set_dnd(&user, req.dnd, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::user(&view)))
    }

    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<User>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, req.expected_version)?;
        let user = user_ref(&req.user)?;
        self.check_user(access, &user).await?;
        let view = self
            .provisioning
            .delete_user(&user, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::user(&view)))
    }

    async fn create_ring_group(
        &self,
        request: Request<CreateRingGroupRequest>,
    ) -> Result<Response<RingGroup>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, req.expected_version)?;
        let address = group_address(&req.address, &access)?;
        let written = written_ring_group(req.settings.unwrap_or_default());
        let info = self
            .provisioning
            .create_ring_group(&address, written, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::ring_group(&info)))
    }

    async fn get_ring_group(
        &self,
        request: Request<GetRingGroupRequest>,
    ) -> Result<Response<RingGroup>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let address = group_address(&req.address, &access)?;
        let info = self
            .provisioning
            .get_ring_group(&address)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::ring_group(&info)))
    }

    async fn list_ring_groups(
        &self,
        request: Request<ListRingGroupsRequest>,
    ) -> Result<Response<ListRingGroupsResponse>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let domain = domain_ref(&req.domain)?;
        access.check_domain(&domain)?;
        let groups = self
            .provisioning
            .list_ring_groups(&domain)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(ListRingGroupsResponse {
            ring_groups: groups.iter().map(convert::ring_group).collect(),
        }))
    }

    async fn update_ring_group(
        &self,
        request: Request<UpdateRingGroupRequest>,
    ) -> Result<Response<RingGroup>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, req.expected_version)?;
        let address = group_address(&req.address, &access)?;
        let written = written_ring_group(req.settings.unwrap_or_default());
        let info = self
            .provisioning
            .update_ring_group(&address, written, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::ring_group(&info)))
    }

    async fn delete_ring_group(
        &self,
        request: Request<DeleteRingGroupRequest>,
    ) -> Result<Response<RingGroup>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, req.expected_version)?;
        let address = group_address(&req.address, &access)?;
        let info = self
            .provisioning
            .delete_ring_group(&address, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::ring_group(&info)))
    }
}

/// A ring group's `name@domain`, in a domain the caller may manage.
fn group_address(input: &str, access: &Access) -> Result<UserAddress, Status> {
    let address = UserAddress::parse(input.trim()).map_err(|e| match e {
        dialtone_domain::Error::Invalid { field, reason } => status::invalid(
            "address",
            format!("'{input}' is not a ring group address (name@domain): {field}: {reason}"),
        ),
        other => status::from_domain(other),
    })?;
    access.check_domain(&DomainRef::Name(address.domain.clone()))?;
    Ok(address)
}

fn written_ring_group(c: RingGroupChange) -> WrittenRingGroup {
    WrittenRingGroup {
        members: c.members.map(|m| m.members),
        strategy: c.strategy,
        ring_secs: c.ring_secs,
        timeout_secs: c.timeout_secs,
        skip_busy: c.skip_busy,
        skip_dnd: c.skip_dnd,
        forwarding: WrittenForwarding {
            always: c.always,
            busy: c.busy,
            no_answer: c.no_answer,
            no_answer_after_secs: None,
            unavailable: c.unavailable,
            always_when: c.always_when,
            busy_when: c.busy_when,
            no_answer_when: c.no_answer_when,
            unavailable_when: c.unavailable_when,
            clear: false,
            ..Default::default()
        },
    }
}
