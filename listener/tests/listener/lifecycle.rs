//! The listener process itself: it starts, serves its health and metrics,
//! follows Redis's availability in `/ready`, and stops cleanly on SIGTERM.
//! Apart from the event tests: these check the process a deployment runs and
//! probes, not what it does with events.

use testkit::{RedisServer, run_until_ready_then_sigterm, temp_store};

use crate::helpers::*;

#[tokio::test]
async fn starts_connects_and_stops_cleanly_on_sigterm() {
    // Arrange
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let envs = [
        ("REDIS_URL", redis.url()),
        (
            "DATABASE_URL",
            format!("sqlite://{}/catalog.db", dir.path().display()),
        ),
        ("LISTENER_METRICS_ADDR", "127.0.0.1:0".to_string()),
    ];

    // Act
    let (ok, output) = tokio::task::spawn_blocking(move || {
        run_until_ready_then_sigterm(env!("CARGO_BIN_EXE_listener"), &envs, "listener ready")
    })
    .await
    .unwrap();

    // Assert
    assert!(ok, "non-zero exit after SIGTERM:\n{output}");
    assert!(output.contains("received SIGTERM"), "{output}");
    assert!(output.contains("listener stopped"), "{output}");
}

#[tokio::test]
async fn serves_health_and_metrics_on_its_own_address() {
    let redis = RedisServer::start().await;
    let (_store, _dir, url) = temp_store().await;
    let l = start_listener(settings(&redis, &url)).await;
    let health: serde_json::Value = reqwest::get(format!("http://{}/health", l.metrics))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["service"], "pricing-listener");
    let metrics = reqwest::get(format!("http://{}/metrics", l.metrics))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    l.stop().await;
}

#[tokio::test]
async fn ready_follows_redis_going_away_and_coming_back() {
    // Arrange: a listener over a Redis it will lose.
    let mut redis = RedisServer::start().await;
    let (_store, _dir, url) = temp_store().await;
    let l = start_listener(settings(&redis, &url)).await;
    let client = reqwest::Client::new();
    let ready = |client: reqwest::Client, addr: std::net::SocketAddr| async move {
        let r = client
            .get(format!("http://{addr}/ready"))
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    };
    eventually(LONG, "ready once subscribed and reading", || async {
        ready(client.clone(), l.metrics).await.0 == 200
    })
    .await;
    let (_, body) = ready(client.clone(), l.metrics).await;
    assert_eq!(body["status"], "ok");
    assert_eq!(body["subscribed"], true);
    assert_eq!(body["stream"]["connected"], true);
    assert_eq!(body["consumer"], l.consumer.as_str());

    // Act: Redis goes away.
    redis.stop();

    // Assert: not ready, while /health still answers (the process lives) and
    // says why.
    eventually(LONG, "not ready without Redis", || async {
        ready(client.clone(), l.metrics).await.0 == 503
    })
    .await;
    let health = json_of(client.get(format!("http://{}/health", l.metrics))).await;
    assert_eq!(health["status"], "degraded");
    // Both sides notice: the subscription and the stream connection.
    eventually(LONG, "both sides report the loss", || async {
        let (_, body) = ready(client.clone(), l.metrics).await;
        body["subscribed"] == false && body["stream"]["connected"] == false
    })
    .await;
    // And ready again once Redis is back: subscribed again, reading again.
    redis.restart().await;
    eventually(LONG, "ready again after Redis restarts", || async {
        ready(client.clone(), l.metrics).await.0 == 200
    })
    .await;
    assert_eq!(redis.subscribers("market_events").await, 1);
    l.stop().await;
}
