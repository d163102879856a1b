//! Trunks, dial plans and numbers (ADR 0028): the use cases.
//!
//! A trunk and the dial plan are domain state, so each of their use cases
//! is one command to, or one query of, the domain's actor. What the domain
//! takes from outside is made here, at the actors' boundary: the carrier
//! password is checked as given, then sealed with the operator's key
//! ([`SecretsKeyring`]); without a key, a trunk with credentials is
//! refused (a failed precondition naming the flag), never stored in
//! clear.
//!
//! A number is its own aggregate: assigning one checks in the domain's
//! state that the target exists, then asks the number's actor, which alone
//! decides that the number is in one place only.

use std::collections::BTreeMap;

use dialtone_domain::dial_plan::{DialPlan, Route, WrittenRule};
use dialtone_domain::domain;
use dialtone_domain::names::UserAddress;
use dialtone_domain::number::{self, Assignment, NumberTarget, E164};
use dialtone_domain::trunk::{
    check_password, CallerIdPolicy, Cidr, Codec, CredentialsPatch, FromUser, Gateway, Trunk,
    TrunkPatch,
};
use dialtone_domain::{DomainId, Error as DomainError, UserName};

use super::{not_found_domain, DomainRef, Provisioning};
use crate::aggregate::Meta;
use crate::{Error, Result};

/// A change of a trunk as a request gives it: `None` keeps a value (or
/// takes its default, for a new trunk). The password is in clear here
/// (and only here): `Debug` leaves it out.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TrunkChange {
    /// Written gateways (`sip:gw.example:5060;transport=tcp`), in order.
    pub gateways: Option<Vec<String>>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `Some("")` removes the realm.
    pub realm: Option<String>,
    pub remove_credentials: bool,
    pub register: Option<bool>,
    pub register_expiry_secs: Option<u32>,
    /// `Some("")` removes it.
    pub from_domain: Option<String>,
    pub from_user: Option<String>,
    pub caller_id: Option<String>,
    pub codecs: Option<Vec<String>>,
    /// `Some(0)` removes the limit.
    pub max_calls: Option<u32>,
    pub inbound_sources: Option<Vec<String>>,
}

impl std::fmt::Debug for TrunkChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrunkChange")
            .field("gateways", &self.gateways)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("realm", &self.realm)
            .field("remove_credentials", &self.remove_credentials)
            .field("register", &self.register)
            .field("register_expiry_secs", &self.register_expiry_secs)
            .field("from_domain", &self.from_domain)
            .field("from_user", &self.from_user)
            .field("caller_id", &self.caller_id)
            .field("codecs", &self.codecs)
            .field("max_calls", &self.max_calls)
            .field("inbound_sources", &self.inbound_sources)
            .finish()
    }
}

/// A trunk and the version of its domain's stream when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkInfo {
    pub address: UserAddress,
    pub trunk: Trunk,
    pub version: Option<u64>,
}

/// A domain's dial plan and the domain stream's version when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialPlanInfo {
    pub domain: dialtone_domain::DomainName,
    pub plan: DialPlan,
    pub version: Option<u64>,
}

/// A phone number and its stream's version when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberInfo {
    pub number: E164,
    pub assignment: Assignment,
    pub version: Option<u64>,
}

/// The refusal when credentials come and the node has no key.
pub const NO_SECRETS_KEY: &str =
    "the node has no secrets key, so it cannot store a carrier password; \
     start it with --secrets-key-file PATH (32 random bytes, or base64 of them: \
     head -c 32 /dev/urandom | base64 > PATH)";

fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::Domain(DomainError::Invalid {
        field,
        reason: reason.into(),
    })
}

