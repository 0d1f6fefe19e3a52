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
