//! `POST /api/v1/publish-market-event`: validation, the answer, and what
//! reaches Redis (the stream and the channel).

use futures::StreamExt as _;
use serde_json::json;

use crate::helpers::spawn_app;

const PATH: &str = "/api/v1/publish-market-event";

async fn stream_len(app: &crate::helpers::TestApp) -> u64 {
    let mut conn = app.redis.connection().await;
    redis::cmd("XLEN")
        .arg(shared::keys::Keys::new(&app.namespace).event_stream())
        .query_async(&mut conn)
        .await
        .unwrap()
}

async fn last_stream_event(app: &crate::helpers::TestApp) -> serde_json::Value {
    let mut conn = app.redis.connection().await;
    let entries: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(shared::keys::Keys::new(&app.namespace).event_stream())
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let raw: String = redis::from_redis_value_ref(&entries.ids[0].map["event"]).unwrap();
    serde_json::from_str(&raw).unwrap()
}

#[tokio::test]
async fn an_event_is_appended_to_the_stream_and_published_on_the_channel() {
    let app = spawn_app().await;
    let client = redis::Client::open(app.redis.url()).unwrap();
    let mut sub = client.get_async_pubsub().await.unwrap();
    sub.subscribe("market_events").await.unwrap();
    let mut messages = sub.on_message();

    let (status, body) = app
        .post_json(
            PATH,
            &json!({"kind": "competitor_price_changed",
                    "data": {"competitor": "acme", "prices": {"P-1": 12.5, "P-2": 8.0}}}),
        )
        .await;

    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "Event published");
    assert_eq!(body["channel"], "market_events");
    assert_eq!(body["receivers"], 1);
    let id = body["event_id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 26, "a ULID");
    let on_channel: serde_json::Value =
        serde_json::from_slice(messages.next().await.unwrap().get_payload_bytes()).unwrap();
    assert_eq!(on_channel["event_id"], id);
    assert_eq!(on_channel["product_ids"], json!(["P-1", "P-2"]));
    assert_eq!(on_channel["durable"], true);
    let in_stream = last_stream_event(&app).await;
    assert_eq!(in_stream["event_id"], id);
    assert_eq!(in_stream["data"]["prices"]["P-1"], 12.5);
}

#[tokio::test]
async fn an_empty_body_and_the_legacy_string_mean_recalculate_all() {
    let app = spawn_app().await;
    for body in [Vec::new(), b"Recalculate_Triggered_v1".to_vec()] {
        let (status, answer) = app.post_raw(PATH, "text/plain", body).await;
        assert_eq!(status, 202, "{answer}");
        assert_eq!(last_stream_event(&app).await["kind"], "recalculate_all");
    }
    assert_eq!(stream_len(&app).await, 2);
}

#[tokio::test]
async fn bad_events_get_a_4xx_naming_the_field_and_are_never_published() {
    let app = spawn_app().await;
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "invalid_json"),
        (br#"{"kind":"price_war"}"#.to_vec(), 422, "kind"),
        (
            br#"{"kind":"demand_changed","data":{"demand":{"P-1":-2}}}"#.to_vec(),
            422,
            "data.demand.P-1",
        ),
        (
            br#"{"kind":"cost_changed","data":{"unit_cost":{}}}"#.to_vec(),
            422,
            "data",
        ),
        (
            br#"{"kind":"stock_changed","product_ids":["P-2"],"data":{"stock":{"P-1":3}}}"#
                .to_vec(),
            422,
            "product_ids",
        ),
    ];
    for (body, want, field) in cases {
        let (status, answer) = app.post_raw(PATH, "application/json", body.clone()).await;
        assert_eq!(status, want, "{}: {answer}", String::from_utf8_lossy(&body));
        if want == 422 {
            assert_eq!(answer["fields"], json!([field]), "{answer}");
        } else {
            assert_eq!(answer["error"], field);
        }
    }
    assert_eq!(stream_len(&app).await, 0, "a bad event was published");
}

#[tokio::test]
async fn more_than_ten_thousand_products_is_a_413() {
    let app = spawn_app().await;
    let demand: serde_json::Map<String, serde_json::Value> = (0..=10_000)
        .map(|i| (format!("P-{i}"), json!(1.0)))
        .collect();
    let (status, answer) = app
        .post_json(
            PATH,
            &json!({"kind": "demand_changed", "data": {"demand": demand}}),
        )
        .await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["fields"], json!(["product_ids"]));
    assert_eq!(stream_len(&app).await, 0);
}
