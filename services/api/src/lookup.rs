//! Turning what a client typed (a name, an address, an id) into the id of a
//! stream, for the services that read the log directly (subscriptions,
//! audit).

use dialtone_actors::{DomainRef, Provisioning, UserRef};
use dialtone_domain::{domain, DomainId, Event, UserId};
use dialtone_eventlog::SharedStore;
use tonic::Status;

use crate::status;

/// Events read per call when scanning a domain stream for a name claim.
const SCAN_PAGE: usize = 1000;

/// A domain name or id. Nothing is looked up: a domain's id is derived from
/// its name.
pub fn domain_id(field: &str, input: &str) -> Result<DomainId, Status> {
    DomainRef::parse(input)
        .map(|d| d.id())
        .map_err(|e| status::invalid(field, domain_reason(e)))
}

fn domain_reason(e: dialtone_domain::Error) -> String {
    match e {
        dialtone_domain::Error::Invalid { reason, .. } => reason,
        other => other.to_string(),
    }
}

/// A user id or `username@domain`, resolved to the id of a user stream that
/// exists. An address names the user holding the name now (asked of the
/// domain's actor when `provisioning` is given) or, if nobody holds it, the
/// last user that claimed it (found in the domain's stream).
pub async fn user_id(
    provisioning: Option<&Provisioning>,
    store: &SharedStore,
    field: &str,
    input: &str,
) -> Result<UserId, Status> {
    let user = UserRef::parse(input).map_err(|e| status::invalid(field, domain_reason(e)))?;
    match user {
        UserRef::Id(id) => {
            let version = store
                .stream_version(&id.stream())
                .await
                .map_err(status::from_store)?;
            match version {
                Some(_) => Ok(id),
                None => Err(Status::not_found(format!("user {id} not found"))),
            }
        }
        UserRef::Address(address) => {
            let domain_id = DomainId::for_name(&address.domain);
            if let Some(provisioning) = provisioning {
                let name = address.username.clone();
                let holder = provisioning
                    .directory()
                    .query_domain(domain_id, move |r| r.state.users.get(&name).copied())
                    .await
                    .map_err(status::from_actor)?;
                if let Some(id) = holder {
                    return Ok(id);
                }
            }
            last_claim(store, domain_id, address.username.as_str())
                .await?
                .ok_or_else(|| Status::not_found(format!("user {address} not found")))
        }
    }
}

/// The user that last claimed `username` in the domain's stream.
async fn last_claim(
    store: &SharedStore,
    domain: DomainId,
    username: &str,
) -> Result<Option<UserId>, Status> {
    let stream = domain.stream();
    let mut from = 0;
    let mut found = None;
    loop {
        let page = store
            .read_stream(&stream, from, SCAN_PAGE)
            .await
            .map_err(status::from_store)?;
        for e in &page {
            if e.event_type != "UserNameClaimed" {
                continue;
            }
            let event = Event::from_stored(&e.event_type, e.schema_version, &e.data);
            if let Ok(Event::Domain(domain::Event::UserNameClaimed {
                username: claimed,
                user_id,
            })) = event
            {
                if claimed.as_str() == username {
                    found = Some(user_id);
                }
            }
        }
        match page.last() {
            Some(last) if page.len() == SCAN_PAGE => from = last.version + 1,
            _ => return Ok(found),
        }
    }
}
