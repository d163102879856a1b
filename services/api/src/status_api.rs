//! `StatusService`: registrations and presence, now.

use dialtone_actors::{Provisioning, RegistrationIndex, View};
use dialtone_domain::registration::Presence;
use dialtone_domain::user::User;
use tonic::{Request, Response, Status};

use crate::pb::status_service_server::StatusService;
use crate::pb::{
    GetPresenceRequest, GetRegistrationsRequest, GetRegistrationsResponse, ListOnlineRequest,
    ListOnlineResponse, OnlineUser, PresenceState,
};
use crate::provisioning::{domain_ref, user_ref};
use crate::{convert, status};

pub struct StatusApi {
    provisioning: Provisioning,
    registrations: RegistrationIndex,
}

impl StatusApi {
    pub fn new(provisioning: Provisioning, registrations: RegistrationIndex) -> Self {
        StatusApi {
            provisioning,
            registrations,
        }
    }
}

pub fn presence(p: Presence) -> PresenceState {
    match p {
        Presence::Offline => PresenceState::Offline,
        Presence::Online => PresenceState::Online,
        Presence::Ringing => PresenceState::Ringing,
        Presence::OnCall => PresenceState::OnCall,
        Presence::Dnd => PresenceState::Dnd,
    }
}

impl StatusApi {
    /// The user addressed by id or `username@domain`, or the status to
    /// answer with.
    async fn user(&self, input: &str) -> Result<View<User>, Status> {
        let user = user_ref(input)?;
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
        let view = self.user(&request.into_inner().user).await?;
        let contacts = view.state.bindings.iter().map(convert::contact).collect();
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
        let domain = domain_ref(&request.into_inner().domain)?;
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
        let view = self.user(&request.into_inner().user).await?;
        Ok(Response::new(crate::pb::Presence {
            user: view.state.address(),
            state: presence(view.state.presence) as i32,
        }))
    }
}
