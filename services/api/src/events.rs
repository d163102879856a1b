//! `EventService`: reading the log, and subscribing to it
//! ([`crate::subscription`] does the delivery).

use std::sync::Arc;
use std::time::Duration;

use dialtone_actors::Provisioning;
use dialtone_domain::event::{EventCategory, Upcasters, EVENT_TYPES};
use dialtone_eventlog::SharedStore;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::auth::{self, Access};
use crate::pb::event_service_server::{EventService, EventServiceServer};
use crate::pb::subscribe_request::Start;
use crate::pb::{
    PayloadFormat, ReadAllRequest, ReadAllResponse, ReadStreamRequest, ReadStreamResponse,
    SubscribeRequest, SubscribeResponse,
};
use crate::subscription::{Filter, Format, LogCache, Outgoing, Subscription, SubscriptionConfig};
use crate::{convert, lookup, status};

pub struct EventApi {
    store: SharedStore,
    /// Resolves user addresses through the domain actors (without it, from
    /// the log).
    provisioning: Option<Provisioning>,
    config: SubscriptionConfig,
    upcasters: Arc<Upcasters>,
    stopping: Option<watch::Receiver<bool>>,
    cache: Arc<LogCache>,
}

impl EventApi {
    /// Reads `store` with the default subscription settings and this
    /// build's upcasters.
    pub fn new(store: SharedStore) -> Self {
        EventApi {
            store,
            provisioning: None,
            config: SubscriptionConfig::default(),
            upcasters: Arc::new(Upcasters::builtin().clone()),
            stopping: None,
            cache: Arc::new(LogCache::new(SubscriptionConfig::default().cache_events)),
        }
    }

    pub fn with_provisioning(mut self, provisioning: Provisioning) -> Self {
        self.provisioning = Some(provisioning);
        self
    }

    pub fn with_config(mut self, config: SubscriptionConfig) -> Self {
        self.cache = Arc::new(LogCache::new(config.cache_events));
        self.config = config;
        self
    }

    /// Upcasts stored data with `upcasters` instead of this build's.
    pub fn with_upcasters(mut self, upcasters: Arc<Upcasters>) -> Self {
        self.upcasters = upcasters;
        // Cached encodings were made with the old ones.
        self.cache = Arc::new(LogCache::new(self.config.cache_events));
        self
    }

    /// Subscriptions end (UNAVAILABLE, with the position to resume from)
    /// when `stopping` becomes true, so that a graceful shutdown is not held
    /// up by streams that never end on their own.
    pub fn with_stopping(mut self, stopping: watch::Receiver<bool>) -> Self {
        self.stopping = Some(stopping);
        self
    }

