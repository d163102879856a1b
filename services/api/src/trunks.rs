//! `TrunkService` (trunks and the dial plan) and `NumberService` (phone
//! numbers), over the use cases in `actors` (`provisioning/trunk.rs`;
//! ADR 0028). Trunks and the dial plan are domain state: a domain token
//! manages its own domain's as it manages its rooms. A number belongs to
//! one domain: another domain's token gets NOT_FOUND for it, with the words
//! a free number gets. Carrier passwords come in clear and are sealed by
//! the use case; no reply carries them.

use std::collections::BTreeMap;
use std::time::Duration;

use dialtone_actors::{
    DialPlanInfo, DomainRef, NumberIndex, NumberInfo, Provisioning, TrunkChange, TrunkInfo,
};
use dialtone_domain::dial_plan::WrittenRule;
use dialtone_domain::names::UserAddress;
use dialtone_domain::number::{NumberTarget, E164};
use tonic::{Request, Response, Status};

use crate::auth::{self, Access};
use crate::payload::{dial_plan, timestamp, trunk_settings};
use crate::pb::number_service_server::NumberService;
use crate::pb::trunk_service_server::TrunkService;
use crate::pb::*;
use crate::provisioning::{domain_ref, meta};
use crate::status;

/// How long a listing waits for the number index to fold in what the log
/// held when the request came.
const INDEX_WAIT: Duration = Duration::from_secs(2);

pub struct TrunkApi {
    provisioning: Provisioning,
}

impl TrunkApi {
    pub fn new(provisioning: Provisioning) -> Self {
        TrunkApi { provisioning }
    }
}

pub struct NumberApi {
    provisioning: Provisioning,
    numbers: NumberIndex,
}

impl NumberApi {
    pub fn new(provisioning: Provisioning, numbers: NumberIndex) -> Self {
        NumberApi {
            provisioning,
            numbers,
        }
    }
}

/// A trunk's (or caller's) `name@domain`, in a domain the caller may manage.
fn address(field: &str, input: &str, access: &Access) -> Result<UserAddress, Status> {
    let address = UserAddress::parse(input.trim()).map_err(|e| match e {
        dialtone_domain::Error::Invalid { field: f, reason } => status::invalid(
            field,
            format!("'{input}' is not name@domain: {f}: {reason}"),
        ),
        other => status::from_domain(other),
    })?;
    access.check_domain(&DomainRef::Name(address.domain.clone()))?;
    Ok(address)
}

fn trunk_change(c: Option<crate::pb::TrunkChange>) -> TrunkChange {
    let c = c.unwrap_or_default();
    TrunkChange {
        gateways: c.gateways.map(|l| l.values),
        username: c.username,
        password: c.password,
        realm: c.realm,
        remove_credentials: c.remove_credentials,
        register: c.register,
        register_expiry_secs: c.register_expiry_secs,
        from_domain: c.from_domain,
        from_user: c.from_user,
        caller_id: c.caller_id,
        codecs: c.codecs.map(|l| l.values),
        max_calls: c.max_calls,
        inbound_sources: c.inbound_sources.map(|l| l.values),
    }
}

fn trunk_pb(info: &TrunkInfo) -> Trunk {
    Trunk {
        address: info.address.to_string(),
        version: info.version.unwrap_or_default(),
        ..trunk_settings(&info.trunk)
    }
}

fn dial_plan_pb(info: &DialPlanInfo) -> DialPlan {
    DialPlan {
        domain: info.domain.to_string(),
        version: info.version.unwrap_or_default(),
        ..dial_plan(&info.plan)
    }
}

fn number_pb(info: &NumberInfo) -> PhoneNumber {
    PhoneNumber {
        number: info.number.to_string(),
        domain: info.assignment.domain.to_string(),
        target: info.assignment.target.to_string(),
        description: info.assignment.description.clone(),
        assigned_at: timestamp(info.assignment.assigned_at),
        version: info.version.unwrap_or_default(),
    }
}

fn parse_number(input: &str) -> Result<E164, Status> {
    E164::parse(input).map_err(status::from_domain)
}

fn parse_target(input: &str) -> Result<NumberTarget, Status> {
    NumberTarget::parse(input).map_err(status::from_domain)
}

