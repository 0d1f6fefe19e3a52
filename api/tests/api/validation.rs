//! Bad input always gets a 4xx with `{"error", "detail", "fields"}`.
//!
//! The refusals are driven in-process ([`offline_app`]: the router with
//! `oneshot`, no server, no Redis), since none of them may reach Redis; the
//! largest inputs that are still valid are checked on a real server.

use serde_json::{Value, json};

use crate::helpers::{offline_app, spawn_app};

fn assert_error(
    status: u16,
    body: &Value,
    want_status: u16,
    want_code: &str,
    want_field: Option<&str>,
) {
    assert_eq!(status, want_status, "{body}");
    assert_eq!(body["error"], want_code, "{body}");
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    if let Some(field) = want_field {
        let fields: Vec<&str> = body["fields"]
            .as_array()
            .unwrap_or_else(|| panic!("no fields in {body}"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(fields, [field], "{body}");
    }
}

#[tokio::test]
async fn every_bad_price_request_is_a_4xx_naming_the_field() {
    let app = offline_app().await;
    let cases: Vec<(Value, u16, &str, Option<&str>)> = vec![
        (json!({}), 422, "validation_error", Some("product_id")),
        (
            json!({"product_id": 42}),
            422,
            "validation_error",
            Some("product_id"),
        ),
        (
            json!({"product_id": "P-1", "is_prime_member": "yes"}),
            422,
            "validation_error",
            Some("is_prime_member"),
        ),
        (
            json!({"product_id": "P-1", "user_location": 7}),
            422,
            "validation_error",
            Some("user_location"),
        ),
        (
            json!({"product_id": ""}),
            422,
            "validation_error",
            Some("product_id"),
        ),
        (
            json!({"product_id": "a".repeat(65)}),
            422,
            "validation_error",
            Some("product_id"),
        ),
        (
            json!({"product_id": "P 1"}),
            422,
            "validation_error",
            Some("product_id"),
        ),
        (
            json!({"product_id": "P-1/../x"}),
            422,
            "validation_error",
            Some("product_id"),
        ),
        (
            json!({"product_id": "P-1", "colour": "red"}),
            422,
            "validation_error",
            Some("colour"),
        ),
        (
            json!({"product_id": "P-1", "user_location": "x".repeat(129)}),
            422,
            "validation_error",
            Some("user_location"),
        ),
        (json!(["P-1"]), 422, "validation_error", None),
    ];
    for (body, status, code, field) in cases {
        let (got_status, got) = app.post_json("/api/v1/price", &body).await;
        assert_eq!(got_status, status, "case {body}");
        assert_error(got_status, &got, status, code, field);
    }
}

#[tokio::test]
async fn the_longest_id_and_the_largest_batch_are_valid() {
    let app = spawn_app().await;
    // A 64-character id is the longest allowed: it is valid (and unknown).
    let (status, _) = app.price(&"a".repeat(64), false).await;
    assert_eq!(status, 404);
    // Exactly 1,000 ids is allowed.
    let thousand: Vec<String> = (1..=1000).map(|i| format!("P-{i}")).collect();
    let (s, b) = app
        .post_json("/api/v1/prices/batch", &json!({"product_ids": thousand}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        b["prices"].as_array().unwrap().len(),
        crate::helpers::SEEDED as usize
    );
}

#[tokio::test]
async fn malformed_oversized_and_non_json_bodies_are_refused() {
    let app = offline_app().await;

    for body in [
        b"{\"product_id\":".to_vec(),
        Vec::new(),
        b"{\"product_id\":\"P-1\"} {}".to_vec(),
    ] {
        let (s, b) = app
            .post_raw("/api/v1/price", "application/json", body)
            .await;
        assert_error(s, &b, 400, "invalid_json", None);
    }
    let (s, b) = app
        .post_raw(
            "/api/v1/price",
            "text/plain",
            b"{\"product_id\":\"P-1\"}".to_vec(),
        )
        .await;
    assert_error(s, &b, 415, "unsupported_media_type", None);

    let mut big = b"{\"product_id\":\"P-1\",\"user_location\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'x', 70 * 1024));
    big.extend(b"\"}");
    let (s, b) = app.post_raw("/api/v1/price", "application/json", big).await;
    assert_error(s, &b, 413, "payload_too_large", None);
}

/// A body sent in chunks, of no stated length, as `Transfer-Encoding:
/// chunked` arrives.
fn streamed(chunks: Vec<Vec<u8>>) -> axum::body::Body {
    let chunks = chunks
        .into_iter()
        .map(|c| Ok::<_, std::io::Error>(axum::body::Bytes::from(c)));
    axum::body::Body::from_stream(futures::stream::iter(chunks))
}

#[tokio::test]
async fn a_streamed_body_is_read_and_held_to_the_same_limit() {
    let app = offline_app().await;
    let json = [("content-type", "application/json")];
    // Read whole across its chunks: the ill-typed field is named.
    let small = streamed(vec![b"{\"product_id\":".to_vec(), b"5}".to_vec()]);
    let (s, _, b) = app.send_body("POST", "/api/v1/price", &json, small).await;
    let b: Value = serde_json::from_slice(&b).expect("JSON");
    assert_error(s, &b, 422, "validation_error", Some("product_id"));

    // Over 64 KiB in 1 KiB chunks, with no length to refuse it by up front.
    let mut chunks = vec![b"{\"product_id\":\"P-1\",\"user_location\":\"".to_vec()];
    chunks.extend((0..70).map(|_| vec![b'x'; 1024]));
    chunks.push(b"\"}".to_vec());
    let (s, _, b) = app
        .send_body("POST", "/api/v1/price", &json, streamed(chunks))
        .await;
    let b: Value = serde_json::from_slice(&b).expect("JSON");
    assert_error(s, &b, 413, "payload_too_large", None);
}

#[tokio::test]
async fn bad_batch_requests_are_refused() {
    let app = offline_app().await;
    let too_many: Vec<String> = (1..=1001).map(|i| format!("P-{i}")).collect();
    for (ids, field) in [
        (json!(too_many), "product_ids"),
        (json!([]), "product_ids"),
        (json!(["P-1", "bad id"]), "product_ids[1]"),
        (json!("P-1"), "product_ids"),
        (json!(["P-1", 2]), "product_ids[1]"),
    ] {
        let (s, b) = app
            .post_json("/api/v1/prices/batch", &json!({ "product_ids": ids }))
            .await;
        assert_error(s, &b, 422, "validation_error", Some(field));
    }
}

#[tokio::test]
async fn bad_path_and_query_input_is_refused() {
    let app = offline_app().await;
    let too_long = format!("/api/v1/price/{}", "a".repeat(65));
    for (path, field) in [
        (too_long.as_str(), "product_id"),
        ("/api/v1/price/P%201", "product_id"),
        ("/api/v1/price/P-1?is_prime_member=maybe", "is_prime_member"),
        ("/api/v1/price/P-1?colour=red", "colour"),
    ] {
        let (s, b) = app.get_json(path).await;
        assert_error(s, &b, 422, "validation_error", Some(field));
    }
    let (s, b) = app.get_json("/api/v1/nothing-here").await;
    assert_error(s, &b, 404, "not_found", None);
    let (status, b) = app
        .json("DELETE", "/api/v1/price", "application/json", Vec::new())
        .await;
    assert_error(status, &b, 405, "method_not_allowed", None);
}