impl Provisioning {
    /// The patch of a written change: every field parsed (the field named
    /// in a refusal), the password checked and sealed for `address`.
    fn trunk_patch(&self, address: &UserAddress, change: &TrunkChange) -> Result<TrunkPatch> {
        let gateways = change
            .gateways
            .as_ref()
            .map(|list| {
                list.iter()
                    .map(|g| Gateway::parse_written(g))
                    .collect::<std::result::Result<Vec<_>, _>>()
            })
            .transpose()?;
        let credentials = if change.remove_credentials {
            if change.username.is_some() || change.password.is_some() || change.realm.is_some() {
                return Err(invalid(
                    "remove_credentials",
                    "give either new credentials or remove_credentials, not both",
                ));
            }
            Some(None)
        } else if change.username.is_some() || change.password.is_some() || change.realm.is_some() {
            let password = match &change.password {
                None => None,
                Some(p) => {
                    check_password(p)?;
                    let keys = self.config.secrets.as_ref().ok_or_else(|| {
                        Error::Domain(DomainError::FailedPrecondition(format!(
                            "trunk {address} has a carrier password, but {NO_SECRETS_KEY}"
                        )))
                    })?;
                    Some(keys.seal(p, &address.to_string()).map_err(|e| {
                        Error::Unavailable(format!("sealing the carrier password: {e}"))
                    })?)
                }
            };
            Some(Some(CredentialsPatch {
                username: change.username.clone(),
                password,
                realm: change
                    .realm
                    .clone()
                    .map(|r| Some(r).filter(|r| !r.trim().is_empty())),
            }))
        } else {
            None
        };
        Ok(TrunkPatch {
            gateways,
            credentials,
            register: change.register,
            register_expiry_secs: change.register_expiry_secs,
            from_domain: change
                .from_domain
                .clone()
                .map(|d| Some(d).filter(|d| !d.trim().is_empty())),
            from_user: change
                .from_user
                .as_deref()
                .map(FromUser::parse)
                .transpose()?,
            caller_id: change
                .caller_id
                .as_deref()
                .map(CallerIdPolicy::parse)
                .transpose()?,
            codecs: change
                .codecs
                .as_ref()
                .map(|l| {
                    l.iter()
                        .map(|c| Codec::parse(c))
                        .collect::<std::result::Result<Vec<_>, _>>()
                })
                .transpose()?,
            max_calls: change.max_calls.map(|m| (m > 0).then_some(m)),
            inbound_sources: change
                .inbound_sources
                .as_ref()
                .map(|l| {
                    l.iter()
                        .map(|c| Cidr::parse(c))
                        .collect::<std::result::Result<Vec<_>, _>>()
                })
                .transpose()?,
        })
    }

    /// Creates the trunk `address`; settings not given take their defaults.
    pub async fn create_trunk(
        &self,
        address: &UserAddress,
        change: TrunkChange,
        meta: Meta,
    ) -> Result<TrunkInfo> {
        let patch = self.trunk_patch(address, &change)?;
        let command = domain::Command::CreateTrunk {
            name: address.username.clone(),
            patch,
        };
        self.trunk_command(address, command, meta).await
    }

    /// Changes some settings of the trunk `address`.
    pub async fn update_trunk(
        &self,
        address: &UserAddress,
        change: TrunkChange,
        meta: Meta,
    ) -> Result<TrunkInfo> {
        // NOT_FOUND before anything is sealed.
        self.get_trunk(address).await?;
        let patch = self.trunk_patch(address, &change)?;
        let command = domain::Command::UpdateTrunk {
            name: address.username.clone(),
            patch,
        };
        self.trunk_command(address, command, meta).await
    }

    /// Deletes the trunk `address` (refused while a dial plan rule names
    /// it); what it was.
    pub async fn delete_trunk(&self, address: &UserAddress, meta: Meta) -> Result<TrunkInfo> {
        let before = self.get_trunk(address).await?;
        let command = domain::Command::DeleteTrunk {
            name: address.username.clone(),
        };
        let version = self
            .directory
            .execute_domain(DomainId::for_name(&address.domain), command, meta, |r| {
                r.version
            })
            .await?;
        Ok(TrunkInfo { version, ..before })
    }

