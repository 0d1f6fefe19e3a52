//! The OpenAPI document, generated from the handlers' annotations.
//!
//! Served at `/openapi.json` and browsable at `/docs`. A test checks that
//! every route of the router appears here.

use utoipa::OpenApi;

use crate::error::ErrorBody;
use crate::model::{BatchRequest, BatchResponse, PriceDetail, PriceRequest, PriceSource};
use crate::routes::{dashboard, events, ops, price, queues, tasks, workers};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Dynamic pricing API",
        description = "Cache-aside price reads over a Redis cache and a SQL catalog, and the job queue behind them.",
    ),
    paths(
        price::post_price,
        price::get_price,
        price::post_batch,
        shared::ops::health,
        shared::ops::ready,
        shared::ops::metrics,
        tasks::status,
        tasks::cancel,
        tasks::retry,
        tasks::dead,
        queues::list,
        queues::one,
        queues::pause,
        queues::resume,
        tasks::recalculate_all,
        events::publish,
        workers::list,
        workers::schedules,
        dashboard::overview,
        dashboard::jobs,
    ),
    components(schemas(
        PriceRequest<'_>, PriceDetail, PriceSource, BatchRequest, BatchResponse, ErrorBody,
        ops::Health, ops::Readiness, ops::Check,
        tasks::TaskStatus, tasks::DeadList, tasks::Accepted, tasks::Cancelled, tasks::Revoking, tasks::Triggered, queues::QueueDepths, queues::QueueDetail,
        queue::JobState, queue::Depths,
        events::EventPublished,
        workers::WorkerList, queue::workers::WorkerInfo, queue::workers::WorkerReport, queue::workers::HeldJob,
        workers::ScheduleList, workers::ScheduleStatus, queue::schedule::ScheduleDef, queue::schedule::Missed, queue::LastRun,
        dashboard::Overview, dashboard::QueueOverview, dashboard::WorkersSummary, dashboard::JobList,
        queue::Throughput, shared::event_bus::StreamInfo, shared::event_bus::GroupInfo, shared::event_bus::StreamEntry, shared::events::EventKind,
    )),
    tags(
        (name = "prices", description = "Price reads"),
        (name = "tasks", description = "Job status, the dead set, cancel and re-enqueue"),
        (name = "queues", description = "Queue depths; pause and resume"),
        (name = "events", description = "Market events for the listener"),
        (name = "workers", description = "The live worker registry and the schedules"),
        (name = "dashboard", description = "The JSON behind the dashboard at /dashboard: the overview and pages of jobs by state"),
        (name = "operations", description = "Health, readiness and metrics"),
    )
)]
pub struct ApiDoc;
