//! Integration tests of the listener binary against a real redis-server.

#![allow(clippy::unwrap_used, missing_docs, unreachable_pub)]

use shared::testing::{RedisServer, run_until_ready_then_sigterm};

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
    let dir = tempfile::tempdir().unwrap();
    let port = shared::testing::free_port();
    let settings = listener::config::Settings {
        redis: shared::config::RedisSettings::for_url(redis.url(), "lt"),
        database: shared::config::DatabaseSettings {
            url: format!("sqlite://{}/catalog.db", dir.path().display()),
            max_connections: 1,
        },
        telemetry: shared::config::TelemetrySettings {
            service_name: "pricing-listener-test".into(),
            otlp_endpoint: None,
            log_format: shared::config::LogFormat::Pretty,
            log_filter: "info".into(),
        },
        metrics_addr: format!("127.0.0.1:{port}").parse().unwrap(),
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(listener::run(settings, async {
        let _ = rx.await;
    }));

    let client = reqwest::Client::new();
    let mut health = None;
    for _ in 0..100 {
        if let Ok(resp) = client
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await
        {
            health = Some(resp.json::<serde_json::Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(health.expect("no /health")["service"], "pricing-listener");
    let metrics = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);

    tx.send(()).unwrap();
    handle.await.unwrap().unwrap();
}
