//! Benchmarks of `EventService.Subscribe` on a real SQLite log (temp
//! directory) over real gRPC on loopback.
//!
//! ```text
//! cargo run --release -p dialtone-api --example subscription_bench -- catchup [EVENTS] [both|json|typed]
//! cargo run --release -p dialtone-api --example subscription_bench -- live [SUBSCRIBERS] [EVENTS_PER_SEC] [SECONDS] [EVENTS_PER_APPEND] [DOMAINS]
//! ```
//!
//! - `catchup` (default 1,000,000 events, both payloads): fills the log,
//!   then one subscriber reads it all from the start; prints the delivery
//!   rate (events received by the client per second).
//! - `live` (defaults 100 subscribers, 10,000 events/s, 10 s, 1 event per
//!   append): appends at a steady rate from many concurrent appends (as
//!   many actors would) while every subscriber, unfiltered, follows live;
//!   prints the latency from commit to delivery, sampled on every 8th
//!   position. "Commit" is when the store's head watch announces the
//!   position (a watcher in this process records it; it is woken exactly
//!   like the subscribers' readers); also shown is the latency from the
//!   append call's return to its writer.
//!
//! Clients run in the same process, on the same cores, as the server: the
//! latency clients read only the kind and position of each message (see
//! `thin`), as their full decoding would be paid on their own machines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dialtone_api::events::{EventApi, EventServer};
use dialtone_api::pb::event_service_client::EventServiceClient;
use dialtone_api::pb::subscribe_request::Start;
use dialtone_api::pb::subscribe_response::Message;
use dialtone_api::pb::{PayloadFormat, SubscribeRequest};
use dialtone_eventlog::sqlite::{SqliteOptions, SqliteStore};
use dialtone_eventlog::{ExpectedVersion, NewEvent, SharedStore};
use uuid::Uuid;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// What the latency clients read of a `SubscribeResponse`: its kind and
/// position, taken from the first bytes of the message (prost writes fields
/// in tag order: `event` (1) > `envelope` (1) > `position` (1), or
/// `checkpoint` (2) > `position` (1)); the rest is skipped unread. The
/// clients share this machine's two cores with the server; a real client
/// pays for its decoding on its own machine.
mod thin {
    use bytes::Buf as _;
    use tonic::codec::{DecodeBuf, Decoder};
    use tonic::Status;

    #[derive(Debug, Clone, Copy)]
    pub enum Kind {
        Event(u64),
        #[allow(dead_code)]
        Checkpoint(u64),
    }

    fn varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *bytes.get(*at)?;
            *at += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Some(value);
            }
        }
        None
    }

    pub fn peek(bytes: &[u8]) -> Option<Kind> {
        let mut at = 0;
        match varint(bytes, &mut at)? {
            0x0a => {
                varint(bytes, &mut at)?; // SubscribedEvent length
                (varint(bytes, &mut at)? == 0x0a).then_some(())?;
                varint(bytes, &mut at)?; // EventEnvelope length
                (varint(bytes, &mut at)? == 0x08).then_some(())?;
                Some(Kind::Event(varint(bytes, &mut at)?))
            }
            0x12 => {
                varint(bytes, &mut at)?;
                // A checkpoint at position 0 has no position field.
                match varint(bytes, &mut at) {
                    Some(0x08) => Some(Kind::Checkpoint(varint(bytes, &mut at)?)),
                    _ => Some(Kind::Checkpoint(0)),
                }
            }
            _ => None,
        }
    }

    #[derive(Default)]
    pub struct Codec;

    pub struct PeekDecoder;

    impl Decoder for PeekDecoder {
        type Item = Option<Kind>;
        type Error = Status;

        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
            let len = buf.remaining();
            let kind = peek(buf.chunk());
            buf.advance(len);
            Ok(Some(kind))
        }
    }

    impl tonic::codec::Codec for Codec {
        type Encode = dialtone_api::pb::SubscribeRequest;
        type Decode = Option<Kind>;
        type Encoder = tonic_prost::ProstEncoder<dialtone_api::pb::SubscribeRequest>;
        type Decoder = PeekDecoder;

        fn encoder(&mut self) -> Self::Encoder {
            tonic_prost::ProstEncoder::new(tonic::codec::BufferSettings::default())
        }

        fn decoder(&mut self) -> Self::Decoder {
            PeekDecoder
        }
    }
}

