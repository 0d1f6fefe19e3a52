//! What tracing costs the thread that serves a traced cache hit: the head
//! sampling decision, the server span, the Redis client span inside it,
//! and both encoded into the thread's export buffer, as the api does them
//! for one sampled `POST /api/v1/price` answered from Redis.
//!
//! Export is real: the spans go over OTLP/gRPC to a counting receiver on a
//! loopback port (testkit), and each sample waits, untimed, until every
//! span it made has arrived, so that a span dropped for a full queue (which
//! would be cheaper) cannot pass for a fast one. The loop is warm: it
//! measures the path's own cost, not what it costs when its code and data
//! have gone cold between traced requests (docs/benchmarks.md, "10%
//! sampling"). The Redis call itself is a ready future.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use shared::config::{LogFormat, OtlpProtocol, TelemetrySettings, TraceSampler};
use shared::telemetry::{
    HeadDecision, RedisOp, ServerRoute, ServerSpan, head_decision, redis_call,
};
use testkit::otlp_receiver::OtlpReceiver;

/// Iterations timed between two waits for the receiver: well under the
/// queue's bound of spans, so that none is dropped.
const CHUNK: u64 = 20_000;

/// Runs a future that never waits.
fn ready<F: Future>(f: F) -> F::Output {
    match pin!(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("nothing in a benchmarked request waits"),
    }
}

/// One traced cache hit's telemetry; returns its `traceparent`.
fn traced_hit() -> shared::telemetry::Traceparent {
    assert_eq!(head_decision(None, None), HeadDecision::Traced);
    let span = ServerSpan::start(
        "POST",
        Some(ServerRoute::of("/api/v1/price")),
        "/api/v1/price",
        None,
        None,
    )
    .expect("span export is on");
    static HGET: RedisOp = RedisOp::new("HGET", "HGET");
    let mut request = pin!(span.run(redis_call(&HGET, async { Ok::<_, String>(black_box(7u8)) })));
    black_box(ready(request.as_mut()).ok());
    request
        .take_span()
        .expect("the request answered")
        .finish(200)
}

/// Waits until the receiver has `spans`; panics after a minute.
fn wait_for(receiver: &OtlpReceiver, spans: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.count() < spans {
        assert!(
            Instant::now() < deadline,
            "{} of {spans} spans arrived: spans were dropped",
            receiver.count()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn spans(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime for the receiver");
    let receiver = rt
        .block_on(OtlpReceiver::start_counting_on(0))
        .expect("bind the receiver");
    let _guard = shared::telemetry::init_head_sampled(&TelemetrySettings {
        service_name: "bench".into(),
        otlp_endpoint: Some(receiver.endpoint()),
        otlp_protocol: OtlpProtocol::Grpc,
        sampler: TraceSampler::ParentBasedAlwaysOn,
        batch_delay: Duration::from_millis(5),
        max_queue: 4 * CHUNK as usize,
        max_export_batch: 512,
        log_format: LogFormat::Pretty,
        log_filter: "warn".into(),
        resource_attributes: Vec::new(),
    })
    .expect("telemetry");

    let mut sent = 0;
    c.bench_function("traced cache hit: server span + Redis span, queued", |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(CHUNK);
                let start = Instant::now();
                for _ in 0..n {
                    black_box(traced_hit());
                }
                took += start.elapsed();
                sent += 2 * n;
                wait_for(&receiver, sent);
                left -= n;
            }
            took
        });
    });
}

criterion_group!(benches, spans);
criterion_main!(benches);