#[tonic::async_trait]
impl TrunkService for TrunkApi {
    async fn create_trunk(
        &self,
        request: Request<CreateTrunkRequest>,
    ) -> Result<Response<Trunk>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, req.expected_version)?;
        let address = address("address", &req.address, &access)?;
        let info = self
            .provisioning
            .create_trunk(&address, trunk_change(req.settings), meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(trunk_pb(&info)))
    }

    async fn get_trunk(
        &self,
        request: Request<GetTrunkRequest>,
    ) -> Result<Response<Trunk>, Status> {
        let access = auth::access(&request);
        let address = address("address", &request.into_inner().address, &access)?;
        let info = self
            .provisioning
            .get_trunk(&address)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(trunk_pb(&info)))
    }

    async fn list_trunks(
        &self,
        request: Request<ListTrunksRequest>,
    ) -> Result<Response<ListTrunksResponse>, Status> {
        let access = auth::access(&request);
        let domain = domain_ref(&request.into_inner().domain)?;
        access.check_domain(&domain)?;
        let trunks = self
            .provisioning
            .list_trunks(&domain)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(ListTrunksResponse {
            trunks: trunks.iter().map(trunk_pb).collect(),
        }))
    }

    async fn update_trunk(
        &self,
        request: Request<UpdateTrunkRequest>,
    ) -> Result<Response<Trunk>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, req.expected_version)?;
        let address = address("address", &req.address, &access)?;
        let info = self
            .provisioning
            .update_trunk(&address, trunk_change(req.settings), meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(trunk_pb(&info)))
    }

    async fn delete_trunk(
        &self,
        request: Request<DeleteTrunkRequest>,
    ) -> Result<Response<Trunk>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, req.expected_version)?;
        let address = address("address", &req.address, &access)?;
        let info = self
            .provisioning
            .delete_trunk(&address, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(trunk_pb(&info)))
    }

    async fn set_dial_plan(
        &self,
        request: Request<SetDialPlanRequest>,
    ) -> Result<Response<DialPlan>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, req.expected_version)?;
        let domain = domain_ref(&req.domain)?;
        access.check_domain(&domain)?;
        let mut classes = BTreeMap::new();
        for class in req.classes {
            if classes.insert(class.name.clone(), class.users).is_some() {
                return Err(status::invalid(
                    "dial_plan",
                    format!("class '{}' is given twice", class.name),
                ));
            }
        }
        let rules: Vec<WrittenRule> = req
            .rules
            .into_iter()
            .map(|r| WrittenRule {
                pattern: r.pattern,
                strip: r.strip,
                prefix: r.prefix,
                trunk: r.trunk,
                allow: r.allow,
            })
            .collect();
        let info = self
            .provisioning
            .set_dial_plan(&domain, &classes, &rules, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(dial_plan_pb(&info)))
    }

    async fn get_dial_plan(
        &self,
        request: Request<GetDialPlanRequest>,
    ) -> Result<Response<DialPlan>, Status> {
        let access = auth::access(&request);
        let domain = domain_ref(&request.into_inner().domain)?;
        access.check_domain(&domain)?;
        let info = self
            .provisioning
            .get_dial_plan(&domain)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(dial_plan_pb(&info)))
    }

    async fn route_dialled(
        &self,
        request: Request<RouteDialledRequest>,
    ) -> Result<Response<RouteDialledResponse>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let caller = address("caller", &req.caller, &access)?;
        let route = self
            .provisioning
            .route_dialled(&caller, &req.dialled)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(match route {
            None => RouteDialledResponse::default(),
            Some(route) => RouteDialledResponse {
                routed: true,
                number: route.number.to_string(),
                trunk: format!("{}@{}", route.trunk, caller.domain),
                rule: u32::try_from(route.rule).unwrap_or(u32::MAX),
            },
        }))
    }
}

#[tonic::async_trait]
impl NumberService for NumberApi {
    async fn add_number(
        &self,
        request: Request<AddNumberRequest>,
    ) -> Result<Response<PhoneNumber>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, None)?;
        let number = parse_number(&req.number)?;
        let domain = domain_ref(&req.domain)?;
        access.check_domain(&domain)?;
        let target = parse_target(&req.target)?;
        let info = self
            .provisioning
            .add_number(number, &domain, &target, req.description, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(number_pb(&info)))
    }

    async fn get_number(
        &self,
        request: Request<GetNumberRequest>,
    ) -> Result<Response<PhoneNumber>, Status> {
        let access = auth::access(&request);
        let number = parse_number(&request.into_inner().number)?;
        let info = self
            .provisioning
            .get_number(number, access.domain())
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(number_pb(&info)))
    }

    async fn list_numbers(
        &self,
        request: Request<ListNumbersRequest>,
    ) -> Result<Response<ListNumbersResponse>, Status> {
        let access = auth::access(&request);
        let domain = domain_ref(&request.into_inner().domain)?;
        access.check_domain(&domain)?;
        // The domain must exist (NOT_FOUND otherwise, as for its trunks).
        self.provisioning
            .get_dial_plan(&domain)
            .await
            .map_err(status::from_actor)?;
        let head = self.provisioning.directory().store().head_position();
        if !self.numbers.caught_up(head, INDEX_WAIT).await {
            tracing::warn!(
                head,
                index = self.numbers.position(),
                "number index behind the log; answering with what it has"
            );
        }
        let numbers = self
            .numbers
            .of_domain(domain.id())
            .into_iter()
            .map(|(number, assignment)| {
                number_pb(&NumberInfo {
                    number,
                    assignment,
                    version: None,
                })
            })
            .collect();
        Ok(Response::new(ListNumbersResponse { numbers }))
    }

    async fn update_number(
        &self,
        request: Request<UpdateNumberRequest>,
    ) -> Result<Response<PhoneNumber>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, None)?;
        let number = parse_number(&req.number)?;
        let target = req.target.as_deref().map(parse_target).transpose()?;
        let info = self
            .provisioning
            .update_number(number, access.domain(), target, req.description, meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(number_pb(&info)))
    }

    async fn remove_number(
        &self,
        request: Request<RemoveNumberRequest>,
    ) -> Result<Response<PhoneNumber>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let meta = meta(&req.request_id, None)?;
        let number = parse_number(&req.number)?;
        let info = self
            .provisioning
            .remove_number(number, access.domain(), meta)
            .await
            .map_err(status::from_actor)?;
        Ok(Response::new(number_pb(&info)))
    }
}
