//! `/health`, `/ready`, `/metrics` and the OpenAPI document.

use std::collections::BTreeSet;

use crate::helpers::{offline_app, spawn_app};

/// Every route the OpenAPI document lists, as `METHOD path`.
const DOCUMENTED: [&str; 20] = [
    "POST /api/v1/price",
    "GET /api/v1/price/{product_id}",
    "POST /api/v1/prices/batch",
    "GET /health",
    "GET /ready",
    "GET /metrics",
    "GET /api/v1/tasks/{task_id}",
    "DELETE /api/v1/tasks/{task_id}",
    "POST /api/v1/tasks/{task_id}/retry",
    "GET /api/v1/tasks/dead",
    "GET /api/v1/queues",
    "GET /api/v1/queues/{name}",
    "POST /api/v1/queues/{name}/pause",
    "POST /api/v1/queues/{name}/resume",
    "GET /api/v1/workers",
    "GET /api/v1/schedules",
    "POST /api/v1/tasks/recalculate-all",
    "POST /api/v1/publish-market-event",
    "GET /api/v1/dashboard/overview",
    "GET /api/v1/queues/{name}/jobs",
];

#[tokio::test]
async fn health_and_ready_report_ok() {
    let app = spawn_app().await;
    let (s, health) = app.get_json("/health").await;
    assert_eq!((s, health["status"].as_str()), (200, Some("ok")));
    let (s, ready) = app.get_json("/ready").await;
    assert_eq!(s, 200);
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["redis"]["ok"], true);
    assert_eq!(ready["store"]["ok"], true);
}