    pub async fn get_trunk(&self, address: &UserAddress) -> Result<TrunkInfo> {
        let (trunk, version) = self
            .domain_extension(address, |d| &d.trunks, || not_found_trunk(address))
            .await?;
        Ok(TrunkInfo {
            address: address.clone(),
            trunk,
            version,
        })
    }

    /// The trunks of a domain, by name.
    pub async fn list_trunks(&self, domain: &DomainRef) -> Result<Vec<TrunkInfo>> {
        let trunks = self.domain_extensions(domain, |d| &d.trunks).await?;
        Ok(trunks
            .into_iter()
            .map(|(address, trunk, version)| TrunkInfo {
                address,
                trunk,
                version,
            })
            .collect())
    }

    async fn trunk_command(
        &self,
        address: &UserAddress,
        command: domain::Command,
        meta: Meta,
    ) -> Result<TrunkInfo> {
        let name = address.username.clone();
        let found = self
            .directory
            .execute_domain(
                DomainId::for_name(&address.domain),
                command,
                meta,
                move |r| r.state.trunks.get(&name).cloned().map(|t| (t, r.version)),
            )
            .await?;
        let (trunk, version) = found.ok_or_else(|| not_found_trunk(address))?;
        Ok(TrunkInfo {
            address: address.clone(),
            trunk,
            version,
        })
    }

    /// Replaces the dial plan of `domain`: compiled here (a rule that does
    /// not compile is refused, named), checked against the domain's trunks
    /// and users by its actor.
    pub async fn set_dial_plan(
        &self,
        domain: &DomainRef,
        classes: &BTreeMap<String, Vec<String>>,
        rules: &[WrittenRule],
        meta: Meta,
    ) -> Result<DialPlanInfo> {
        let plan = DialPlan::compile(classes, rules)?;
        let found = self
            .directory
            .execute_domain(
                domain.id(),
                domain::Command::SetDialPlan { plan },
                meta,
                |r| {
                    r.state.name.clone().map(|name| DialPlanInfo {
                        domain: name,
                        plan: r.state.dial_plan.clone(),
                        version: r.version,
                    })
                },
            )
            .await?;
        found.ok_or_else(|| not_found_domain(domain))
    }

    pub async fn get_dial_plan(&self, domain: &DomainRef) -> Result<DialPlanInfo> {
        let found = self
            .directory
            .query_domain(domain.id(), |r| {
                let name = r.state.name.clone()?;
                r.state.exists().then(|| DialPlanInfo {
                    domain: name,
                    plan: r.state.dial_plan.clone(),
                    version: r.version,
                })
            })
            .await?;
        found.ok_or_else(|| not_found_domain(domain))
    }

    /// What the dial plan of `caller`'s domain does with `dialled`.
    pub async fn route_dialled(
        &self,
        caller: &UserAddress,
        dialled: &str,
    ) -> Result<Option<Route>> {
        let domain = DomainRef::Name(caller.domain.clone());
        let plan = self.get_dial_plan(&domain).await?;
        Ok(plan.plan.route(dialled.trim(), &caller.username))
    }

    /// Gives `number` to `domain`, ringing `target` (which must exist in
    /// the domain now). A number anywhere already is refused.
    pub async fn add_number(
        &self,
        number: E164,
        domain: &DomainRef,
        target: &NumberTarget,
        description: String,
        meta: Meta,
    ) -> Result<NumberInfo> {
        let name = self.require_target(domain, target).await?;
        let command = number::Command::Assign {
            number,
            domain_id: domain.id(),
            domain: name,
            target: target.clone(),
            description,
        };
        self.number_command(number, command, meta).await
    }

    /// Changes the target or description of a number `domain` holds.
    pub async fn update_number(
        &self,
        number: E164,
        domain: Option<DomainId>,
        target: Option<NumberTarget>,
        description: Option<String>,
        meta: Meta,
    ) -> Result<NumberInfo> {
        let current = self.get_number(number, domain).await?;
        if let Some(target) = &target {
            self.require_target(&DomainRef::Id(current.assignment.domain_id), target)
                .await?;
        }
        let command = number::Command::Update {
            domain_id: current.assignment.domain_id,
            target,
            description,
        };
        self.number_command(number, command, meta).await
    }

