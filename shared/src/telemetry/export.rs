//! The span exporter: finished spans are encoded ([`super::encode`]) by
//! the thread that finishes them, into a buffer of that thread's own, and
//! one thread of the exporter's takes the buffers and sends them over
//! OTLP/gRPC or OTLP/HTTP.
//!
//! Why per thread: with one queue that every request thread pushed into,
//! each push moved the queue's lock and the span's bytes between the
//! cores (about 1% of a traced cache hit's CPU, at the unlock), the span's
//! strings were freed by another thread than the one that allocated them,
//! and the export thread walked every span again to encode it. Now a push
//! takes a lock only its own thread and, once a batch, the export thread
//! touch; the span is written once, as protobuf, and freed where it was
//! made; and an export request is those bytes behind one header.
//!
//! The export thread sends when a thread's buffer holds a full batch
//! ([`MAX_EXPORT_BATCH`] spans) or every `OTEL_BSP_SCHEDULE_DELAY`, drops a
//! batch it cannot send within [`EXPORT_TIMEOUT`] (one warning a minute),
//! and spans are dropped while `OTEL_BSP_MAX_QUEUE_SIZE` of them wait (also
//! one warning a minute; threads reserve room a few spans at a time (see
//! [`credit_for`]), so that the bound costs no shared write per span). A collector that is down
//! never blocks or fails a request. [`Exporter::shutdown`] sends what is
//! left, so a stopping service loses no span.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::encode::{self, Resource};
use super::record::SpanRecord;
use crate::config::OtlpProtocol;

/// Longest one export may take before its batch is dropped.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// At most one warning of each kind ("cannot export", "queue full") per this period.
pub const EXPORT_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Spans per export request, as the OpenTelemetry SDK's batch processor.
const MAX_EXPORT_BATCH: usize = 512;

/// Most room in the queue a thread reserves at a time: it takes from the
/// shared count once per this many spans.
const MAX_CREDIT: usize = 64;

/// Room a thread reserves at a time in a queue of `max` spans: at most
/// [`MAX_CREDIT`], and at most a 256th of the queue, so that room reserved
/// by threads that then go idle never keeps another from queueing (a
/// thread holds less than one step unused; at the smallest queue, 512,
/// steps are of 2).
fn credit_for(max: usize) -> usize {
    (max / 256).clamp(1, MAX_CREDIT)
}

/// Where and how spans go.
#[derive(Debug, Clone)]
pub(crate) struct ExportSettings {
    pub(crate) endpoint: String,
    pub(crate) protocol: OtlpProtocol,
    /// Longest a finished span waits before it is sent.
    pub(crate) delay: Duration,
    /// Finished spans waiting for the export thread, at most.
    pub(crate) max_queue: usize,
    pub(crate) resource: Resource,
}

/// Encoded spans, at most [`MAX_EXPORT_BATCH`]: one export request's worth.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// [`encode::span_entry`]s, one after the other.
    bytes: Vec<u8>,
    spans: usize,
}

/// One thread's spans, waiting for the export thread.
#[derive(Debug, Default)]
struct Buffer {
    /// Full batches.
    full: Vec<Batch>,
    /// The batch being filled.
    current: Batch,
    /// Room reserved in the queue and not used yet.
    credit: usize,
}

/// A thread's [`Buffer`]; the queue's registry and the thread hold it.
#[derive(Debug, Default)]
struct Shard(Mutex<Buffer>);

/// Tells queues apart in a thread's list of its shards.
static NEXT_QUEUE: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's shard of each queue it has pushed into (one, outside
    /// tests), by queue id.
    static SHARDS: RefCell<Vec<(u64, Arc<Shard>)>> = const { RefCell::new(Vec::new()) };
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// Queued, and it completed a batch: time to wake the export thread.
    BatchFull,
    /// Dropped: the queue is full.
    Dropped,
}

/// The spans every thread has finished and the export thread not yet taken.
pub(crate) struct Queue {
    id: u64,
    /// Every thread's shard. A shard whose thread has ended is removed
    /// once it is empty.
    shards: Mutex<Vec<Arc<Shard>>>,
    /// For a thread whose thread-locals are being destroyed (or, which
    /// cannot happen today, a push from inside a push).
    fallback: Arc<Shard>,
    max: usize,
    /// [`credit_for`] `max`.
    credit: usize,
    /// Spans waiting plus room reserved by threads: at most `max`.
    reserved: AtomicUsize,
}

impl Queue {
    pub(crate) fn new(max: usize) -> Self {
        let fallback = Arc::new(Shard::default());
        Self {
            id: NEXT_QUEUE.fetch_add(1, Ordering::Relaxed),
            shards: Mutex::new(vec![fallback.clone()]),
            fallback,
            max,
            credit: credit_for(max),
            reserved: AtomicUsize::new(0),
        }
    }