#[tokio::test]
async fn metrics_expose_the_request_histogram_cache_counters_and_pool_state() {
    // Arrange: one miss and one hit on the POST route, and a path no
    // route matches.
    let app = spawn_app().await;
    app.price("P-12", false).await;
    app.price("P-12", false).await;
    let (missing, _) = app.get_text("/no/such/route").await;
    assert_eq!(missing, 404);

    // Act
    let (status, text) = app.get_text("/metrics").await;

    // Assert
    assert_eq!(status, 200);
    let bucket = text.lines().find(|l| {
        l.starts_with("http_request_duration_seconds_bucket")
            && l.contains(r#"method="POST""#)
            && l.contains(r#"route="/api/v1/price""#)
            && l.contains(r#"status="200""#)
            && l.contains(r#"le="0.0005""#)
    });
    assert!(
        bucket.is_some(),
        "no sub-millisecond bucket for POST /api/v1/price in:\n{text}"
    );
    let count = text
        .lines()
        .find(|l| {
            // Other tests in this process answer this route with errors.
            l.starts_with("http_request_duration_seconds_count")
                && l.contains(r#"method="POST""#)
                && l.contains(r#"route="/api/v1/price""#)
                && l.contains(r#"status="200""#)
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .expect("count series");
    assert!(count >= 2, "count {count}");
    assert!(series_value(&text, "cache_hits_total") >= 1.0);
    assert!(
        text.lines()
            .any(|l| l.starts_with(r#"cache_misses_total{reason="absent"}"#))
    );
    // A path no route matches is labelled `unmatched`, never by itself.
    assert!(
        text.lines().any(|l| {
            l.starts_with("http_request_duration_seconds_count")
                && l.contains(r#"route="unmatched""#)
                && l.contains(r#"status="404""#)
        }),
        "no unmatched series in:\n{text}"
    );
    assert!(!text.contains("/no/such/route"));
    assert!(series_value(&text, "runtime_worker_threads") >= 1.0);
    assert_eq!(series_value(&text, "redis_pool_connections"), 2.0);
    assert!(series_value(&text, "redis_pool_healthy_connections") >= 1.0);
}

#[tokio::test]
async fn every_route_is_timed_under_its_template_and_method() {
    // Every route the api serves, one request each (refusals included:
    // they are timed too), then each must have its own series. Handlers
    // are observed one by one (crate::routes::get and its siblings), so a
    // route registered any other way would be missing here.
    let app = spawn_app().await;
    // Beside the documented API: the dashboard, Swagger UI and the
    // document, and known paths with a method they do not serve (405).
    let undocumented = [
        "GET /dashboard",
        "GET /dashboard/",
        "GET /dashboard/assets/app.js",
        "GET /dashboard/assets/app.css",
        "GET /openapi.json",
        "GET /docs",
        "GET /docs/",
        "GET /docs/{*rest}",
        "PUT /api/v1/price",
        "POST /health",
    ];
    let routes: Vec<(&str, &str)> = DOCUMENTED
        .iter()
        .chain(&undocumented)
        .map(|route| route.split_once(' ').expect("METHOD path"))
        .collect();
    for (method, template) in &routes {
        let path = template
            .replace("{product_id}", "P-1")
            .replace("{task_id}", "t-1")
            .replace("{name}", "default")
            .replace("{*rest}", "swagger-ui.css");
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        app.send(method, &path, None).await;
    }
    let (_, text) = app.get_text("/metrics").await;
    for (method, template) in routes {
        assert!(
            text.lines().any(|l| {
                l.starts_with("http_request_duration_seconds_count")
                    && l.contains(&format!(r#"method="{method}""#))
                    && l.contains(&format!(r#"route="{template}""#))
            }),
            "no series for {method} {template} in:\n{text}"
        );
    }
}

fn series_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("series {name} missing"))
}

#[tokio::test]
async fn openapi_lists_every_route_and_docs_are_served() {
    // In-process, no Redis: routing and the document need none.
    let app = offline_app().await;
    let (s, spec) = app.get_json("/openapi.json").await;
    assert_eq!(s, 200);
    let mut documented = BTreeSet::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            documented.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let routes: BTreeSet<String> = DOCUMENTED.iter().map(|r| r.to_string()).collect();
    assert_eq!(documented, routes);
    // The price request (whose strings borrow from the body) is documented
    // with plain string fields, the id required.
    let request = &spec["components"]["schemas"]["PriceRequest"];
    assert_eq!(
        request["properties"]["product_id"]["type"], "string",
        "{request}"
    );
    assert_eq!(
        request["required"],
        serde_json::json!(["product_id"]),
        "{request}"
    );
    assert_eq!(
        request["properties"]["user_location"]["type"],
        serde_json::json!(["string", "null"]),
        "{request}"
    );
    // Every admin endpoint documents its refusals.
    for (path, method) in [
        ("/api/v1/queues/{name}/pause", "post"),
        ("/api/v1/queues/{name}/resume", "post"),
        ("/api/v1/tasks/{task_id}", "delete"),
        ("/api/v1/tasks/{task_id}/retry", "post"),
        ("/api/v1/tasks/recalculate-all", "post"),
    ] {
        let responses = &spec["paths"][path][method]["responses"];
        for status in ["401", "403"] {
            assert!(
                responses[status].is_object(),
                "{method} {path}: no {status}"
            );
        }
    }
    // Every documented route is really served (not a 404 from the fallback).
    for route in &routes {
        let (method, path) = route.split_once(' ').unwrap();
        let path = path
            .replace("{product_id}", "P-1")
            .replace("{task_id}", "UNKNOWN")
            .replace("{name}", "events");
        let body = if method == "POST" {
            serde_json::json!({"product_id": "P-1", "product_ids": ["P-1"]})
                .to_string()
                .into_bytes()
        } else {
            Vec::new()
        };
        let (status, _, _) = app
            .send(method, &path, &[("content-type", "application/json")], body)
            .await;
        if !path.contains("UNKNOWN") {
            assert_ne!(status, 404, "{route} is documented but not routed");
        }
        assert_ne!(status, 405, "{route} is documented but not routed");
    }
    let (s, html) = app.get_text("/docs/").await;
    assert_eq!(s, 200);
    assert!(html.contains("swagger"), "Swagger UI not served");
    // A file Swagger UI does not have, or a malformed path under it, gets
    // the JSON error body like every other route.
    let (s, body) = app.get_json("/docs/no-such-file.js").await;
    assert_eq!(
        (s, body["error"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    let (s, body) = app.get_json("/docs/%FF").await;
    assert_eq!(
        (s, body["error"].as_str()),
        (422, Some("validation_error")),
        "{body}"
    );
}
