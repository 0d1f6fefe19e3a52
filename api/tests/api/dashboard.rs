//! The dashboard's JSON endpoints and pages over a real redis-server: the
//! overview against the queue endpoints, job pages with their cursors, a
//! 100,000-job backlog listed without keyspace scans, the pages' security
//! headers, and the refusal of cross-site mutating calls.

use queue::{NewJob, Noop};
use serde_json::{Value, json};

use crate::helpers::{TestApp, offline_app_with, spawn_app, spawn_app_with};

const TOKEN: &str = "dashboard-test-token-0123";

/// Pushes a job whose arguments and error (once buried) carry markup, and
/// buries it: call it while the queue is empty (it fetches the oldest job).
pub async fn bury_hostile_job(app: &TestApp) -> String {
    let q = app.state.queues.for_job("noop");
    let mut job = NewJob::of(&Noop {}).unwrap();
    job.args = json!({"note": "<script>window.__xss=1</script>", "img": "<img src=x onerror=\"window.__xss=1\">"});
    job.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    let id = q.push(job).await.unwrap().id;
    let leased = q.fetch("dashboard-test-worker", 1).await.unwrap().remove(0);
    assert_eq!(leased.id, id);
    q.bury(
        &leased,
        "permanent: <script>window.__xss=2</script> & \"quoted\"",
    )
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn the_overview_reports_what_the_queue_endpoints_report() {
    let app = spawn_app().await;
    bury_hostile_job(&app).await;
    for _ in 0..3 {
        app.state
            .queues
            .push(NewJob::of(&Noop {}).unwrap())
            .await
            .unwrap();
    }
    let (s, _) = app
        .post_json(
            "/api/v1/publish-market-event",
            &json!({"kind": "demand_changed", "product_ids": ["P-1", "P-2"], "data": {"demand": {"P-1": 1.2, "P-2": 0.8}}}),
        )
        .await;
    assert_eq!(s, 202);

    let (s, o) = app.get_json("/api/v1/dashboard/overview").await;
    assert_eq!(s, 200, "{o}");
    let (_, queues) = app.get_json("/api/v1/queues").await;
    for q in o["queues"].as_array().unwrap() {
        let name = q["name"].as_str().unwrap();
        assert_eq!(q["depths"], queues["queues"][name], "queue {name}");
    }
    let default = o["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "default")
        .expect("default queue");
    assert_eq!(default["depths"]["pending"], 3);
    assert_eq!(default["depths"]["dead"], 1);
    assert_eq!(default["depths"]["started_total"], 1);
    assert!(default["throughput"]["oldest_pending_secs"].is_number());
    assert_eq!(o["workers"], json!({"live": 0, "slots": 0, "busy": 0}));
    let events = &o["events"];
    assert_eq!(events["length"], 1);
    assert_eq!(events["recent"][0]["kind"], "demand_changed");
    assert_eq!(events["recent"][0]["products"], 2);
    assert_eq!(events["recent"][0]["product_ids"], json!(["P-1", "P-2"]));
}

#[tokio::test]
async fn job_pages_follow_their_cursor_and_bad_queries_name_the_field() {
    let app = spawn_app().await;
    let dead = bury_hostile_job(&app).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            app.state
                .queues
                .push(NewJob::of(&Noop {}).unwrap())
                .await
                .unwrap()
                .id,
        );
    }
    let (s, p1) = app
        .get_json("/api/v1/queues/default/jobs?state=pending&limit=3")
        .await;
    assert_eq!(s, 200, "{p1}");
    let listed = |p: &Value| -> Vec<String> {
        p["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["task_id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(listed(&p1), &ids[..3], "next to run first");
    assert_eq!(p1["set_size"], 5);
    let cursor = p1["next_cursor"].as_u64().expect("more");
    let (_, p2) = app
        .get_json(&format!(
            "/api/v1/queues/default/jobs?state=pending&limit=3&cursor={cursor}"
        ))
        .await;
    assert_eq!(listed(&p2), &ids[3..]);
    assert!(p2["next_cursor"].is_null());

    let (_, d) = app
        .get_json("/api/v1/queues/default/jobs?state=failed")
        .await;
    assert_eq!(listed(&d), vec![dead.clone()]);
    assert_eq!(
        d["jobs"][0]["error"],
        "permanent: <script>window.__xss=2</script> & \"quoted\""
    );
    // The detail carries the arguments, untouched, and the trace id.
    let (_, t) = app.get_json(&format!("/api/v1/tasks/{dead}")).await;
    assert_eq!(t["args"]["note"], "<script>window.__xss=1</script>");
    assert_eq!(t["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");

    for (query, field) in [
        ("state=exploded", "state"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("cursor=-1", "cursor"),
        ("sort=asc", "sort"),
    ] {
        let (s, body) = app
            .get_json(&format!("/api/v1/queues/default/jobs?{query}"))
            .await;
        assert_eq!(s, 422, "{query}: {body}");
        assert_eq!(body["fields"], json!([field]), "{query}: {body}");
    }
    let (s, body) = app.get_json("/api/v1/queues/nosuch/jobs").await;
    assert_eq!((s, body["error"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn a_page_of_a_hundred_thousand_job_backlog_is_bounded_work_with_no_keyspace_scan() {
    let app = spawn_app().await;
    let q = app.state.queues.for_job("noop");
    // In pipelines of 500: the app's Redis timeout is short (300 ms) and a
    // loaded machine runs 10,000 scripts in one pipeline slower than that.
    let jobs: Vec<NewJob> = (0..500).map(|_| NewJob::of(&Noop {}).unwrap()).collect();
    let mut first = None;
    let mut last = None;
    for _ in 0..200 {
        let pushed = q.push_bulk(&jobs).await.unwrap();
        first.get_or_insert_with(|| pushed[0].id.clone());
        last = Some(pushed[pushed.len() - 1].id.clone());
    }
    let mut conn = app.redis.connection().await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();

    let (s, o) = app.get_json("/api/v1/dashboard/overview").await;
    assert_eq!(s, 200);
    let default = o["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "default")
        .unwrap();
    assert_eq!(default["depths"]["pending"], 100_000);
    let (s, head) = app
        .get_json("/api/v1/queues/default/jobs?state=pending")
        .await;
    assert_eq!(s, 200);
    assert_eq!(head["jobs"].as_array().unwrap().len(), 50);
    assert_eq!(head["jobs"][0]["task_id"].as_str(), first.as_deref());
    assert_eq!(head["set_size"], 100_000);
    // The very end of the backlog, from the far end of the list.
    let (_, tail) = app
        .get_json("/api/v1/queues/default/jobs?state=pending&cursor=99950")
        .await;
    assert_eq!(tail["jobs"].as_array().unwrap().len(), 50);
    assert_eq!(tail["jobs"][49]["task_id"].as_str(), last.as_deref());
    assert!(tail["next_cursor"].is_null());
    // A state that shares its set, and finds nothing in it, stops at its budget.
    let (_, none) = app
        .get_json("/api/v1/queues/default/jobs?state=succeeded")
        .await;
    assert!(none["jobs"].as_array().unwrap().is_empty());

    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    // (HGETALL reads the few counters of `stats`; nothing reads a whole per-job hash.)
    for scan in [
        "keys", "scan", "hscan", "zscan", "sscan", "hkeys", "hvals", "smembers",
    ] {
        assert!(
            !stats.contains(&format!("cmdstat_{scan}:")),
            "the dashboard ran {scan}:\n{stats}"
        );
    }
    // Every LRANGE returned at most one page.
    assert!(stats.contains("cmdstat_lrange:calls=2,"), "{stats}");
}

#[tokio::test]
async fn the_pages_are_served_from_the_binary_with_a_strict_policy() {
    // In-process, no Redis: the pages need none.
    let app =
        offline_app_with(|s| s.jaeger_ui_url = Some("http://jaeger.test:16686/\"><b".into())).await;
    for (path, kind) in [
        ("/dashboard", "text/html"),
        ("/dashboard/assets/app.js", "text/javascript"),
        ("/dashboard/assets/app.css", "text/css"),
    ] {
        let (status, h, _) = app.send("GET", path, &[], Vec::new()).await;
        assert_eq!(status, 200, "{path}");
        assert!(
            h["content-type"].to_str().unwrap().starts_with(kind),
            "{path}"
        );
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["x-frame-options"], "DENY");
    }
    let (_, html) = app.get_text("/dashboard").await;
    assert!(
        html.contains(r#"content="http://jaeger.test:16686/&quot;&gt;&lt;b""#),
        "JAEGER_UI_URL escaped into its attribute: {html}"
    );
}

#[tokio::test]
async fn mutating_calls_from_another_site_are_refused_even_with_the_token() {
    let app = spawn_app_with(|s| s.admin_token = Some(TOKEN.into())).await;
    let host = app.base.trim_start_matches("http://").to_string();
    let pause = |headers: Vec<(&'static str, String)>| {
        let mut req = app
            .client
            .post(app.url("/api/v1/queues/default/pause"))
            .bearer_auth(TOKEN);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    for headers in [
        vec![("sec-fetch-site", "cross-site".to_string())],
        vec![("sec-fetch-site", "same-site".to_string())],
        vec![("origin", "http://evil.example".to_string())],
        vec![("origin", "null".to_string())],
    ] {
        let (s, body) = pause(headers.clone()).await;
        assert_eq!(
            (s, body["error"].as_str()),
            (403, Some("cross_site")),
            "{headers:?}"
        );
    }
    assert!(
        !app.state
            .queues
            .get("default")
            .unwrap()
            .depths()
            .await
            .unwrap()
            .paused
    );
    // The dashboard's own calls (same origin), and clients that are not browsers.
    for headers in [
        vec![
            ("sec-fetch-site", "same-origin".to_string()),
            ("origin", format!("http://{host}")),
        ],
        vec![("origin", format!("http://{host}"))],
        vec![],
    ] {
        let (s, body) = pause(headers.clone()).await;
        assert_eq!(s, 200, "{headers:?}: {body}");
    }
    // Reads stay open: a page elsewhere cannot read them anyway (no CORS).
    let resp = app
        .client
        .get(app.url("/api/v1/dashboard/overview"))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}
