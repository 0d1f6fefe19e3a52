//! Garbage on the channel and in the stream: every message counted, none
//! crashes the listener. Its own test binary, so the process-wide metrics
//! recorder sees only this test.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use testkit::{RedisServer, seeded_store};

/// The listener binary's setup, shared by source: this binary uses a part.
#[allow(dead_code)]
#[path = "listener/helpers.rs"]
mod helpers;

use helpers::NS;

const N: usize = 10_000;

async fn metric_sum(addr: SocketAddr, name: &str, filter: &str) -> f64 {
    testkit::metric(
        &testkit::scrape(&format!("http://{addr}/metrics")).await,
        name,
        filter,
    )
}

#[tokio::test]
async fn ten_thousand_garbage_messages_are_counted_and_the_listener_stays_healthy() {
    shared::telemetry::init_for_tests();
    let redis = RedisServer::start().await;
    let (_store, _dir, url) = seeded_store(5).await;
    let settings = helpers::settings(&redis, &url);
    let l = listener::Listener::build(settings).await.unwrap();
    let addr = l.metrics_addr();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(l.run_until_stopped(async {
        let _ = rx.await;
    }));
    while redis.subscribers("market_events").await == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut conn = redis.connection().await;

    // Three kinds of garbage on the channel (each message distinct), and
    // events about products that do not exist appended to the stream.
    let mut pipe = redis::pipe();
    for i in 0..N {
        let msg = match i % 4 {
            0 => format!("not json {i}"),
            1 => format!(r#"{{"kind":"price_war_{i}"}}"#),
            2 => format!(r#"{{"kind":"demand_changed","data":{{"demand":{{"P-1":-{i}}}}}}}"#),
            _ => String::new(),
        };
        if i % 4 == 3 {
            pipe.cmd("XADD")
                .arg(shared::keys::Keys::new(NS).event_stream())
                .arg("*")
                .arg("event")
                .arg(format!(
                    r#"{{"kind":"stock_changed","data":{{"stock":{{"P-404-{i}":1}}}}}}"#
                ))
                .ignore();
        } else {
            pipe.cmd("PUBLISH").arg("market_events").arg(msg).ignore();
        }
    }
    let _: () = pipe.query_async(&mut conn).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let rejected = metric_sum(addr, "listener_events_rejected_total", "reason=").await;
        if rejected as usize == N {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{rejected} of {N} counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (reason, n) in [
        ("malformed_json", N / 4),
        ("unknown_kind", N / 4),
        ("invalid_field", N / 4),
        ("unknown_product", N / 4),
    ] {
        let got = metric_sum(
            addr,
            "listener_events_rejected_total",
            &format!("reason=\"{reason}\""),
        )
        .await;
        assert_eq!(got as usize, n, "{reason}");
    }
    let dead: u64 = redis::cmd("LLEN")
        .arg(shared::keys::Keys::new(NS).event_dead_letters())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(dead as usize, N, "every rejected message is dead-lettered");

    // Still healthy: /health answers and the next good event is processed.
    let health = reqwest::get(format!("http://{addr}/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    let good = r#"{"kind":"stock_changed","data":{"stock":{"P-2":3}}}"#;
    testkit::publish(&mut conn, "market_events", good).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let recalc = r#"job_type="recalculate_prices""#;
    while metric_sum(addr, "listener_jobs_enqueued_total", recalc).await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the good event was not processed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric_sum(addr, "listener_events_received_total", "path=\"pubsub\"").await,
        1.0
    );

    tx.send(()).unwrap();
    handle.await.unwrap().unwrap();
}
