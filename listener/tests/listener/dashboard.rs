//! The dashboard in a real headless Chromium (Debian's `chromium`, driven
//! through `chromedriver` over WebDriver), over the whole stack: an api,
//! a worker and a listener on a real redis-server and SQLite catalog.
//!
//! It checks that the overview shows the depths the API reports, that a
//! job's arguments and error render as text (no markup runs), that retrying
//! a dead job needs the admin token and takes it off the dead list, that a
//! lost Redis raises the banner and its return clears it, and it saves a
//! screenshot of the overview (`DASHBOARD_SCREENSHOT_DIR`, default the
//! target's temporary folder; the image in docs/ comes from here).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use queue::{JobState, NewJob, Noop, Queues};
use serde_json::{Value, json};
use testkit::{RedisServer, seeded_store};

use crate::helpers::*;

const TOKEN: &str = "browser-test-admin-token";
const JAEGER: &str = "http://jaeger.example:16686";
const HOSTILE_ERROR: &str =
    "permanent: <script>window.__xss=2</script><img src=x onerror=\"window.__xss=3\">";

/// A chromedriver process on a free loopback port, killed by PID on drop.
struct Chromedriver {
    child: Child,
    port: u16,
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn program(var: &str, default: &str) -> String {
    let p = std::env::var(var).unwrap_or_else(|_| default.to_string());
    assert!(
        std::path::Path::new(&p).exists(),
        "{p} is missing: install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver), or set {var}"
    );
    p
}

async fn start_chromedriver() -> Chromedriver {
    let driver = program("CHROMEDRIVER", "/usr/bin/chromedriver");
    let port = testkit::free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let status = format!("http://127.0.0.1:{port}/status");
    let client = reqwest::Client::new();
    eventually(LONG, "chromedriver answers", || async {
        client
            .get(&status)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    Chromedriver { child, port }
}

async fn browser(driver: &Chromedriver, profile: &std::path::Path) -> Client {
    let chromium = program("CHROMIUM", "/usr/bin/chromium");
    // As the machine's notes say: headless, and no background networking
    // (the machine's network is closed; Chromium would keep trying).
    let caps = json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                "--window-size=1400,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
        }
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session in chromium")
}

async fn text_of(c: &Client, css: &str) -> Option<String> {
    c.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

/// Clicks the element `css` names; again if the page's 2 s refresh
/// replaced it between the find and the click.
async fn click(c: &Client, css: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let res = match c.find(Locator::Css(css)).await {
            Ok(e) => e.click().await.map(|_| ()),
            Err(e) => Err(e),
        };
        match res {
            Ok(()) => return,
            Err(e) if tokio::time::Instant::now() >= deadline => panic!("cannot click {css}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Waits until the text of `css` contains `needle`.
async fn wait_for_text(c: &Client, css: &str, needle: &str) {
    eventually(LONG, &format!("{css} shows {needle:?}"), || async {
        text_of(c, css).await.is_some_and(|t| t.contains(needle))
    })
    .await;
}

async fn visible(c: &Client, css: &str) -> bool {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.is_displayed().await.unwrap_or(false),
        Err(_) => false,
    }
}

async fn depth(api: &str, queue: &str, field: &str) -> u64 {
    let q: Value = reqwest::get(format!("{api}/api/v1/queues/{queue}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    q[field].as_u64().unwrap()
}

/// A dead job whose arguments and error carry markup.
async fn bury_hostile_job(queues: &Queues) -> String {
    let q = queues.for_job("noop");
    let mut job = NewJob::of(&Noop {}).unwrap();
    job.args = json!({"note": "<script>window.__xss=1</script>"});
    job.traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    let id = q.push(job).await.unwrap().id;
    let leased = q.fetch("browser-test", 1).await.unwrap().remove(0);
    assert_eq!(leased.id, id, "the queue was empty before");
    assert!(q.bury(&leased, HOSTILE_ERROR).await.unwrap());
    id
}

fn screenshot_dir() -> PathBuf {
    std::env::var_os("DASHBOARD_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
}

#[tokio::test]
async fn the_dashboard_in_chromium_shows_the_queues_and_retries_a_dead_job_with_the_token() {
    let mut redis = RedisServer::start().await;
    let (_store, _dir, db_url) = seeded_store(50).await;
    // The worker leaves the default queue alone, so its depths hold still.
    let stack = start_api_and_worker_with(
        &redis,
        &db_url,
        |a| {
            a.admin_token = Some(TOKEN.into());
            a.jaeger_ui_url = Some(JAEGER.into());
        },
        |w| w.consume = queue::Consume::Strict(vec!["events".into(), "bulk".into()]),
    )
    .await;
    let listener = start_listener(settings(&redis, &db_url)).await;
    let api = format!("http://127.0.0.1:{}", stack.port);
    let queues = queues(&redis);
    let http = reqwest::Client::new();

    let dead = bury_hostile_job(&queues).await;
    for _ in 0..12 {
        queues.push(NewJob::of(&Noop {}).unwrap()).await.unwrap();
    }
    for (i, kind) in ["demand_changed", "stock_changed"].iter().enumerate() {
        let field = if *kind == "demand_changed" {
            "demand"
        } else {
            "stock"
        };
        let body = json!({"kind": kind, "product_ids": ["P-1", "P-2"], "data": {field: {"P-1": 3 + i, "P-2": 5}}});
        let r = http
            .post(format!("{api}/api/v1/publish-market-event"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let r = http
        .post(format!("{api}/api/v1/tasks/recalculate-all"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);

    let driver = start_chromedriver().await;
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver, profile.path()).await;
    c.goto(&format!("{api}/dashboard")).await.unwrap();

    // The overview shows the depths the API reports.
    eventually(LONG, "the overview renders", || async {
        text_of(&c, r#"tr[data-queue="default"] a[data-depth="pending"]"#)
            .await
            .is_some()
    })
    .await;
    for (state, field) in [
        ("pending", "pending"),
        ("failed", "dead"),
        ("running", "running"),
    ] {
        let want = depth(&api, "default", field).await.to_string();
        let css = format!(r#"tr[data-queue="default"] a[data-depth="{state}"]"#);
        assert_eq!(
            text_of(&c, &css).await.as_deref(),
            Some(want.as_str()),
            "{state}"
        );
    }
    assert_eq!(depth(&api, "default", "pending").await, 12);
    // The listener's group appears, the worker registers, the recalculation runs.
    eventually(
        LONG,
        "the events, the worker and the recalculation show",
        || async {
            let group = text_of(&c, "main").await.unwrap_or_default();
            group.contains("listeners")
                && group.contains("stock_changed")
                && text_of(&c, "#workers-summary")
                    .await
                    .is_some_and(|t| t.starts_with("1 live"))
                && text_of(&c, r#"tr[data-queue="bulk"]"#)
                    .await
                    .is_some_and(|t| t.contains("1 / 0"))
        },
    )
    .await;
    // Rates need two samples, a second apart: let a poll or two pass.
    wait_for_text(&c, "main", "Rates over the last").await;
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(dir.join("dashboard-overview.png"), &png).unwrap();

    // To the dead list, and the job's detail: its markup is shown as text.
    click(&c, r#"tr[data-queue="default"] a[data-depth="failed"]"#).await;
    let row = format!(r#"tr[data-task="{dead}"]"#);
    wait_for_text(&c, &row, "<script>window.__xss=2</script>").await;
    click(&c, &format!("{row} a")).await;
    wait_for_text(&c, "#job-error", "permanent").await;
    assert_eq!(
        text_of(&c, "#job-error").await.as_deref(),
        Some(HOSTILE_ERROR)
    );
    let args = text_of(&c, "pre.json").await.unwrap();
    assert!(
        args.contains(r#""note": "<script>window.__xss=1</script>""#),
        "{args}"
    );
    let injected = c
        .execute(
            "return [window.__xss === undefined, document.scripts.length, document.images.length];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        injected,
        json!([true, 1, 0]),
        "markup from job data ran or rendered"
    );
    let trace = match c.find(Locator::Css("#trace-link")).await {
        Ok(t) => t,
        Err(e) => panic!(
            "no trace link ({e}) in: {}",
            text_of(&c, "#job").await.unwrap_or_default()
        ),
    };
    assert_eq!(
        trace.attr("href").await.unwrap().as_deref(),
        Some(format!("{JAEGER}/trace/4bf92f3577b34da6a3ce929d0e0e4736").as_str())
    );
    std::fs::write(dir.join("dashboard-job.png"), c.screenshot().await.unwrap()).unwrap();

    // Retry without the token: refused, and the job stays dead.
    click(&c, "#retry").await;
    wait_for_text(&c, "#flash", "needs the admin token").await;
    assert_eq!(depth(&api, "default", "dead").await, 1);
    // With the token (kept in this tab's session only): queued again.
    c.find(Locator::Id("token-value"))
        .await
        .unwrap()
        .send_keys(TOKEN)
        .await
        .unwrap();
    click(&c, "#token-save").await;
    let stored = c
        .execute(
            "return [sessionStorage.getItem('adminToken'), localStorage.length, document.cookie];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stored, json!([TOKEN, 0, ""]));
    click(&c, "#retry").await;
    eventually(LONG, "the job leaves the dead set", || async {
        queues
            .get("default")
            .unwrap()
            .status(&dead)
            .await
            .unwrap()
            .unwrap()
            .record
            .state
            == JobState::Pending
    })
    .await;
    wait_for_text(&c, "#job-status", "pending").await;
    assert_eq!(depth(&api, "default", "dead").await, 0);
    c.goto(&format!("{api}/dashboard#/jobs?queue=default&state=failed"))
        .await
        .unwrap();
    wait_for_text(&c, "main", "No failed jobs.").await;

    // The workers page lists the live worker.
    c.goto(&format!("{api}/dashboard#/workers")).await.unwrap();
    wait_for_text(&c, "tr[data-worker]", "events, bulk").await;

    // Pause and resume a queue from the overview, with the token.
    c.goto(&format!("{api}/dashboard#/")).await.unwrap();
    let bulk = queues.get("bulk").unwrap().clone();
    click(&c, r#"tr[data-queue="bulk"] button"#).await;
    eventually(LONG, "bulk pauses", || async {
        bulk.depths().await.unwrap().paused
    })
    .await;
    wait_for_text(&c, r#"tr[data-queue="bulk"]"#, "paused").await;
    click(&c, r#"tr[data-queue="bulk"] button"#).await;
    eventually(LONG, "bulk resumes", || async {
        !bulk.depths().await.unwrap().paused
    })
    .await;

    // Redis goes away: a banner, the last page kept; it comes back: gone.
    c.goto(&format!("{api}/dashboard#/")).await.unwrap();
    wait_for_text(&c, "#workers-summary", "live").await;
    redis.stop();
    eventually(LONG, "the banner shows", || async {
        visible(&c, "#banner").await
    })
    .await;
    wait_for_text(&c, "#banner", "Redis unreachable").await;
    assert!(
        text_of(&c, r#"tr[data-queue="default"]"#).await.is_some(),
        "the page went blank"
    );
    redis.restart().await;
    eventually(LONG, "the banner goes", || async {
        !visible(&c, "#banner").await
    })
    .await;

    c.close().await.unwrap();
    drop(driver);
    listener.stop().await;
    stack.stop().await;
}
