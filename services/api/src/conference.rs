//! `ConferenceService`: conference rooms (ADR 0025), over the rooms' use
//! cases in `actors` (`provisioning/conference.rs`). A room is domain
//! state, so a domain token manages its domain's rooms as it manages its
//! ring groups. PINs come in clear and are hashed by the use case; no reply
//! carries them, only whether each is set.

use dialtone_actors::{DomainRef, Provisioning, RoomChange};
use dialtone_domain::names::UserAddress;
use tonic::{Request, Response, Status};

use crate::auth::{self, Access};
use crate::pb::conference_service_server::ConferenceService;
use crate::pb::*;
use crate::provisioning::{domain_ref, meta};
use crate::{convert, status};

pub struct ConferenceApi {
    provisioning: Provisioning,
}

impl ConferenceApi {
    pub fn new(provisioning: Provisioning) -> Self {
        ConferenceApi { provisioning }
    }
}

/// A room's `name@domain`, in a domain the caller may manage.
fn room_address(input: &str, access: &Access) -> Result<UserAddress, Status> {
    let address = UserAddress::parse(input.trim()).map_err(|e| match e {
        dialtone_domain::Error::Invalid { field, reason } => status::invalid(
            "address",
            format!("'{input}' is not a room address (name@domain): {field}: {reason}"),
        ),
        other => status::from_domain(other),
    })?;
    access.check_domain(&DomainRef::Name(address.domain.clone()))?;
    Ok(address)
}

/// The request's settings (`pb::RoomChange`) as the use case takes them.
fn room_change(c: Option<crate::pb::RoomChange>) -> RoomChange {
    let c = c.unwrap_or_default();
    RoomChange {
        pin: c.pin,
        moderator_pin: c.moderator_pin,
        max_participants: c.max_participants,
        wait_for_moderator: c.wait_for_moderator,
        end_with_moderator: c.end_with_moderator,
        tones: c.tones,
        record: c.record,
        muted_on_entry: c.muted_on_entry,
    }
}

#[tonic::async_trait]
impl ConferenceService for ConferenceApi {
    async fn create_room(
        &self,
        request: Request<CreateRoomRequest>,
    ) -> Result<Response<ConferenceRoom>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, req.expected_version)?;
        let address = room_address(&req.address, &access)?;
        let info = self
            .provisioning
            .create_conference_room(&address, room_change(req.settings), meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::conference_room(&info)))
    }

    async fn get_room(
        &self,
        request: Request<GetRoomRequest>,
    ) -> Result<Response<ConferenceRoom>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let address = room_address(&req.address, &access)?;
        let info = self
            .provisioning
            .get_conference_room(&address)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::conference_room(&info)))
    }

    async fn list_rooms(
        &self,
        request: Request<ListRoomsRequest>,
    ) -> Result<Response<ListRoomsResponse>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let domain = domain_ref(&req.domain)?;
        access.check_domain(&domain)?;
        let rooms = self
            .provisioning
            .list_conference_rooms(&domain)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(ListRoomsResponse {
            rooms: rooms.iter().map(convert::conference_room).collect(),
        }))
    }

    async fn update_room(
        &self,
        request: Request<UpdateRoomRequest>,
    ) -> Result<Response<ConferenceRoom>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, req.expected_version)?;
        let address = room_address(&req.address, &access)?;
        let info = self
            .provisioning
            .update_conference_room(&address, room_change(req.settings), meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::conference_room(&info)))
    }

    async fn delete_room(
        &self,
        request: Request<DeleteRoomRequest>,
    ) -> Result<Response<ConferenceRoom>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, req.expected_version)?;
        let address = room_address(&req.address, &access)?;
        let info = self
            .provisioning
            .delete_conference_room(&address, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(convert::conference_room(&info)))
    }
}
