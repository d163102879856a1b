//! `StatusService`: registrations, presence and calls in progress, now.

use dialtone_actors::{ActiveLeg, CallIndex, Provisioning, RegistrationIndex, View};
use dialtone_domain::call::{Direction, LegState};
use dialtone_domain::user::User;
use tonic::{Request, Response, Status};

use crate::auth::{self, Access};
use crate::payload::{direction, presence, timestamp};
use crate::pb::status_service_server::StatusService;
use crate::pb::{
    ActiveCall, ActiveCallLeg, CallState, GetPresenceRequest, GetRegistrationsRequest,
    GetRegistrationsResponse, ListActiveCallsRequest, ListActiveCallsResponse, ListOnlineRequest,
    ListOnlineResponse, OnlineUser,
};
use crate::provisioning::{domain_ref, user_ref};
use crate::{convert, status};

pub struct StatusApi {
    provisioning: Provisioning,
    registrations: RegistrationIndex,
    calls: CallIndex,
}

impl StatusApi {
    pub fn new(
        provisioning: Provisioning,
        registrations: RegistrationIndex,
        calls: CallIndex,
    ) -> Self {
        StatusApi {
            provisioning,
            registrations,
            calls,
        }
    }
}

fn call_state(state: LegState) -> CallState {
    match state {
        LegState::Trying => CallState::Trying,
        LegState::Ringing => CallState::Ringing,
        LegState::Answered => CallState::Answered,
    }
}

/// One call in progress from its legs (as `CallIndex::active_in` groups
/// them: never empty, the earliest first).
fn active_call(legs: &[ActiveLeg]) -> Option<ActiveCall> {
    let first = legs.first()?;
    // The caller's leg knows the call best; the first leg stands in for it.
    let caller = legs
        .iter()
        .find(|l| l.direction == Direction::Outbound)
        .unwrap_or(first);
    let furthest = legs
        .iter()
        .map(|l| l.state)
        .max_by_key(|s| match s {
            LegState::Trying => 0,
            LegState::Ringing => 1,
            LegState::Answered => 2,
        })
        .unwrap_or(LegState::Trying);
    Some(ActiveCall {
        call_id: first.call_id.clone(),
        caller: caller.from.clone(),
        callee: caller.to.clone(),
        state: call_state(furthest) as i32,
        started_at: timestamp(legs.iter().map(|l| l.started_at).min().unwrap_or_default()),
        answered_at: legs
            .iter()
            .filter_map(|l| l.answered_at)
            .min()
            .and_then(timestamp),
        sip_call_id: caller.sip_call_id.clone(),
        legs: std::iter::once(caller)
            .chain(legs.iter().filter(|l| !std::ptr::eq(*l, caller)))
            .map(|l| ActiveCallLeg {
                user_id: l.user_id.to_string(),
                address: match l.direction {
                    Direction::Outbound => l.from.clone(),
                    Direction::Inbound => l.to.clone(),
                },
                direction: direction(l.direction) as i32,
                state: call_state(l.state) as i32,
                started_at: timestamp(l.started_at),
                answered_at: l.answered_at.and_then(timestamp),
                contact: l.contact.clone().unwrap_or_default(),
            })
            .collect(),
    })
}

impl StatusApi {
    /// The user addressed by id or `username@domain`, or the status to
    /// answer with.
    async fn user(&self, access: Access, input: &str) -> Result<View<User>, Status> {
        let user = user_ref(input)?;
        crate::provisioning::check_user(&self.provisioning, access, &user).await?;
        self.provisioning
            .get_user(&user)
            .await
            .map_err(status::from_actor)
    }
}

#[tonic::async_trait]
impl StatusService for StatusApi {
    async fn get_registrations(
        &self,
        request: Request<GetRegistrationsRequest>,
    ) -> Result<Response<GetRegistrationsResponse>, Status> {
        let access = auth::access(&request);
        let view = self.user(access, &request.into_inner().user).await?;
        let flows = self.provisioning.directory().facts().flows();
        let contacts = view
            .state
            .bindings
            .iter()
            .map(|b| {
                let flow = view.state.id.and_then(|id| flows.of(id, &b.key()));
                convert::contact(b, flow)
            })
            .collect();
        Ok(Response::new(GetRegistrationsResponse {
            user: view.state.address(),
            contacts,
            presence: presence(view.state.presence) as i32,
        }))
    }

    async fn list_online(
        &self,
        request: Request<ListOnlineRequest>,
    ) -> Result<Response<ListOnlineResponse>, Status> {
        let access = auth::access(&request);
        let domain = domain_ref(&request.into_inner().domain)?;
        access.check_domain(&domain)?;
        // Fails with NOT_FOUND for an unknown domain.
        let info = self
            .provisioning
            .get_domain(&domain)
            .await
            .map_err(status::from_actor)?;
        let mut users = Vec::new();
        for (user_id, _) in self.registrations.online_in(info.id) {
            let view = match self.provisioning.directory().user_view(user_id).await {
                Ok(view) => view,
                Err(e) => return Err(status::from_actor(e)),
            };
            // The index follows the log a moment behind: trust the actor.
            if view.state.bindings.is_empty() || !view.state.exists() {
                continue;
            }
            users.push(OnlineUser {
                user_id: user_id.to_string(),
                address: view.state.address(),
                presence: presence(view.state.presence) as i32,
                contacts: u32::try_from(view.state.bindings.len()).unwrap_or(u32::MAX),
            });
        }
        users.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(Response::new(ListOnlineResponse { users }))
    }

    async fn get_presence(
        &self,
        request: Request<GetPresenceRequest>,
    ) -> Result<Response<crate::pb::Presence>, Status> {
        let access = auth::access(&request);
        let view = self.user(access, &request.into_inner().user).await?;
        Ok(Response::new(crate::pb::Presence {
            user: view.state.address(),
            state: presence(view.state.presence) as i32,
        }))
    }

    async fn list_active_calls(
        &self,
        request: Request<ListActiveCallsRequest>,
    ) -> Result<Response<ListActiveCallsResponse>, Status> {
        let access = auth::access(&request);
        let domain = domain_ref(&request.into_inner().domain)?;
        access.check_domain(&domain)?;
        // Fails with NOT_FOUND for an unknown domain.
        let info = self
            .provisioning
            .get_domain(&domain)
            .await
            .map_err(status::from_actor)?;
        let calls = self
            .calls
            .active_in(info.id)
            .iter()
            .filter_map(|legs| active_call(legs))
            .collect();
        Ok(Response::new(ListActiveCallsResponse { calls }))
    }
}
