//! PostgreSQL over TLS: a server with a certificate from a CA made for the
//! test, which a client trusts only through `sslrootcert` in `DATABASE_URL`.

use shared::config::DatabaseSettings;
use shared::store::postgres::PgStore;
use shared::store::{self, StoreError};
use testkit::{PostgresOptions, PostgresServer, TestCa};

#[tokio::test]
async fn verify_full_trusts_the_named_ca_and_refuses_another_at_start() {
    // Arrange: a server with a certificate for 127.0.0.1 from the test's CA.
    let ca = TestCa::new();
    let leaf = ca.issue(&["127.0.0.1", "localhost"]);
    let pg = PostgresServer::start_with(PostgresOptions {
        tls: Some((leaf.cert_pem, leaf.key_pem)),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let trusted = dir.path().join("ca.pem");
    std::fs::write(&trusted, ca.cert_pem()).unwrap();
    let stranger = dir.path().join("other-ca.pem");
    std::fs::write(&stranger, TestCa::new().cert_pem()).unwrap();
    let url = |root: &std::path::Path| {
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            pg.url(),
            root.display()
        )
    };

    // Act and Assert: with the right CA, every connection is encrypted.
    let store = PgStore::connect(&DatabaseSettings::for_url(url(&trusted), 2))
        .await
        .unwrap();
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(ssl, "the connection is not encrypted");

    // With another CA, opening the store fails at once, in one line.
    let err = match store::open(&DatabaseSettings::for_url(url(&stranger), 2)).await {
        Err(e) => e,
        Ok(_) => panic!("a certificate from an untrusted CA was accepted"),
    };
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    let line = err.to_string();
    assert!(
        line.contains("DATABASE_URL=postgres://") && !line.contains('\n'),
        "{line}"
    );
    assert!(
        line.to_lowercase().contains("certificate") || line.contains("UnknownIssuer"),
        "{line}"
    );
}
