//! `EventService`: reading the log.

use dialtone_eventlog::SharedStore;
use tonic::{Request, Response, Status};

use crate::pb::event_service_server::EventService;
use crate::pb::{ReadAllRequest, ReadAllResponse, ReadStreamRequest, ReadStreamResponse};
use crate::{convert, status};

pub struct EventApi {
    store: SharedStore,
}

impl EventApi {
    pub fn new(store: SharedStore) -> Self {
        EventApi { store }
    }
}

const STREAM_PAGE_DEFAULT: u32 = 100;
const STREAM_PAGE_MAX: u32 = 1000;
const ALL_PAGE_DEFAULT: u32 = 500;
const ALL_PAGE_MAX: u32 = 5000;

fn page(requested: u32, default: u32, max: u32) -> Result<usize, Status> {
    match requested {
        0 => Ok(default as usize),
        n if n > max => Err(status::invalid(
            "max_count",
            format!("at most {max}, got {n}"),
        )),
        n => Ok(n as usize),
    }
}

#[tonic::async_trait]
impl EventService for EventApi {
    async fn read_stream(
        &self,
        request: Request<ReadStreamRequest>,
    ) -> Result<Response<ReadStreamResponse>, Status> {
        let req = request.into_inner();
        let stream = req.stream.trim();
        if stream.is_empty() {
            return Err(status::invalid(
                "stream",
                "must not be empty (e.g. user-<uuid>)",
            ));
        }
        let max = page(req.max_count, STREAM_PAGE_DEFAULT, STREAM_PAGE_MAX)?;
        // Read one more than asked to know whether the stream goes on.
        let mut events = self
            .store
            .read_stream(stream, req.from_version, max + 1)
            .await
            .map_err(status::from_store)?;
        let end_of_stream = events.len() <= max;
        events.truncate(max);
        let next_version = events.last().map_or(req.from_version, |e| e.version + 1);
        Ok(Response::new(ReadStreamResponse {
            events: events.iter().map(convert::envelope).collect(),
            next_version,
            end_of_stream,
        }))
    }

    async fn read_all(
        &self,
        request: Request<ReadAllRequest>,
    ) -> Result<Response<ReadAllResponse>, Status> {
        let req = request.into_inner();
        let max = page(req.max_count, ALL_PAGE_DEFAULT, ALL_PAGE_MAX)?;
        let from = req.from_position.max(1);
        let head_position = self.store.head_position();
        let events = self
            .store
            .read_all(from, max)
            .await
            .map_err(status::from_store)?;
        let next_position = events.last().map_or(from, |e| e.position + 1);
        Ok(Response::new(ReadAllResponse {
            events: events.iter().map(convert::envelope).collect(),
            next_position,
            head_position: head_position.max(next_position.saturating_sub(1)),
        }))
    }
}
