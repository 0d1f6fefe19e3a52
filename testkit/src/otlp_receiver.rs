//! An in-process OTLP trace receiver for tests (in `testkit`).
//!
//! It speaks the real protocols, OTLP/gRPC
//! (`opentelemetry.proto.collector.trace.v1.TraceService/Export`) or
//! OTLP/HTTP (`POST /v1/traces` with a protobuf body), so services export
//! to it exactly as they would to Jaeger. It keeps every span with its
//! resource's attributes (`service.name`, `service.version`, …) and its
//! links, and wakes waiters on every export, so a test waits for spans
//! without polling.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;

/// One received span, flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service: String,
    /// String renderings of its resource's attributes.
    pub resource: Vec<(String, String)>,
    /// Trace id, hex.
    pub trace_id: String,
    /// Span id, hex.
    pub span_id: String,
    /// Parent span id, hex; empty for a root.
    pub parent_span_id: String,
    /// Span name.
    pub name: String,
    /// Span kind (OTLP enum: 1 internal, 2 server, 3 client, 4 producer, 5 consumer).
    pub kind: i32,
    /// String renderings of its attributes.
    pub attributes: Vec<(String, String)>,
    /// The (trace id, span id) of each span it links to, hex.
    pub links: Vec<(String, String)>,
    /// Status code (OTLP enum: 0 unset, 1 ok, 2 error).
    pub status_code: i32,
    /// Start time, in nanoseconds since the Unix epoch.
    pub start_unix_nano: u64,
    /// End time, in nanoseconds since the Unix epoch.
    pub end_unix_nano: u64,
}

impl ReceivedSpan {
    /// The value of attribute `key`, if present.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of resource attribute `key`, if present.
    pub fn resource_attr(&self, key: &str) -> Option<&str> {
        self.resource
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
struct Sink {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    arrived: Arc<tokio::sync::Notify>,
    /// Spans received, kept or not.
    count: Arc<std::sync::atomic::AtomicU64>,
    /// Count spans only (a benchmark's sink, as cheap as a receiver can be).
    count_only: bool,
}

fn render(v: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn pairs(attributes: &[KeyValue]) -> Vec<(String, String)> {
    attributes
        .iter()
        .map(|a| (a.key.clone(), render(a.value.as_ref())))
        .collect()
}

impl Sink {
    /// Keeps (and counts) the spans of one export. A counting sink never
    /// gets here: it counts on the wire ([`crate::otlp_count`]).
    fn keep(&self, request: ExportTraceServiceRequest) {
        let mut out = Vec::new();
        for rs in request.resource_spans {
            let resource = rs
                .resource
                .as_ref()
                .map(|r| pairs(&r.attributes))
                .unwrap_or_default();
            let service = resource
                .iter()
                .find(|(k, _)| k == "service.name")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for span in ss.spans {
                    out.push(ReceivedSpan {
                        service: service.clone(),
                        resource: resource.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name,
                        kind: span.kind,
                        attributes: pairs(&span.attributes),
                        links: span
                            .links
                            .iter()
                            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                            .collect(),
                        status_code: span.status.as_ref().map_or(0, |s| s.code),
                        start_unix_nano: span.start_time_unix_nano,
                        end_unix_nano: span.end_time_unix_nano,
                    });
                }
            }
        }
        self.count
            .fetch_add(out.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.spans
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend(out);
        self.arrived.notify_waiters();
    }
}

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// `POST /v1/traces`: an OTLP/HTTP export with a protobuf body.
async fn export_http(
    axum::extract::State(sink): axum::extract::State<Sink>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    use prost::Message as _;
    let decoded = if sink.count_only {
        // Counted on the wire, as over gRPC (crate::otlp_count).
        crate::otlp_count::count_spans(&body)
            .map(|n| {
                sink.count
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            })
            .ok_or_else(|| "malformed ExportTraceServiceRequest".to_string())
    } else {
        ExportTraceServiceRequest::decode(body)
            .map(|request| sink.keep(request))
            .map_err(|e| e.to_string())
    };
    match decoded {
        Ok(()) => {
            let answer = ExportTraceServiceResponse {
                partial_success: None,
            };
            (
                [(axum::http::header::CONTENT_TYPE, "application/x-protobuf")],
                answer.encode_to_vec(),
            )
                .into_response()
        }
        Err(e) => (axum::http::StatusCode::BAD_REQUEST, e).into_response(),
    }
}

/// A running receiver; stops when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    sink: Sink,
    server: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    /// Starts an OTLP/gRPC receiver on a free loopback port.
    pub async fn start() -> Self {
        Self::start_on(0).await.expect("bind the OTLP receiver")
    }

    /// Starts an OTLP/gRPC receiver on `127.0.0.1:port` (0: a free port).
    pub async fn start_on(port: u16) -> std::io::Result<Self> {
        Self::start_grpc(port, false).await
    }

    /// An OTLP/gRPC receiver on `127.0.0.1:port` that only counts the spans
    /// it receives ([`Self::count`]), for benchmarks: it walks each export's
    /// wire format ([`crate::otlp_count`]) instead of decoding it, and keeps
    /// nothing.
    pub async fn start_counting_on(port: u16) -> std::io::Result<Self> {
        Self::start_grpc(port, true).await
    }

    async fn start_grpc(port: u16, count_only: bool) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let sink = Sink {
            count_only,
            ..Sink::default()
        };
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let mut builder = tonic::transport::Server::builder();
        let server = if count_only {
            let router = builder.add_service(crate::otlp_count::CountingTraceService::new(
                sink.count.clone(),
            ));
            tokio::spawn(async move {
                let _ = router.serve_with_incoming(incoming).await;
            })
        } else {
            let router = builder.add_service(TraceServiceServer::new(sink.clone()));
            tokio::spawn(async move {
                let _ = router.serve_with_incoming(incoming).await;
            })
        };
        Ok(Self { addr, sink, server })
    }

    /// Starts an OTLP/HTTP (protobuf) receiver on a free loopback port.
    pub async fn start_http() -> Self {
        Self::start_http_on(0, false)
            .await
            .expect("bind the OTLP/HTTP receiver")
    }

    /// An OTLP/HTTP (protobuf) receiver on `127.0.0.1:port` (0: a free
    /// port); `count_only` as for [`Self::start_counting_on`].
    pub async fn start_http_on(port: u16, count_only: bool) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let sink = Sink {
            count_only,
            ..Sink::default()
        };
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(export_http))
            .with_state(sink.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, sink, server })
    }

    /// The endpoint to give `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many spans have been received.
    pub fn count(&self) -> u64 {
        self.sink.count.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every span received so far (none for a counting receiver).
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.sink
            .spans
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }

    /// Waits until `done` holds for the spans received, checking after
    /// every export; `Err` with the spans so far if `within` passes first
    /// (a guard against a hang, not a timing check).
    pub async fn wait_until(
        &self,
        within: Duration,
        mut done: impl FnMut(&[ReceivedSpan]) -> bool,
    ) -> Result<Vec<ReceivedSpan>, Vec<ReceivedSpan>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // Registered before looking, so an export in between is not missed.
            let arrived = self.sink.arrived.notified();
            let spans = self.spans();
            if done(&spans) {
                return Ok(spans);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Err(self.spans());
            }
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}