    /// Encodes `span` into this thread's buffer, unless the queue is full.
    pub(crate) fn push(&self, span: &SpanRecord) -> Pushed {
        let pushed = SHARDS.try_with(|cell| {
            let mut shards = cell.try_borrow_mut().ok()?;
            let shard = match shards.iter().find(|(id, _)| *id == self.id) {
                Some((_, shard)) => shard,
                None => {
                    let shard = Arc::new(Shard::default());
                    lock(&self.shards).push(shard.clone());
                    shards.push((self.id, shard));
                    &shards[shards.len() - 1].1
                }
            };
            Some(self.push_to(shard, span))
        });
        match pushed {
            Ok(Some(pushed)) => pushed,
            // This thread's thread-locals are being destroyed.
            _ => self.push_to(&self.fallback, span),
        }
    }

    fn push_to(&self, shard: &Shard, span: &SpanRecord) -> Pushed {
        let mut buffer = lock(&shard.0);
        if buffer.credit == 0 {
            buffer.credit = self.reserve();
            if buffer.credit == 0 {
                return Pushed::Dropped;
            }
        }
        buffer.credit -= 1;
        let batch = &mut buffer.current;
        if batch.bytes.capacity() == 0 {
            batch.bytes.reserve(64 * 1024);
        }
        encode::span_entry(&mut batch.bytes, span);
        batch.spans += 1;
        if batch.spans < MAX_EXPORT_BATCH {
            return Pushed::Queued;
        }
        let full = std::mem::take(&mut buffer.current);
        buffer.full.push(full);
        Pushed::BatchFull
    }

    /// Reserves up to a step of room ([`credit_for`]); 0 when the queue is full.
    fn reserve(&self) -> usize {
        let mut now = self.reserved.load(Ordering::Relaxed);
        loop {
            let grant = self.credit.min(self.max.saturating_sub(now));
            if grant == 0 {
                return 0;
            }
            match self.reserved.compare_exchange_weak(
                now,
                now + grant,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return grant,
                Err(actual) => now = actual,
            }
        }
    }

    /// Takes every thread's spans, as batches of at most
    /// [`MAX_EXPORT_BATCH`], and forgets the shards of threads that ended.
    pub(crate) fn take(&self) -> Vec<Batch> {
        let mut batches = Vec::new();
        let mut freed = 0;
        lock(&self.shards).retain(|shard| {
            let mut buffer = lock(&shard.0);
            for batch in buffer.full.drain(..) {
                freed += batch.spans;
                batches.push(batch);
            }
            if buffer.current.spans > 0 {
                let batch = std::mem::take(&mut buffer.current);
                freed += batch.spans;
                batches.push(batch);
            }
            // Only the registry holds it: its thread has ended.
            let ended = Arc::strong_count(shard) == 1;
            if ended {
                freed += std::mem::take(&mut buffer.credit);
            }
            !ended
        });
        self.reserved.fetch_sub(freed, Ordering::Relaxed);
        batches
    }

    /// Whether no thread holds a span.
    fn is_empty(&self) -> bool {
        lock(&self.shards).iter().all(|shard| {
            let buffer = lock(&shard.0);
            buffer.full.is_empty() && buffer.current.spans == 0
        })
    }
}

/// What request threads and the export thread share.
struct Shared {
    queue: Queue,
    /// Set when the thread has been woken for a full batch, cleared when it
    /// takes the queue: one unpark per batch, not per span.
    woken: AtomicBool,
    stop: AtomicBool,
    dropped: AtomicU64,
    full_warning: Throttle,
}

/// The queue and the export thread that empties it.
pub(crate) struct Exporter {
    shared: Arc<Shared>,
    waker: std::thread::Thread,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

impl Exporter {
    /// Checks the settings and starts the export thread.
    pub(crate) fn start(settings: ExportSettings) -> anyhow::Result<Arc<Self>> {
        // Refuse a bad endpoint now, not on the first export.
        let transport = Transport::plan(&settings)?;
        let shared = Arc::new(Shared {
            queue: Queue::new(settings.max_queue),
            woken: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            full_warning: Throttle::default(),
        });
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || run(&thread_shared, transport, &settings))
            .context("starting the span export thread")?;
        Ok(Arc::new(Self {
            shared,
            waker: handle.thread().clone(),
            thread: Mutex::new(Some(handle)),
        }))
    }

    /// Queues a finished span; drops it when the queue is full.
    pub(crate) fn push(&self, span: &SpanRecord) {
        let s = &self.shared;
        match s.queue.push(span) {
            Pushed::Queued => {}
            Pushed::BatchFull => {
                if !s.woken.swap(true, Ordering::AcqRel) {
                    self.waker.unpark();
                }
            }
            Pushed::Dropped => {
                let dropped = s.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if s.full_warning.due() {
                    tracing::warn!(target: "telemetry", dropped_so_far = dropped, "the span export queue is full; dropping spans (this warning repeats at most once a minute)");
                }
            }
        }
    }

