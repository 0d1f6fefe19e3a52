//! `rediss://` verified against the system's roots plus `REDIS_CA_FILE`,
//! on one server and on a Redis Cluster that speaks TLS only.

use std::time::Duration;

use chrono::Utc;
use shared::cache::near::NearCache;
use shared::cache::{CachedPrice, Lookup, PriceCache};
use shared::config::RedisSettings;
use shared::keys::Keys;
use shared::redis_pool::RedisPool;
use testkit::{RedisCluster, RedisOptions, RedisServer, RedisTls, TestCa, eventually};

#[tokio::test]
async fn rediss_trusts_the_ca_file_and_a_wrong_ca_is_one_error_at_start() {
    // Arrange: a TLS-only server with a certificate from the test's CA.
    let ca = TestCa::new();
    let leaf = ca.issue(&["127.0.0.1", "localhost"]);
    let redis = RedisServer::start_with(RedisOptions {
        tls: Some(RedisTls {
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
            ca_pem: ca.cert_pem(),
        }),
        ..Default::default()
    })
    .await;
    assert!(redis.url().starts_with("rediss://"));
    let dir = tempfile::tempdir().unwrap();
    let trusted = dir.path().join("ca.pem");
    std::fs::write(&trusted, ca.cert_pem()).unwrap();
    let stranger = dir.path().join("other.pem");
    std::fs::write(&stranger, TestCa::new().cert_pem()).unwrap();
    let settings = |ca_file: Option<&std::path::Path>| RedisSettings {
        ca_file: ca_file.map(|p| p.to_path_buf()),
        ..RedisSettings::for_url(redis.url(), "tls")
    };

    // Act and Assert: trusted through REDIS_CA_FILE, prices go in and out.
    settings(Some(&trusted)).validate().unwrap();
    let pool = RedisPool::open(&settings(Some(&trusted))).await.unwrap();
    let cache = PriceCache::new(pool, Keys::new("tls"), Duration::from_secs(60));
    let entry = CachedPrice::new("P-1", 1234, Utc::now());
    cache.put(&entry).await.unwrap();
    assert_eq!(cache.get("P-1").await.unwrap(), Lookup::Hit(entry));

    // Another CA, or the system's roots alone: refused at start, in one
    // line that names the setting to fix.
    for (ca_file, setting) in [
        (Some(stranger.as_path()), "REDIS_CA_FILE"),
        (None, "REDIS_URL"),
    ] {
        let err = match RedisPool::open(&settings(ca_file)).await {
            Err(e) => e,
            Ok(_) => panic!("an untrusted certificate was accepted ({setting})"),
        };
        assert_eq!(err.setting, setting);
        let line = err.to_string();
        assert!(
            line.contains(setting) && line.contains("certificate"),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }

    // A CA file for a plain redis:// URL, or one without a certificate,
    // is a bad setting.
    let mut plain = RedisSettings::for_url("redis://127.0.0.1:1", "tls");
    plain.ca_file = Some(trusted.clone());
    assert_eq!(plain.validate().unwrap_err().var, "REDIS_CA_FILE");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no certificate here").unwrap();
    assert_eq!(
        settings(Some(&empty)).validate().unwrap_err().var,
        "REDIS_CA_FILE"
    );
}

#[tokio::test]
async fn an_unreachable_tls_server_does_not_stop_a_service_from_starting() {
    // As with plain Redis, a service starts while Redis is down (its
    // /ready says so); only a refused certificate stops it.
    let port = testkit::free_port();
    let settings = RedisSettings::for_url(format!("rediss://127.0.0.1:{port}"), "tls");
    let pool = RedisPool::open(&settings).await.unwrap();
    assert!(pool.ping_all().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_is_trusted_through_the_ca_file_and_keeps_a_near_cache_right() {
    // Arrange: three primaries and three replicas speaking TLS only, with
    // certificates from the test's CA; the pool trusts it through
    // REDIS_CA_FILE, and a near cache tracks every node.
    let ca = TestCa::new();
    let leaf = ca.issue(&["127.0.0.1", "localhost"]);
    let cluster = RedisCluster::start_tls(RedisTls {
        cert_pem: leaf.cert_pem,
        key_pem: leaf.key_pem,
        ca_pem: ca.cert_pem(),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let trusted = dir.path().join("ca.pem");
    std::fs::write(&trusted, ca.cert_pem()).unwrap();
    let settings = RedisSettings {
        ca_file: Some(trusted),
        ..cluster.settings("tlsc")
    };
    settings.validate().unwrap();
    let pool = RedisPool::open(&settings).await.unwrap();
    let keys = Keys::new("tlsc");
    let near = NearCache::tracking(100, keys.clone(), &pool).unwrap();
    let ttl = Duration::from_secs(3600);
    let cache = PriceCache::new(pool, keys.clone(), ttl).with_near(near.clone());
    eventually(super::LONG, "the near cache tracks every node", || async {
        near.is_live()
    })
    .await;

    // Act and Assert: prices go in and out on every primary (redirections
    // included), are then answered from the near cache, and a write by
    // another client over TLS reaches it.
    let mut conn = cluster.connection().await;
    for id in &super::one_per_primary(&cluster, "tlsc").await {
        let entry = CachedPrice::new(id, 1_000, Utc::now());
        cache.put(&entry).await.unwrap();
        super::read_until_kept(&cache, &near, &entry).await;

        let newer = CachedPrice::new(id, 2_000, Utc::now());
        let _: () = redis::cmd("HSET")
            .arg(keys.price(id))
            .arg(id)
            .arg(newer.encode())
            .query_async(&mut conn)
            .await
            .unwrap();
        super::wait_dropped(&near, id).await;
        assert_eq!(cache.get(id).await.unwrap(), Lookup::Hit(newer));
    }

    // A CA that did not issue the nodes' certificates is refused at start.
    let stranger = dir.path().join("other.pem");
    std::fs::write(&stranger, TestCa::new().cert_pem()).unwrap();
    let refused = RedisSettings {
        ca_file: Some(stranger),
        ..cluster.settings("tlsc")
    };
    match RedisPool::open(&refused).await {
        Err(e) => assert_eq!(e.setting, "REDIS_CA_FILE"),
        Ok(_) => panic!("an untrusted cluster certificate was accepted"),
    }
}