/// `EventService.Subscribe`, reading responses with [`thin::Codec`].
async fn subscribe_thin(
    url: String,
    request: SubscribeRequest,
) -> Result<tonic::Streaming<Option<thin::Kind>>, Error> {
    let channel = tonic::transport::Endpoint::from_shared(url)?
        .connect()
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/dialtone.v1.EventService/Subscribe");
    Ok(grpc
        .server_streaming(tonic::Request::new(request), path, thin::Codec)
        .await?
        .into_inner())
}

fn event(user: Uuid, n: u64) -> NewEvent {
    event_in(user, n, Uuid::from_u128(1))
}

fn event_in(user: Uuid, n: u64, domain: Uuid) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: "UserUpdated".into(),
        schema_version: 1,
        occurred_at_us: 1_764_000_000_000_000 + n as i64,
        domain_id: Some(domain),
        user_id: Some(user),
        correlation_id: Some(format!("req-{n}")),
        data: format!(
            r#"{{"display_name":"User number {n}","caller_id":"+15550100","max_contacts":5}}"#
        ),
    }
}

async fn start_server(store: SharedStore) -> Result<String, Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EventServer::new(EventApi::new(store)))
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            ),
    );
    Ok(url)
}

fn open_store(dir: &tempfile::TempDir) -> Result<SharedStore, Error> {
    let options = SqliteOptions {
        readers: 4,
        ..SqliteOptions::new("bench")
    };
    Ok(Arc::new(SqliteStore::open(
        &dir.path().join("events.db"),
        options,
    )?))
}