    /// Sends what is queued and stops the thread (bounded by the export
    /// timeout of each remaining batch).
    pub(crate) fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.waker.unpark();
        if let Some(handle) = lock(&self.thread).take() {
            let _ = handle.join();
        }
    }
}

/// Says yes at most once per [`EXPORT_WARNING_EVERY`]: for warnings that
/// would otherwise repeat on every span or batch.
#[derive(Default)]
struct Throttle(Mutex<Option<Instant>>);

impl Throttle {
    fn due(&self) -> bool {
        let mut last = lock(&self.0);
        let due = last.is_none_or(|t| t.elapsed() >= EXPORT_WARNING_EVERY);
        if due {
            *last = Some(Instant::now());
        }
        due
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The export thread: waits for a full batch or the delay, then sends.
fn run(shared: &Shared, transport: Transport, settings: &ExportSettings) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("telemetry: cannot start the span export runtime: {e}");
            return;
        }
    };
    let client = rt.block_on(async { transport.connect() });
    let export_warning = Throttle::default();
    let mut next = Instant::now() + settings.delay;
    loop {
        let stopping = shared.stop.load(Ordering::Acquire);
        let full = shared.woken.load(Ordering::Acquire);
        if !stopping && !full && Instant::now() < next {
            std::thread::park_timeout(next.saturating_duration_since(Instant::now()));
            continue;
        }
        shared.woken.store(false, Ordering::Release);
        let batches = shared.queue.take();
        // Every batch at once: one export at a time cannot keep up with a
        // busy api when each round trip waits for a collector that shares
        // its machine.
        let sends = batches.iter().map(|batch| {
            let body = encode::request_of_encoded(&settings.resource, &batch.bytes);
            let mut client = client.clone();
            let n = batch.spans;
            async move {
                let sent = tokio::time::timeout(EXPORT_TIMEOUT, client.send(body))
                    .await
                    .unwrap_or_else(|_| Err("timed out".to_string()));
                (sent, n)
            }
        });
        let results = rt.block_on(futures::future::join_all(sends));
        drop(batches);
        let dropped: usize = results
            .iter()
            .filter(|(r, _)| r.is_err())
            .map(|(_, n)| n)
            .sum();
        if let Some((Err(e), _)) = results.iter().find(|(r, _)| r.is_err())
            && export_warning.due()
        {
            tracing::warn!(target: "telemetry", error = %e, dropped, "cannot export spans; dropping them (this warning repeats at most once a minute)");
        }
        if stopping && shared.queue.is_empty() {
            return;
        }
        if !full {
            next = Instant::now() + settings.delay;
        }
    }
}

/// The OTLP method a gRPC export calls.
const GRPC_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// How to reach the collector, checked before the thread starts.
#[derive(Debug)]
enum Transport {
    Grpc(Box<tonic::transport::Endpoint>),
    Http(String),
}

impl Transport {
    fn plan(settings: &ExportSettings) -> anyhow::Result<Self> {
        Ok(match settings.protocol {
            OtlpProtocol::Grpc => Self::Grpc(Box::new(
                tonic::transport::Endpoint::from_shared(settings.endpoint.clone())
                    .context("OTEL_EXPORTER_OTLP_ENDPOINT is not a valid URI")?
                    .connect_timeout(EXPORT_TIMEOUT)
                    .timeout(EXPORT_TIMEOUT),
            )),
            OtlpProtocol::HttpProtobuf => Self::Http(format!(
                "{}/v1/traces",
                settings.endpoint.trim_end_matches('/')
            )),
        })
    }

    /// A client; inside the export thread's runtime (gRPC's lazy channel
    /// spawns its connection task there).
    fn connect(self) -> Client {
        match self {
            Self::Grpc(endpoint) => Client::Grpc(tonic::client::Grpc::new(endpoint.connect_lazy())),
            Self::Http(url) => Client::Http(
                reqwest::Client::builder()
                    .timeout(EXPORT_TIMEOUT)
                    .build()
                    .unwrap_or_default(),
                url,
            ),
        }
    }
}

#[derive(Clone)]
enum Client {
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
    Http(reqwest::Client, String),
}

impl Client {
    /// Sends one encoded `ExportTraceServiceRequest`.
    async fn send(&mut self, body: Vec<u8>) -> Result<(), String> {
        match self {
            Self::Grpc(grpc) => {
                grpc.ready().await.map_err(|e| e.to_string())?;
                let mut request = tonic::Request::new(body);
                request.set_timeout(EXPORT_TIMEOUT);
                grpc.unary::<_, (), _>(
                    request,
                    axum::http::uri::PathAndQuery::from_static(GRPC_EXPORT),
                    RawCodec,
                )
                .await
                .map(drop)
                .map_err(|s| format!("{}: {}", s.code(), s.message()))
            }
            Self::Http(client, url) => {
                let resp = client
                    .post(url.as_str())
                    .header("content-type", "application/x-protobuf")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if resp.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("the collector answered {}", resp.status()))
                }
            }
        }
    }
}

