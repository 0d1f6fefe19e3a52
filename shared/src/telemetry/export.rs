//! The span exporter: a thread of its own takes the spans that threads
//! have finished and encoded ([`super::buffer`]) and sends them over
//! OTLP/gRPC or OTLP/HTTP.
//!
//! It sends when a thread's buffer holds a full batch
//! (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans, 512 unless set) or every
//! `OTEL_BSP_SCHEDULE_DELAY`, and
//! drops a batch it cannot send within [`EXPORT_TIMEOUT`] (one warning a
//! minute); spans are dropped while `OTEL_BSP_MAX_QUEUE_SIZE` of them wait
//! (also one warning a minute). A collector that is down never blocks or
//! fails a request. [`Exporter::shutdown`] sends what is left, so a
//! stopping service loses no span.
//!
//! Over gRPC, a batch goes out as it was encoded: the request is framed
//! here and sent on tonic's channel ([`ExportBody::grpc_request`]), its
//! status read from the answer's headers or trailers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;

use super::buffer::{Pushed, Queue};
use super::encode::{self, Resource};
use super::lock;
use super::record::SpanRecord;
use crate::config::OtlpProtocol;

/// Longest one export may take before its batch is dropped.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// At most one warning of each kind ("cannot export", "queue full") per this period.
pub const EXPORT_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Where and how spans go.
#[derive(Debug, Clone)]
pub(crate) struct ExportSettings {
    pub(crate) endpoint: String,
    pub(crate) protocol: OtlpProtocol,
    /// Longest a finished span waits before it is sent.
    pub(crate) delay: Duration,
    /// Finished spans waiting for the export thread, at most.
    pub(crate) max_queue: usize,
    /// Spans per export request, at most.
    pub(crate) max_batch: usize,
    pub(crate) resource: Resource,
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
            queue: Queue::new(settings.max_queue, settings.max_batch),
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
        let sends = batches.into_iter().map(|batch| {
            let body = ExportBody {
                head: encode::request_head(&settings.resource, batch.bytes.len()),
                spans: Bytes::from(batch.bytes),
            };
            let mut client = client.clone();
            let n = batch.spans;
            async move {
                let spans = body.spans.clone();
                let sent = tokio::time::timeout(EXPORT_TIMEOUT, client.send(body))
                    .await
                    .unwrap_or_else(|_| Err("timed out".to_string()));
                if let Some(spans) = reclaim(spans) {
                    shared.queue.recycle(spans);
                }
                (sent, n)
            }
        });
        let results = rt.block_on(futures::future::join_all(sends));
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
            Self::Grpc(endpoint) => Client::Grpc(endpoint.connect_lazy()),
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
    Grpc(tonic::transport::Channel),
    Http(reqwest::Client, String),
}