    /// Frees a number; what it was.
    pub async fn remove_number(
        &self,
        number: E164,
        domain: Option<DomainId>,
        meta: Meta,
    ) -> Result<NumberInfo> {
        let current = self.get_number(number, domain).await?;
        let command = number::Command::Release {
            domain_id: current.assignment.domain_id,
        };
        let version = self
            .directory
            .execute_number(number, command, meta, |r| r.version)
            .await?;
        Ok(NumberInfo { version, ..current })
    }

    /// The number's assignment; NOT_FOUND when it is free, or held by
    /// another domain than `domain` (when given: a domain token's).
    pub async fn get_number(&self, number: E164, domain: Option<DomainId>) -> Result<NumberInfo> {
        let exists = self
            .directory
            .store()
            .stream_version(&number.stream())
            .await?
            .is_some();
        if !exists {
            return Err(not_found_number(number));
        }
        let found = self
            .directory
            .query_number(number, |r| {
                r.state.assignment.clone().map(|a| (a, r.version))
            })
            .await?;
        match found {
            Some((assignment, version)) if domain.is_none_or(|d| d == assignment.domain_id) => {
                Ok(NumberInfo {
                    number,
                    assignment,
                    version,
                })
            }
            _ => Err(not_found_number(number)),
        }
    }

    async fn number_command(
        &self,
        number: E164,
        command: number::Command,
        meta: Meta,
    ) -> Result<NumberInfo> {
        let found = self
            .directory
            .execute_number(number, command, meta, |r| {
                r.state.assignment.clone().map(|a| (a, r.version))
            })
            .await?;
        let (assignment, version) = found.ok_or_else(|| not_found_number(number))?;
        Ok(NumberInfo {
            number,
            assignment,
            version,
        })
    }

    /// The domain's name, once `target` is found in it: a user (for
    /// `alice` and `voicemail:alice`), a ring group or a conference room.
    /// An application is not registered anywhere yet: its name is only
    /// checked for its form.
    async fn require_target(
        &self,
        domain: &DomainRef,
        target: &NumberTarget,
    ) -> Result<dialtone_domain::DomainName> {
        let target = target.clone();
        let found = self
            .directory
            .query_domain(domain.id(), move |r| {
                let name = r.state.name.clone()?;
                if !r.state.exists() {
                    return None;
                }
                let has = |n: &UserName, what: &str, present: bool| {
                    if present {
                        Ok(())
                    } else {
                        Err(format!("{what} {n}@{name}"))
                    }
                };
                let check = match &target {
                    NumberTarget::User(n) => has(n, "user", r.state.users.contains_key(n)),
                    NumberTarget::Voicemail(n) => has(n, "user", r.state.users.contains_key(n)),
                    NumberTarget::Group(n) => {
                        has(n, "ring group", r.state.ring_groups.contains_key(n))
                    }
                    NumberTarget::Conference(n) => has(
                        n,
                        "conference room",
                        r.state.conference_rooms.contains_key(n),
                    ),
                    NumberTarget::App(_) => Ok(()),
                };
                Some(check.map(|()| name.clone()))
            })
            .await?;
        match found {
            None => Err(not_found_domain(domain)),
            Some(Err(missing)) => Err(Error::Domain(DomainError::NotFound(format!(
                "{missing} (the number's target)"
            )))),
            Some(Ok(name)) => Ok(name),
        }
    }
}

fn not_found_trunk(address: &UserAddress) -> Error {
    Error::Domain(DomainError::NotFound(format!("trunk {address}")))
}

fn not_found_number(number: E164) -> Error {
    Error::Domain(DomainError::NotFound(format!("number {number}")))
}