    /// Validates a subscription and starts its reader; the receiver is the
    /// response stream. A domain `access` gets only its domain's events.
    pub async fn start_subscription(
        &self,
        access: Access,
        req: SubscribeRequest,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<Outgoing, Status>>, Status> {
        let format = match PayloadFormat::try_from(req.payload) {
            Ok(PayloadFormat::Unspecified | PayloadFormat::Both) => Format::Both,
            Ok(PayloadFormat::Typed) => Format::Typed,
            Ok(PayloadFormat::Json) => Format::Json,
            Err(_) => {
                return Err(status::invalid(
                    "payload",
                    format!("unknown payload format {}", req.payload),
                ))
            }
        };
        let checkpoint_interval = match req.checkpoint_interval_ms {
            0 => self.config.checkpoint_interval,
            ms if (CHECKPOINT_MS_MIN..=CHECKPOINT_MS_MAX).contains(&ms) => {
                Duration::from_millis(u64::from(ms))
            }
            ms => {
                return Err(status::invalid(
                    "checkpoint_interval_ms",
                    format!(
                        "must be 0 (default) or between {CHECKPOINT_MS_MIN} and \
                         {CHECKPOINT_MS_MAX}, got {ms}"
                    ),
                ))
            }
        };
        let filter = self.filter(access, req.filter).await?;
        // The start is fixed last, so that "now" is as late as possible.
        let head = self.store.head_position();
        let from = match req.start {
            None => 1,
            Some(Start::FromPosition(position)) if position > head + 1 => {
                return Err(Status::out_of_range(format!(
                    "invalid from_position: {position} is beyond the end of the log \
                     (head position {head}; at most {})",
                    head + 1
                )))
            }
            Some(Start::FromPosition(position)) => position.max(1),
            Some(Start::FromNow(true)) => head + 1,
            Some(Start::FromNow(false)) => {
                return Err(status::invalid(
                    "from_now",
                    "must be true when set (leave start unset to read from the first event)",
                ))
            }
        };
        let subscription = Subscription {
            store: self.store.clone(),
            from,
            announce_start: matches!(req.start, Some(Start::FromNow(true))),
            filter,
            format,
            checkpoint_interval,
            config: self.config.clone(),
            upcasters: self.upcasters.clone(),
            cache: self.cache.clone(),
            stopping: self.stopping.clone(),
        };
        Ok(subscription.start())
    }

    /// The filter asked for; for a domain `access`, also limited to its
    /// domain (other domains and their users are NOT_FOUND, as if absent).
    async fn filter(
        &self,
        access: Access,
        filter: Option<crate::pb::EventFilter>,
    ) -> Result<Filter, Status> {
        let mut out = Filter::default();
        if let Some(own) = access.domain() {
            out.domains.insert(own.0);
        }
        let Some(filter) = filter else {
            return Ok(out);
        };
        for (i, domain) in filter.domains.iter().enumerate() {
            let field = format!("filter.domains[{i}]");
            let id = lookup::domain_id(&field, domain)?;
            if !access.sees(id) {
                return Err(Status::not_found(format!(
                    "domain {} not found",
                    domain.trim()
                )));
            }
            out.domains.insert(id.0);
        }
        for (i, user) in filter.users.iter().enumerate() {
            let field = format!("filter.users[{i}]");
            let id = lookup::user_id(self.provisioning.as_ref(), &self.store, &field, user).await?;
            if access.domain().is_some()
                && !access.sees_id(auth::stream_domain(&self.store, &id.stream()).await?)
            {
                return Err(Status::not_found(format!("user {} not found", user.trim())));
            }
            out.users.insert(id.0);
        }
        for (i, event_type) in filter.event_types.iter().enumerate() {
            let event_type = event_type.trim();
            if !EVENT_TYPES.iter().any(|(t, _)| *t == event_type) {
                let known: Vec<&str> = EVENT_TYPES.iter().map(|(t, _)| *t).collect();
                return Err(status::invalid(
                    &format!("filter.event_types[{i}]"),
                    format!(
                        "unknown event type '{event_type}' (known: {})",
                        known.join(", ")
                    ),
                ));
            }
            out.event_types.insert(event_type.to_owned());
        }
        for (i, category) in filter.categories.iter().enumerate() {
            let parsed = EventCategory::parse(category.trim()).ok_or_else(|| {
                status::invalid(
                    &format!("filter.categories[{i}]"),
                    format!(
                        "unknown category '{category}' (known: provisioning, registration, \
                         presence, call, security, voicemail, conference)"
                    ),
                )
            })?;
            out.categories.insert(parsed);
        }
        Ok(out)
    }
}

/// Events a domain token's `ReadAll` scans at most per call: a page of a
/// quiet domain in a busy log may come back short (even empty) with a
/// `next_position` to go on from.
const SCOPED_SCAN_BUDGET: usize = 100_000;

impl EventApi {
    /// `ReadAll` for a domain access: the next `max` events of its domain
    /// from `from`, scanning at most [`SCOPED_SCAN_BUDGET`] events; and the
    /// position to go on from.
    async fn read_all_of(
        &self,
        access: Access,
        from: u64,
        max: usize,
    ) -> Result<(Vec<dialtone_eventlog::RecordedEvent>, u64), Status> {
        let mut next = from;
        let mut out = Vec::new();
        let mut scanned = 0;
        while out.len() < max && scanned < SCOPED_SCAN_BUDGET {
            let page = self
                .store
                .read_all(next, ALL_PAGE_MAX as usize)
                .await
                .map_err(status::from_store)?;
            let Some(last) = page.last() else { break };
            let last = last.position;
            scanned += page.len();
            for e in page {
                if out.len() == max {
                    break;
                }
                next = e.position + 1;
                if access.sees_id(e.domain_id) {
                    out.push(e);
                }
            }
            if out.len() < max {
                next = last + 1;
            }
        }
        Ok((out, next))
    }
}

/// Bounds of a requested checkpoint interval.
const CHECKPOINT_MS_MIN: u32 = 100;
const CHECKPOINT_MS_MAX: u32 = 60_000;

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
    type SubscribeStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<SubscribeResponse, Status>> + Send + 'static>,
    >;