async fn catchup(events: u64, format: PayloadFormat) -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let store = open_store(&dir)?;
    let filling = Instant::now();
    let streams: Vec<Uuid> = (0..1000).map(|_| Uuid::new_v4()).collect();
    let mut versions = vec![None::<u64>; streams.len()];
    let mut n = 0;
    let mut i = 0;
    while n < events {
        let batch = 1000.min(events - n);
        let s = i % streams.len();
        let expected = versions[s].map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        let outcome = store
            .append(
                &format!("user-{}", streams[s]),
                expected,
                (0..batch).map(|k| event(streams[s], n + k)).collect(),
            )
            .await?;
        versions[s] = Some(outcome.last_version);
        n += batch;
        i += 1;
    }
    println!(
        "filled {events} events in {:.1} s",
        filling.elapsed().as_secs_f64()
    );
    let url = start_server(store.clone()).await?;
    let mut client = EventServiceClient::connect(url).await?;
    let started = Instant::now();
    let mut stream = client
        .subscribe(SubscribeRequest {
            start: Some(Start::FromPosition(1)),
            payload: format as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut received = 0u64;
    let mut bytes = 0usize;
    while let Some(message) = stream.message().await? {
        if let Some(Message::Event(e)) = message.message {
            received += 1;
            bytes += e.envelope.map_or(0, |e| e.data_json.len());
            if received == events {
                break;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "catch-up: {received} events in {secs:.2} s = {:.0} events/s to one subscriber \
         (payload {format:?}, {} bytes of JSON data)",
        received as f64 / secs,
        bytes
    );
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn report(name: &str, mut us: Vec<u64>) {
    us.sort_unstable();
    println!(
        "{name}: n={} p50={} us p90={} us p99={} us p99.9={} us max={} us",
        us.len(),
        percentile(&us, 0.5),
        percentile(&us, 0.9),
        percentile(&us, 0.99),
        percentile(&us, 0.999),
        us.last().copied().unwrap_or(0)
    );
}

/// The domain of stream `i` when events are spread over `domains`.
fn domain_of(i: u64, domains: u64) -> Uuid {
    Uuid::from_u128(1 + u128::from(i % domains))
}

async fn live(
    subscribers: usize,
    rate: u64,
    secs: u64,
    batch: u64,
    domains: u64,
) -> Result<(), Error> {
    let dir = tempfile::tempdir()?;
    let store = open_store(&dir)?;
    let url = start_server(store.clone()).await?;
    let total = rate * secs;
    let base = Instant::now();
    let now_ns = move || base.elapsed().as_nanos() as u64;
    // Per position: when the head watch announced it, and when its append
    // returned to the writer (ns since `base`; 0 = not yet).
    let visible: Arc<Vec<AtomicU64>> =
        Arc::new((0..=total + batch).map(|_| AtomicU64::new(0)).collect());
    let acked: Arc<Vec<AtomicU64>> =
        Arc::new((0..=total + batch).map(|_| AtomicU64::new(0)).collect());
    {
        let visible = visible.clone();
        let mut head = store.watch_head();
        tokio::spawn(async move {
            let mut seen = 0u64;
            while head.changed().await.is_ok() {
                let h = *head.borrow_and_update();
                let t = now_ns();
                for p in seen + 1..=h.min(visible.len() as u64 - 1) {
                    visible[p as usize].store(t, Ordering::Relaxed);
                }
                seen = h;
            }
        });
    }

    let mut tasks = Vec::new();
    for i in 0..subscribers {
        let url = url.clone();
        let visible = visible.clone();
        let acked = acked.clone();
        // With several domains, subscriber i follows domain i (mod).
        let filter = (domains > 1).then(|| dialtone_api::pb::EventFilter {
            domains: vec![domain_of(i as u64, domains).to_string()],
            ..Default::default()
        });
        tasks.push(tokio::spawn(async move {
            let mut stream = subscribe_thin(
                url,
                SubscribeRequest {
                    start: Some(Start::FromNow(true)),
                    filter,
                    ..Default::default()
                },
            )
            .await?;
            let mut from_visible = Vec::with_capacity(total as usize);
            let mut from_ack = Vec::with_capacity(total as usize);
            while let Some(message) = stream.message().await? {
                if let Some(thin::Kind::Event(p)) = message {
                    if domains == 1 && p % 8 != 0 && p < total {
                        // Latency is sampled on every 8th position.
                        continue;
                    }
                    let t = now_ns();
                    let p = p as usize;
                    let v = visible[p].load(Ordering::Relaxed);
                    let a = acked[p].load(Ordering::Relaxed);
                    from_visible.push(if v == 0 {
                        0
                    } else {
                        t.saturating_sub(v) / 1000
                    });
                    from_ack.push(if a == 0 {
                        0
                    } else {
                        t.saturating_sub(a) / 1000
                    });
                    if p as u64 >= total {
                        break;
                    }
                }
                if let Some(thin::Kind::Checkpoint(p)) = message {
                    if p >= total {
                        break;
                    }
                }
            }
            Ok::<_, Error>((from_visible, from_ack))
        }));
    }
    // Let every subscriber be live before appending.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let streams: Arc<Vec<Uuid>> = Arc::new((0..10_000).map(|_| Uuid::new_v4()).collect());
    let appends = total / batch;
    let period = Duration::from_secs_f64(batch as f64 / rate as f64);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut issued = 0u64;
    let mut writers = Vec::new();
    while issued < appends {
        tick.tick().await;
        let due =
            ((started.elapsed().as_secs_f64() / period.as_secs_f64()) as u64 + 1).min(appends);
        while issued < due {
            let store = store.clone();
            let acked = acked.clone();
            let index = issued % streams.len() as u64;
            let stream = streams[index as usize];
            let domain = domain_of(index, domains);
            let n = issued;
            writers.push(tokio::spawn(async move {
                let events = (0..batch)
                    .map(|k| event_in(stream, n * batch + k, domain))
                    .collect();
                let outcome = store
                    .append(&format!("user-{stream}"), ExpectedVersion::Any, events)
                    .await?;
                let t = now_ns();
                for p in outcome.first_position..=outcome.last_position {
                    if let Some(slot) = acked.get(p as usize) {
                        slot.store(t, Ordering::Relaxed);
                    }
                }
                Ok::<_, Error>(())
            }));
            issued += 1;
        }
    }
    for w in writers {
        w.await??;
    }
    let append_secs = started.elapsed().as_secs_f64();
    println!(
        "appended {total} events in {append_secs:.2} s ({:.0} events/s, {batch} per append) \
         with {subscribers} live subscribers",
        total as f64 / append_secs
    );
    let mut from_visible = Vec::new();
    let mut from_ack = Vec::new();
    for task in tasks {
        let (v, a) = task.await??;
        from_visible.extend(v);
        from_ack.extend(a);
    }
    report("commit (head visible) -> delivered", from_visible);
    report("append returned -> delivered", from_ack);
    Ok(())
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("catchup") => {
            let format = match args.get(2).map(String::as_str) {
                Some("json") => PayloadFormat::Json,
                Some("typed") => PayloadFormat::Typed,
                _ => PayloadFormat::Both,
            };
            catchup(arg(&args, 1, 1_000_000), format).await
        }
        Some("live") => {
            live(
                arg(&args, 1, 100),
                arg(&args, 2, 10_000),
                arg(&args, 3, 10),
                arg(&args, 4, 1).max(1),
                arg(&args, 5, 1).max(1),
            )
            .await
        }
        _ => {
            eprintln!("usage: subscription_bench catchup [EVENTS] [both|json|typed] | live [SUBSCRIBERS] [RATE] [SECONDS] [EVENTS_PER_APPEND] [DOMAINS]");
            std::process::exit(2);
        }
    }
}
