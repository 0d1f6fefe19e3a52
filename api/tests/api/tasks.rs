//! The task API over the real queue.

use queue::{JobState, NewJob, Noop};
use reqwest::Method;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn a_task_reports_its_status_and_an_unknown_id_is_a_404() {
    let app = spawn_app().await;
    let id = app
        .state
        .queues
        .push(NewJob::of(&Noop {}).unwrap())
        .await
        .unwrap()
        .id;

    let (s, body) = app.get_json(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(body["task_id"], id.as_str());
    assert_eq!(body["name"], "noop");
    assert_eq!(body["status"], "pending");
    assert_eq!(body["attempts"], 0);
    assert!(body["enqueued_at"].is_string());
    assert!(body["started_at"].is_null());

    let leased = app
        .state
        .queues
        .for_job("noop")
        .fetch("api-test-worker", 1)
        .await
        .unwrap()
        .remove(0);
    app.state
        .queues
        .for_job("noop")
        .complete(&leased, JobState::Succeeded, &json!({"updated_count": 3}))
        .await
        .unwrap();
    let (_, body) = app.get_json(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["worker"], "api-test-worker");
    assert_eq!(body["result"], json!({"updated_count": 3}));
    assert!(body["finished_at"].is_string());

    let (s, body) = app
        .get_json("/api/v1/tasks/01JZZZZZZZZZZZZZZZZZZZZZZZ")
        .await;
    assert_eq!((s, body["error"].as_str()), (404, Some("not_found")));
    let (s, body) = app.get_json("/api/v1/tasks/bad%20id").await;
    assert_eq!((s, body["fields"][0].as_str()), (422, Some("task_id")));
    // Malformed percent-encoding still gets the JSON error body.
    let (s, body) = app.get_json("/api/v1/tasks/%FF").await;
    assert_eq!((s, body["error"].as_str()), (422, Some("validation_error")));
}

#[tokio::test]
async fn pending_tasks_are_cancelled_running_ones_revoked_and_finished_ones_refused() {
    let app = spawn_app().await;
    let q = app.state.queues.for_job("noop");
    let running = q.push(NewJob::of(&Noop {}).unwrap()).await.unwrap().id;
    let pending = q.push(NewJob::of(&Noop {}).unwrap()).await.unwrap().id;
    let finished = q.push(NewJob::of(&Noop {}).unwrap()).await.unwrap().id;
    // FIFO: the first pushed is fetched first.
    let leased = q.fetch("w", 1).await.unwrap();
    assert_eq!(leased[0].id, running);
    let mut sub = app.state.queues.pool().pubsub().await.unwrap();
    sub.subscribe(app.state.control_channel.as_ref())
        .await
        .unwrap();

    let delete = |id: &str| app.send(Method::DELETE, &format!("/api/v1/tasks/{id}"), None);
    let resp = delete(&pending).await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "cancelled");

    // A running task: 202, and the worker holding it is told on the control channel.
    let resp = delete(&running).await;
    assert_eq!(resp.status(), 202);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "revoking");
    assert_eq!(body["status_url"], format!("/api/v1/tasks/{running}"));
    let msg = {
        use futures::StreamExt as _;
        let mut messages = sub.on_message();
        tokio::time::timeout(std::time::Duration::from_secs(30), messages.next())
            .await
            .expect("no control message")
            .unwrap()
    };
    let text: String = msg.get_payload().unwrap();
    assert_eq!(text, format!("revoke default {running}"));

    // Finished: nothing left to cancel.
    let l = q.fetch("w", 1).await.unwrap().remove(0);
    assert_eq!(l.id, finished);
    q.complete(&l, JobState::Succeeded, &serde_json::json!(null))
        .await
        .unwrap();
    let resp = delete(&finished).await;
    assert_eq!(resp.status(), 409);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "conflict");

    let resp = delete("NOPE").await;
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn a_queue_is_paused_and_resumed_by_name_and_an_unknown_one_is_a_404() {
    let token = "s3cret-admin-token-0123";
    let app = spawn_app_with(|s| s.admin_token = Some(token.into())).await;
    let q = app.state.queues.get("events").unwrap().clone();
    let bearer = format!("Bearer {token}");
    let post =
        |path: &str, authorization: Option<&str>| app.send(Method::POST, path, authorization);

    let anonymous = post("/api/v1/queues/events/pause", None).await;
    assert_eq!(anonymous.status(), 401);
    assert!(!q.depths().await.unwrap().paused);
    let wrong = post("/api/v1/queues/events/pause", Some("Bearer nope-nope-nope")).await;
    assert_eq!(wrong.status(), 403);

    let paused = post("/api/v1/queues/events/pause", Some(&bearer)).await;
    assert_eq!(paused.status(), 200);
    let body: serde_json::Value = paused.json().await.unwrap();
    assert_eq!(
        (body["queue"].as_str(), body["paused"].as_bool()),
        (Some("events"), Some(true))
    );
    assert!(q.depths().await.unwrap().paused);
    let (s, one) = app.get_json("/api/v1/queues/events").await;
    assert_eq!((s, one["paused"].as_bool()), (200, Some(true)));
    let (_, all) = app.get_json("/api/v1/queues").await;
    assert_eq!(all["queues"]["events"]["paused"], true);
    assert_eq!(all["queues"]["bulk"]["paused"], false);

    let resumed = post("/api/v1/queues/events/resume", Some(&bearer)).await;
    assert_eq!(resumed.status(), 200);
    assert!(!q.depths().await.unwrap().paused);

    let unknown = post("/api/v1/queues/nosuch/pause", Some(&bearer)).await;
    assert_eq!(unknown.status(), 404);
    let body: serde_json::Value = unknown.json().await.unwrap();
    assert_eq!(body["error"], "not_found");
    let (s, body) = app.get_json("/api/v1/queues/nosuch").await;
    assert_eq!((s, body["error"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn the_dead_set_is_listed_and_a_dead_task_can_be_requeued() {
    let app = spawn_app().await;
    let q = app.state.queues.for_job("noop");
    let id = q.push(NewJob::of(&Noop {}).unwrap()).await.unwrap().id;
    let leased = q.fetch("w", 1).await.unwrap().remove(0);
    q.bury(&leased, "permanent: the feed said 404")
        .await
        .unwrap();

    let (s, body) = app.get_json("/api/v1/tasks/dead?limit=10").await;
    assert_eq!(s, 200);
    let tasks = body["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["task_id"], id.as_str());
    assert_eq!(tasks[0]["status"], "failed");
    assert_eq!(tasks[0]["error"], "permanent: the feed said 404");
    assert_eq!(tasks[0]["attempts"], 1);

    let retry = format!("/api/v1/tasks/{id}/retry");
    let resp = app.send(Method::POST, &retry, None).await;
    assert_eq!(resp.status(), 202);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status_url"], format!("/api/v1/tasks/{id}"));
    let (_, status) = app.get_json(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(
        (status["status"].as_str(), status["attempts"].as_u64()),
        (Some("pending"), Some(0))
    );
    let (_, body) = app.get_json("/api/v1/tasks/dead").await;
    assert!(body["tasks"].as_array().unwrap().is_empty());

    // Only dead tasks can be re-enqueued.
    let resp = app.send(Method::POST, &retry, None).await;
    assert_eq!(resp.status(), 409);
    let (s, body) = app.get_json("/api/v1/tasks/dead?limit=0").await;
    assert_eq!((s, body["fields"][0].as_str()), (422, Some("limit")));
}

#[tokio::test]
async fn queue_depths_are_reported_by_state() {
    let app = spawn_app().await;
    let q = app.state.queues.for_job("noop");
    for _ in 0..3 {
        q.push(NewJob::of(&Noop {}).unwrap()).await.unwrap();
    }
    q.push(
        NewJob::of(&Noop {})
            .unwrap()
            .countdown(std::time::Duration::from_secs(60)),
    )
    .await
    .unwrap();
    q.fetch("w", 1).await.unwrap();

    let (s, body) = app.get_json("/api/v1/queues").await;
    assert_eq!(s, 200);
    let names: Vec<&str> = body["queues"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(names, ["bulk", "default", "events"]);
    let d = &body["queues"]["default"];
    assert_eq!(
        (
            d["pending"].as_u64(),
            d["delayed"].as_u64(),
            d["running"].as_u64()
        ),
        (Some(2), Some(1), Some(1))
    );
}

#[tokio::test]
async fn task_endpoints_answer_503_when_redis_is_down() {
    let mut app = spawn_app().await;
    app.redis.stop();
    let (s, body) = app
        .get_json("/api/v1/tasks/01JZZZZZZZZZZZZZZZZZZZZZZZ")
        .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (503, Some("service_unavailable"))
    );
    let (s, _) = app.get_json("/api/v1/queues").await;
    assert_eq!(s, 503);
}

#[tokio::test]
async fn recalculate_all_answers_at_once_and_coalesces_triggers() {
    let app = spawn_app_with(|s| s.recalc_retry.max_attempts = 3).await;
    let (s1, first) = app
        .post_raw(
            "/api/v1/tasks/recalculate-all",
            "application/json",
            Vec::new(),
        )
        .await;
    let (s2, second) = app
        .post_raw(
            "/api/v1/tasks/recalculate-all",
            "application/json",
            Vec::new(),
        )
        .await;

    assert_eq!((s1, s2), (202, 202));
    assert_eq!(first["joined"], false);
    assert_eq!(second["joined"], true);
    assert_eq!(first["task_id"], second["task_id"]);
    let id = first["task_id"].as_str().unwrap();
    assert_eq!(first["status_url"], format!("/api/v1/tasks/{id}"));
    let (_, status) = app.get_json(&format!("/api/v1/tasks/{id}")).await;
    assert_eq!(
        (status["name"].as_str(), status["status"].as_str()),
        (Some("recalculate_all_prices"), Some("pending"))
    );
    // The configured retry policy travels with the job.
    assert_eq!(status["max_attempts"], 3);
}

#[tokio::test]
async fn admin_endpoints_need_the_bearer_token_when_one_is_set() {
    let token = "s3cret-admin-token-0123";
    let app = spawn_app_with(|s| s.admin_token = Some(token.into())).await;
    let bearer = format!("Bearer {token}");
    let trigger = |authorization: Option<&str>| {
        app.send(Method::POST, "/api/v1/tasks/recalculate-all", authorization)
    };

    let none = trigger(None).await;
    assert_eq!(none.status(), 401);
    let body: serde_json::Value = none.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    let wrong = trigger(Some("Bearer not-the-token-at-all")).await;
    assert_eq!(wrong.status(), 403);
    let right = trigger(Some(&bearer)).await;
    assert_eq!(right.status(), 202);
    // The scheme is case-insensitive; another scheme is no bearer token.
    let lower = trigger(Some(&format!("bearer {token}"))).await;
    assert_eq!(lower.status(), 202);
    let basic = trigger(Some(&format!("Basic {token}"))).await;
    assert_eq!(basic.status(), 401);

    // Cancel and re-enqueue are guarded too; reads are not.
    let id: String = right.json::<serde_json::Value>().await.unwrap()["task_id"]
        .as_str()
        .unwrap()
        .into();
    let task = format!("/api/v1/tasks/{id}");
    let cancel = app.send(Method::DELETE, &task, None).await;
    assert_eq!(cancel.status(), 401);
    let retry = app.send(Method::POST, &format!("{task}/retry"), None).await;
    assert_eq!(retry.status(), 401);
    let (s, _) = app.get_json(&task).await;
    assert_eq!(s, 200);
    let ok = app.send(Method::DELETE, &task, Some(&bearer)).await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn the_live_workers_are_listed_with_what_they_run() {
    let app = spawn_app().await;
    let (s, body) = app.get_json("/api/v1/workers").await;
    assert_eq!(
        (s, body["workers"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let report = queue::workers::WorkerReport {
        id: "host-1-ABCDEF".into(),
        host: "host".into(),
        pid: 1,
        version: "1.2.3".into(),
        started_at: chrono::Utc::now(),
        queues: vec!["events".into(), "bulk".into()],
        concurrency: 8,
        busy: 1,
        jobs: vec![queue::workers::HeldJob {
            id: "01JOB".into(),
            job_type: "recalculate_all_prices".into(),
            queue: "bulk".into(),
            started_at: Some(chrono::Utc::now()),
        }],
        schedules: vec![queue::schedule::ScheduleDef {
            name: "recalculate_all".into(),
            job: "recalculate_all_prices".into(),
            queue: "bulk".into(),
            expression: "0 */15 * * * *".into(),
            args: json!({}),
            missed: queue::schedule::Missed::Skip,
        }],
    };
    app.state
        .workers
        .beat(&report, std::time::Duration::from_secs(30))
        .await
        .unwrap();

    let (s, body) = app.get_json("/api/v1/workers").await;

    assert_eq!(s, 200);
    let w = &body["workers"][0];
    assert_eq!(w["id"], "host-1-ABCDEF");
    assert_eq!(w["queues"], json!(["events", "bulk"]));
    assert_eq!(
        (w["concurrency"].as_u64(), w["busy"].as_u64()),
        (Some(8), Some(1))
    );
    assert_eq!(w["jobs"][0]["type"], "recalculate_all_prices");
    assert!(w["last_heartbeat"].is_string() && w["started_at"].is_string());

    // Its schedule: defined, never run yet, next run on a quarter hour.
    let (s, body) = app.get_json("/api/v1/schedules").await;
    assert_eq!(s, 200);
    let sched = &body["schedules"][0];
    assert_eq!(
        (
            sched["name"].as_str(),
            sched["job"].as_str(),
            sched["queue"].as_str()
        ),
        (
            Some("recalculate_all"),
            Some("recalculate_all_prices"),
            Some("bulk")
        )
    );
    assert_eq!(
        (sched["workers"].as_u64(), &sched["last_run"]),
        (Some(1), &json!(null))
    );
    let next: chrono::DateTime<chrono::Utc> = sched["next_run"].as_str().unwrap().parse().unwrap();
    assert!(next > chrono::Utc::now());
    assert_eq!(chrono::Timelike::minute(&next) % 15, 0);
    assert_eq!(chrono::Timelike::second(&next), 0);
}