/// A gRPC codec for bodies encoded already: writes the bytes as they are,
/// reads the (empty) answer without decoding it.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut as _;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = ();
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        use bytes::Buf as _;
        let n = src.remaining();
        src.advance(n);
        Ok(Some(()))
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::BTreeSet;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;

    use super::*;
    use crate::telemetry::record::SpanKind;

    fn span(id: u64) -> SpanRecord {
        SpanRecord::new(
            (7, id, 3),
            String::new(),
            true,
            Cow::Borrowed("HGET"),
            SpanKind::Client,
            id,
        )
    }

    fn resource() -> Resource {
        Resource {
            attributes: Vec::new(),
            scope: "test".into(),
        }
    }

    /// The span ids in `batch`, decoded as the collector would.
    fn ids(batch: &Batch) -> Vec<u64> {
        let request = encode::request_of_encoded(&resource(), &batch.bytes);
        let request = ExportTraceServiceRequest::decode(&request[..]).unwrap();
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), batch.spans, "the batch counts what it holds");
        spans
            .iter()
            .map(|s| u64::from_be_bytes(s.span_id[..].try_into().unwrap()))
            .collect()
    }

    #[test]
    fn a_full_queue_drops_what_comes_over_its_bound_and_has_room_again_once_taken() {
        let q = Queue::new(600);
        let pushed: Vec<Pushed> = (0..700).map(|i| q.push(&span(i))).collect();
        assert_eq!(pushed[511], Pushed::BatchFull, "the 512th fills a batch");
        assert_eq!(
            pushed.iter().filter(|p| **p == Pushed::Dropped).count(),
            100
        );
        assert!(pushed[..600].iter().all(|p| *p != Pushed::Dropped));

        let batches = q.take();
        assert_eq!(batches.len(), 2);
        let sent: Vec<u64> = batches.iter().flat_map(ids).collect();
        assert_eq!(sent, (0..600).collect::<Vec<_>>(), "all kept, in order");
        assert!(q.is_empty());
        assert_eq!(q.push(&span(1_000)), Pushed::Queued, "room again");
    }

    #[test]
    fn room_reserved_by_idle_threads_never_fills_a_small_queue() {
        assert_eq!(credit_for(512), 2);
        assert_eq!(credit_for(65_536), MAX_CREDIT);
        assert_eq!(credit_for(10_000_000), MAX_CREDIT);
        // 200 threads each queue one span and keep the rest of their step.
        let q = Arc::new(Queue::new(512));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let hold = Arc::new(Mutex::new(hold));
        let (queued, done) = std::sync::mpsc::channel();
        let idle: Vec<_> = (0..200u64)
            .map(|t| {
                let (q, hold, queued) = (q.clone(), hold.clone(), queued.clone());
                std::thread::spawn(move || {
                    queued.send(q.push(&span(t))).unwrap();
                    // Alive (holding its room) until released.
                    let _ = lock(&hold).recv();
                })
            })
            .collect();
        let pushed: Vec<Pushed> = (0..200).map(|_| done.recv().unwrap()).collect();
        assert!(pushed.iter().all(|p| *p == Pushed::Queued));
        // 200 queued and 200 reserved: another thread still has room.
        let busy: Vec<Pushed> = (0..100).map(|i| q.push(&span(1_000 + i))).collect();
        assert!(busy.iter().all(|p| *p != Pushed::Dropped), "{busy:?}");
        drop(release);
        for t in idle {
            t.join().unwrap();
        }
    }

    #[test]
    fn every_threads_spans_are_taken_and_an_ended_threads_buffer_is_forgotten() {
        let q = Arc::new(Queue::new(65_536));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..700 {
                        assert_ne!(q.push(&span(t * 10_000 + i)), Pushed::Dropped);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let batches = q.take();
        assert!(batches.iter().all(|b| b.spans <= MAX_EXPORT_BATCH));
        let sent: BTreeSet<u64> = batches.iter().flat_map(ids).collect();
        let want: BTreeSet<u64> = (0..4u64)
            .flat_map(|t| (0..700).map(move |i| t * 10_000 + i))
            .collect();
        assert_eq!(sent, want);
        assert_eq!(lock(&q.shards).len(), 1, "only the fallback shard is left");
        assert_eq!(
            q.reserved.load(Ordering::Relaxed),
            0,
            "the ended threads' unused room is given back"
        );
    }
}