impl Client {
    /// Sends one encoded `ExportTraceServiceRequest`.
    async fn send(&mut self, body: ExportBody) -> Result<(), String> {
        match self {
            Self::Grpc(channel) => {
                use tower::Service as _;
                let request = body.grpc_request()?;
                std::future::poll_fn(|cx| channel.poll_ready(cx))
                    .await
                    .map_err(|e| e.to_string())?;
                let response = channel.call(request).await.map_err(|e| e.to_string())?;
                grpc_outcome(response).await
            }
            Self::Http(client, url) => {
                let resp = client
                    .post(url.as_str())
                    .header("content-type", "application/x-protobuf")
                    .body(body.joined())
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

/// A batch's span buffer back from a sent request, for the next batch:
/// the request has let go of it by now (one that timed out may not have,
/// and its buffer is then freed when it does).
fn reclaim(spans: Bytes) -> Option<Vec<u8>> {
    spans.try_into_mut().ok().map(Vec::from)
}

/// An encoded `ExportTraceServiceRequest`, in its two parts: the head
/// ([`encode::request_head`]) and a thread's batch of spans, which a gRPC
/// export sends as they are, one after the other. Joining them first
/// (zeroing a batch-sized buffer and copying the spans into it) was a
/// tenth of what a traced request cost the api (callgrind); so, later, was
/// tonic's codec copying the joined message into a buffer of its own, a
/// batch-sized allocation and copy per export (a seventh of the export
/// thread's time, by perf).
struct ExportBody {
    head: Vec<u8>,
    spans: Bytes,
}

impl ExportBody {
    /// The request in one buffer, for OTLP/HTTP.
    fn joined(self) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.head.len() + self.spans.len());
        body.extend_from_slice(&self.head);
        body.extend_from_slice(&self.spans);
        body
    }

    /// The gRPC request for `TraceService/Export` (the channel adds the
    /// collector's scheme and authority): its body is one length-prefixed
    /// message, sent as two frames, the prefix and head, then the spans
    /// as they are.
    fn grpc_request(self) -> Result<axum::http::Request<tonic::body::Body>, String> {
        let len = u32::try_from(self.head.len() + self.spans.len())
            .map_err(|_| "a batch past 4 GiB".to_string())?;
        let mut first = Vec::with_capacity(5 + self.head.len());
        // Not compressed, then the message's length.
        first.push(0);
        first.extend_from_slice(&len.to_be_bytes());
        first.extend_from_slice(&self.head);
        let frames = [Bytes::from(first), self.spans]
            .map(|b| Ok::<_, std::convert::Infallible>(http_body::Frame::data(b)));
        axum::http::Request::post(GRPC_EXPORT)
            .header(axum::http::header::CONTENT_TYPE, "application/grpc")
            .header(axum::http::header::TE, "trailers")
            .header("grpc-timeout", format!("{}m", EXPORT_TIMEOUT.as_millis()))
            .body(tonic::body::Body::new(http_body_util::StreamBody::new(
                futures::stream::iter(frames),
            )))
            .map_err(|e| e.to_string())
    }
}

/// What a gRPC export's answer says: its status, in its headers (an
/// answer with no message) or in its trailers, read after its (empty)
/// `ExportTraceServiceResponse`; an answer without one is an error.
async fn grpc_outcome(response: axum::http::Response<tonic::body::Body>) -> Result<(), String> {
    use http_body_util::BodyExt as _;
    if !response.status().is_success() {
        return Err(format!("the collector answered HTTP {}", response.status()));
    }
    let status = match tonic::Status::from_header_map(response.headers()) {
        Some(status) => status,
        None => response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .trailers()
            .and_then(tonic::Status::from_header_map)
            .ok_or("the collector's answer has no grpc-status")?,
    };
    match status.code() {
        tonic::Code::Ok => Ok(()),
        code => Err(format!("{code}: {}", status.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_batchs_span_buffer_comes_back_whole_and_the_body_is_head_then_spans() {
        let mut batch = Vec::with_capacity(4096);
        batch.extend_from_slice(b"spans");
        let (at, capacity) = (batch.as_ptr(), batch.capacity());
        let spans = Bytes::from(batch);
        let body = ExportBody {
            head: b"head:".to_vec(),
            spans: spans.clone(),
        };
        // While the request holds the spans, they are not taken back.
        assert!(reclaim(spans.clone()).is_none());
        assert_eq!(body.joined(), b"head:spans");

        let back = reclaim(spans).expect("the request has let go");
        assert_eq!((back.as_ptr(), back.capacity()), (at, capacity));
        assert_eq!(back, b"spans");
    }

    /// An export of two spans, and a clone of its span buffer.
    fn export_body() -> (ExportBody, Bytes) {
        let mut spans = Vec::new();
        for (id, name) in [(1, "POST /api/v1/price"), (2, "HGET")] {
            let span = SpanRecord::new(
                (7, id, 0),
                String::new(),
                true,
                std::borrow::Cow::Borrowed(name),
                super::super::record::SpanKind::Server,
                id,
            );
            encode::span_entry(&mut spans, &span);
        }
        let resource = Resource {
            attributes: Vec::new(),
            scope: "export-test".into(),
        };
        let spans = Bytes::from(spans);
        let body = ExportBody {
            head: encode::request_head(&resource, spans.len()),
            spans: spans.clone(),
        };
        (body, spans)
    }

    fn grpc_client(endpoint: String) -> Client {
        Client::Grpc(
            tonic::transport::Endpoint::from_shared(endpoint)
                .unwrap()
                .connect_lazy(),
        )
    }

    #[tokio::test]
    async fn a_grpc_export_reaches_a_real_collector_whole_and_gives_its_buffer_back() {
        let receiver = testkit::otlp_receiver::OtlpReceiver::start().await;
        let (body, spans) = export_body();
        let mut client = grpc_client(receiver.endpoint());
        assert_eq!(client.send(body).await, Ok(()));
        let mut names: Vec<_> = receiver.spans().into_iter().map(|s| s.name).collect();
        names.sort();
        assert_eq!(names, ["HGET", "POST /api/v1/price"]);
        assert!(
            reclaim(spans).is_some(),
            "the sent request no longer holds the spans"
        );
    }

    /// A collector that refuses every export, as one whose queue is full.
    struct Refusing;

    #[tonic::async_trait]
    impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
        for Refusing
    {
        async fn export(
            &self,
            _: tonic::Request<
                opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
            >,
        ) -> Result<
            tonic::Response<
                opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
            >,
            tonic::Status,
        > {
            Err(tonic::Status::resource_exhausted("the collector is full"))
        }
    }

    #[tokio::test]
    async fn a_grpc_export_the_collector_refuses_is_an_error_naming_its_status() {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Refusing))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let (body, _) = export_body();
        let sent = grpc_client(format!("http://{addr}")).send(body).await;
        server.abort();
        let error = sent.expect_err("a refused export fails");
        assert!(
            error.starts_with(&tonic::Code::ResourceExhausted.to_string())
                && error.ends_with("the collector is full"),
            "{error}"
        );
    }
}
