//! A counting OTLP/gRPC trace service for benchmarks (in `testkit`): the
//! real `TraceService/Export` method, which counts the spans of each export
//! by walking the protobuf wire format instead of decoding it.
//!
//! A benchmark's sink shares the machine with the service it measures, so
//! its CPU is charged to that service's throughput. Decoding every export
//! into `opentelemetry-proto`'s types (a `String` or `Vec` per attribute,
//! freed at once) was about 80% of the sink's CPU by perf; walking the wire
//! allocates nothing. A malformed export is refused with `INVALID_ARGUMENT`,
//! as a collector would.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use axum::http;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{Body, BoxFuture, StdError};
use tonic::{Request, Response, Status};

/// The gRPC path of the one method served.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// The counting service; clones share the count.
#[derive(Clone, Debug, Default)]
pub struct CountingTraceService {
    count: Arc<AtomicU64>,
}

impl CountingTraceService {
    /// A service counting into `count`.
    pub fn new(count: Arc<AtomicU64>) -> Self {
        Self { count }
    }
}

impl tonic::server::NamedService for CountingTraceService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl<B> tonic::codegen::Service<http::Request<B>> for CountingTraceService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != EXPORT_PATH {
            return Box::pin(async {
                Ok(Status::unimplemented("only TraceService/Export is served").into_http())
            });
        }
        let export = Export(self.count.clone());
        Box::pin(async move {
            Ok(tonic::server::Grpc::new(CountCodec)
                .unary(export, req)
                .await)
        })
    }
}

/// The `Export` method: adds the decoder's span count.
struct Export(Arc<AtomicU64>);

impl tonic::server::UnaryService<u64> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = std::future::Ready<Result<Response<Self::Response>, Status>>;

    fn call(&mut self, request: Request<u64>) -> Self::Future {
        self.0.fetch_add(request.into_inner(), Ordering::Relaxed);
        std::future::ready(Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        })))
    }
}

/// Requests decode to their span count; responses encode as protobuf.
struct CountCodec;

impl Codec for CountCodec {
    type Encode = ExportTraceServiceResponse;
    type Decode = u64;
    type Encoder = ResponseEncoder;
    type Decoder = SpanCounter;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        SpanCounter
    }
}

struct ResponseEncoder;

impl Encoder for ResponseEncoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding the response: {e}")))
    }
}

struct SpanCounter;

impl Decoder for SpanCounter {
    type Item = u64;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        use prost::bytes::Buf as _;
        let message = src.copy_to_bytes(src.remaining());
        count_spans(&message)
            .map(Some)
            .ok_or_else(|| Status::invalid_argument("malformed ExportTraceServiceRequest"))
    }
}

/// The spans in an encoded `ExportTraceServiceRequest`: its
/// `resource_spans` (field 1), their `scope_spans` (field 2), their `spans`
/// (field 2). `None` if the bytes are not well-formed protobuf.
pub fn count_spans(request: &[u8]) -> Option<u64> {
    let mut spans = 0;
    for resource_spans in fields(request, 1) {
        for scope_spans in fields(resource_spans?, 2) {
            for span in fields(scope_spans?, 2) {
                span?;
                spans += 1;
            }
        }
    }
    Some(spans)
}

/// The length-delimited fields numbered `number` of a message, in order,
/// skipping every other field; an `Err`-like `None` item ends a malformed one.
fn fields(message: &[u8], number: u64) -> impl Iterator<Item = Option<&[u8]>> {
    let mut rest = message;
    let mut failed = false;
    std::iter::from_fn(move || {
        while !rest.is_empty() && !failed {
            let Some(field) = next_field(&mut rest) else {
                failed = true;
                return Some(None);
            };
            if let (n, Some(bytes)) = field
                && n == number
            {
                return Some(Some(bytes));
            }
        }
        None
    })
}

/// Reads one field: its number, and its bytes if it is length-delimited.
fn next_field<'a>(rest: &mut &'a [u8]) -> Option<(u64, Option<&'a [u8]>)> {
    let key = varint(rest)?;
    let (number, wire_type) = (key >> 3, key & 7);
    let skip = |rest: &mut &'a [u8], n: usize| -> Option<&'a [u8]> {
        let (taken, left) = (rest.get(..n)?, rest.get(n..)?);
        *rest = left;
        Some(taken)
    };
    match wire_type {
        0 => varint(rest).map(|_| (number, None)),
        1 => skip(rest, 8).map(|_| (number, None)),
        2 => {
            let len = usize::try_from(varint(rest)?).ok()?;
            skip(rest, len).map(|bytes| (number, Some(bytes)))
        }
        5 => skip(rest, 4).map(|_| (number, None)),
        // Groups (3, 4) are not used by OTLP; anything else is malformed.
        _ => None,
    }
}

/// A base-128 varint, at most ten bytes.
fn varint(rest: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (i, byte) in rest.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *rest = &rest[i + 1..];
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

    use super::*;

    fn span(name: &str) -> Span {
        Span {
            trace_id: vec![7; 16],
            span_id: vec![9; 8],
            name: name.into(),
            kind: 2,
            start_time_unix_nano: 1_700_000_000_000_000_000,
            end_time_unix_nano: 1_700_000_000_000_100_000,
            attributes: vec![KeyValue {
                key: "http.route".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::IntValue(-3)),
                }),
                ..KeyValue::default()
            }],
            ..Span::default()
        }
    }

    fn request(shape: &[&[usize]]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: shape
                .iter()
                .map(|scopes| ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![KeyValue {
                            key: "service.name".into(),
                            value: Some(AnyValue {
                                value: Some(any_value::Value::StringValue("pricing-api".into())),
                            }),
                            ..KeyValue::default()
                        }],
                        ..Resource::default()
                    }),
                    scope_spans: scopes
                        .iter()
                        .map(|&n| ScopeSpans {
                            spans: (0..n).map(|i| span(&format!("s{i}"))).collect(),
                            ..ScopeSpans::default()
                        })
                        .collect(),
                    schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
                })
                .collect(),
        }
    }

    #[test]
    fn counts_the_spans_of_every_resource_and_scope_as_a_full_decode_would() {
        for shape in [
            &[][..],
            &[&[][..]][..],
            &[&[1][..]][..],
            &[&[2, 0, 3][..], &[][..], &[200][..]][..],
        ] {
            let request = request(shape);
            let decoded: usize = request
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .map(|ss| ss.spans.len())
                .sum();
            assert_eq!(count_spans(&request.encode_to_vec()), Some(decoded as u64));
        }
    }

    #[tokio::test]
    async fn a_counting_receiver_counts_what_a_grpc_client_exports() {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

        let rx = crate::otlp_receiver::OtlpReceiver::start_counting_on(0)
            .await
            .unwrap();
        let mut client = TraceServiceClient::connect(rx.endpoint()).await.unwrap();
        client.export(request(&[&[2, 3]])).await.unwrap();
        client.export(request(&[&[1], &[4]])).await.unwrap();
        assert_eq!(rx.count(), 10);
        assert!(rx.spans().is_empty(), "a counting receiver keeps nothing");
    }

    #[test]
    fn a_truncated_or_ill_typed_message_is_malformed() {
        let bytes = request(&[&[3]]).encode_to_vec();
        assert_eq!(count_spans(&bytes[..bytes.len() - 5]), None);
        assert_eq!(count_spans(&[0x0b]), None, "wire type 3 (a group)");
        assert_eq!(count_spans(&[0x0a, 0x80]), None, "an unfinished varint");
        assert_eq!(
            count_spans(&[0x0a, 0x05, 0x01]),
            None,
            "a length past the end"
        );
    }
}