    /// Serving through [`EventServer`] sends events already encoded; this
    /// trait method (used when `EventServiceServer` is served directly)
    /// gives the same stream as messages.
    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        use futures::StreamExt as _;
        let access = auth::access(&request);
        let receiver = self
            .start_subscription(access, request.into_inner())
            .await?;
        let stream = tokio_stream::wrappers::ReceiverStream::new(receiver)
            .map(|item| item.and_then(Outgoing::into_message));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn read_stream(
        &self,
        request: Request<ReadStreamRequest>,
    ) -> Result<Response<ReadStreamResponse>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let stream = req.stream.trim();
        if stream.is_empty() {
            return Err(status::invalid(
                "stream",
                "must not be empty (e.g. user-<uuid>)",
            ));
        }
        // A domain token reads its domain's streams only; any other stream
        // (or none) is NOT_FOUND to it.
        if access.domain().is_some()
            && !access.sees_id(auth::stream_domain(&self.store, stream).await?)
        {
            return Err(auth::not_found_stream(stream));
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
            events: events
                .iter()
                .map(|e| convert::envelope_with(e, &self.upcasters))
                .collect(),
            next_version,
            end_of_stream,
        }))
    }

    async fn read_all(
        &self,
        request: Request<ReadAllRequest>,
    ) -> Result<Response<ReadAllResponse>, Status> {
        let access = auth::access(&request);
        let req = request.into_inner();
        let max = page(req.max_count, ALL_PAGE_DEFAULT, ALL_PAGE_MAX)?;
        let from = req.from_position.max(1);
        let head_position = self.store.head_position();
        let (events, next_position) = match access.domain() {
            None => {
                let events = self
                    .store
                    .read_all(from, max)
                    .await
                    .map_err(status::from_store)?;
                let next = events.last().map_or(from, |e| e.position + 1);
                (events, next)
            }
            Some(_) => self.read_all_of(access, from, max).await?,
        };
        Ok(Response::new(ReadAllResponse {
            events: events
                .iter()
                .map(|e| convert::envelope_with(e, &self.upcasters))
                .collect(),
            next_position,
            head_position: head_position.max(next_position.saturating_sub(1)),
        }))
    }
}

/// `EventService` as served: the generated server for every method but
/// `Subscribe`, whose responses go out through [`SubscribeCodec`] so that
/// an event encoded once (in the [`LogCache`]) is sent to every
/// subscriber as the same bytes.
#[derive(Clone)]
pub struct EventServer {
    api: Arc<EventApi>,
    inner: EventServiceServer<EventApi>,
}

impl EventServer {
    pub fn new(api: EventApi) -> Self {
        let api = Arc::new(api);
        EventServer {
            inner: EventServiceServer::from_arc(api.clone()),
            api,
        }
    }
}

impl tonic::server::NamedService for EventServer {
    const NAME: &'static str = crate::pb::event_service_server::SERVICE_NAME;
}

const SUBSCRIBE_PATH: &str = "/dialtone.v1.EventService/Subscribe";

impl<B> tonic::codegen::Service<tonic::codegen::http::Request<B>> for EventServer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tonic::codegen::Service::<tonic::codegen::http::Request<B>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: tonic::codegen::http::Request<B>) -> Self::Future {
        if req.uri().path() != SUBSCRIBE_PATH {
            return self.inner.call(req);
        }
        let api = self.api.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(SubscribeCodec);
            Ok(grpc.server_streaming(SubscribeMethod(api), req).await)
        })
    }
}

struct SubscribeMethod(Arc<EventApi>);

impl tonic::server::ServerStreamingService<SubscribeRequest> for SubscribeMethod {
    type Response = Outgoing;
    type ResponseStream = tokio_stream::wrappers::ReceiverStream<Result<Outgoing, Status>>;
    type Future = tonic::codegen::BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<SubscribeRequest>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move {
            let access = auth::access(&request);
            let receiver = api.start_subscription(access, request.into_inner()).await?;
            Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
                receiver,
            )))
        })
    }
}

/// Decodes `SubscribeRequest`s; encodes [`Outgoing`] messages, copying the
/// already-encoded ones as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct SubscribeCodec;

impl tonic::codec::Codec for SubscribeCodec {
    type Encode = Outgoing;
    type Decode = SubscribeRequest;
    type Encoder = OutgoingEncoder;
    type Decoder = tonic_prost::ProstDecoder<SubscribeRequest>;

    fn encoder(&mut self) -> Self::Encoder {
        OutgoingEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::new(tonic::codec::BufferSettings::default())
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct OutgoingEncoder;

impl tonic::codec::Encoder for OutgoingEncoder {
    type Item = Outgoing;
    type Error = Status;

    fn encode(
        &mut self,
        item: Outgoing,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        use bytes::BufMut as _;
        use prost::Message as _;
        match item {
            Outgoing::Encoded(bytes) => dst.put_slice(&bytes),
            Outgoing::Message(message) => message
                .encode(dst)
                .map_err(|e| Status::internal(format!("cannot encode a message: {e}")))?,
        }
        Ok(())
    }
}
