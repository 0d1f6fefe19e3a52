//! Finished spans waiting for the exporter ([`super::export`]): each
//! thread encodes the spans it finishes ([`super::encode`]) into a buffer
//! of its own, and the export thread takes every buffer at once.
//!
//! Why per thread: with one queue that every request thread pushed into,
//! each push moved the queue's lock and the span's bytes between the
//! cores (about 1% of a traced cache hit's CPU, at the unlock), the span's
//! strings were freed by another thread than the one that allocated them,
//! and the export thread walked every span again to encode it. Now a push
//! takes a lock that only its own thread and, once a batch, the export
//! thread touch; the span is written once, as protobuf, and freed where it
//! was made; and an export request is those bytes behind one header.
//!
//! A batch's buffer is made big enough for a full batch of the api's spans
//! and, once the export thread has sent it, handed back ([`Queue::recycle`])
//! for another: a buffer that grew while filling, or a new one for every
//! batch, made request threads copy and page-fault (about 12% of a traced
//! cache hit's span cost on the request thread, `benches/spans.rs`).
//!
//! The bound (`OTEL_BSP_MAX_QUEUE_SIZE`) is global. So that it costs no
//! shared write per span, a thread reserves room a few spans at a time
//! ([`credit_for`]).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::encode;
use super::lock;
use super::record::SpanRecord;

/// Most room in the queue a thread reserves at a time: it takes from the
/// shared count once per this many spans.
const MAX_CREDIT: usize = 64;

/// Room in a batch's buffer per span before it grows: 512 of the api's
/// spans (the default `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`) take about 90 KiB,
/// so a buffer for 512 is 128 KiB.
const SPAN_BYTES: usize = 256;

/// Sent batches' buffers kept for reuse, at most.
const SPARE_BUFFERS: usize = 8;

/// Room a thread reserves at a time in a queue of `max` spans: at most
/// [`MAX_CREDIT`], and at most a 256th of the queue, so that room reserved
/// by threads that then go idle never keeps another from queueing (a
/// thread holds less than one step unused; at the smallest queue, 512,
/// steps are of 2).
fn credit_for(max: usize) -> usize {
    (max / 256).clamp(1, MAX_CREDIT)
}

/// Encoded spans, at most a batch's worth (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`):
/// one export request.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// [`encode::span_entry`]s, one after the other.
    pub(crate) bytes: Vec<u8>,
    pub(crate) spans: usize,
}

/// One thread's spans, waiting for the export thread.
#[derive(Debug, Default)]
struct Buffer {
    /// Full batches.
    full: Vec<Batch>,
    /// The batch being filled.
    current: Batch,
    /// Room reserved in the queue and not used yet.
    credit: usize,
}

/// A thread's [`Buffer`]; the queue's registry and the thread hold it.
#[derive(Debug, Default)]
struct Shard(Mutex<Buffer>);

/// Tells queues apart in a thread's list of its shards.
static NEXT_QUEUE: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's shard of each queue it has pushed into (one, outside
    /// tests), by queue id.
    static SHARDS: RefCell<Vec<(u64, Arc<Shard>)>> = const { RefCell::new(Vec::new()) };
}

/// What a push did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// Queued, and it completed a batch: time to wake the export thread.
    BatchFull,
    /// Dropped: the queue is full.
    Dropped,
}

/// The spans every thread has finished and the export thread not yet taken.
pub(crate) struct Queue {
    id: u64,
    /// Every thread's shard. A shard whose thread has ended is removed by
    /// the next [`Queue::take`], which empties it.
    shards: Mutex<Vec<Arc<Shard>>>,
    /// For a thread whose thread-locals are being destroyed (or, which
    /// cannot happen today, a push from inside a push).
    fallback: Arc<Shard>,
    max: usize,
    /// Spans per batch, at most.
    batch: usize,
    /// [`credit_for`] `max`.
    credit: usize,
    /// Spans waiting plus room reserved by threads: at most `max`.
    reserved: AtomicUsize,
    /// Empty buffers of sent batches, for new ones.
    spare: Mutex<Vec<Vec<u8>>>,
}

impl Queue {
    /// A queue of at most `max` spans, sent in batches of at most `batch`.
    pub(crate) fn new(max: usize, batch: usize) -> Self {
        let batch = batch.clamp(1, max.max(1));
        let fallback = Arc::new(Shard::default());
        Self {
            id: NEXT_QUEUE.fetch_add(1, Ordering::Relaxed),
            shards: Mutex::new(vec![fallback.clone()]),
            fallback,
            max,
            batch,
            credit: credit_for(max),
            reserved: AtomicUsize::new(0),
            spare: Mutex::new(Vec::new()),
        }
    }

    /// Encodes `span` into this thread's buffer, unless the queue is full.
    pub(crate) fn push(&self, span: &SpanRecord) -> Pushed {
        let pushed = SHARDS.try_with(|cell| {
            let mut shards = cell.try_borrow_mut().ok()?;
            let shard = match shards.iter().find(|(id, _)| *id == self.id) {
                Some((_, shard)) => shard,
                None => {
                    let shard = Arc::new(Shard::default());
                    lock(&self.shards).push(shard.clone());
                    shards.push((self.id, shard));
                    &shards[shards.len() - 1].1
                }
            };
            Some(self.push_to(shard, span))
        });
        match pushed {
            Ok(Some(pushed)) => pushed,
            // This thread's thread-locals are being destroyed.
            _ => self.push_to(&self.fallback, span),
        }
    }

    fn push_to(&self, shard: &Shard, span: &SpanRecord) -> Pushed {
        let mut buffer = lock(&shard.0);
        if buffer.credit == 0 {
            buffer.credit = self.reserve();
            if buffer.credit == 0 {
                return Pushed::Dropped;
            }
        }
        buffer.credit -= 1;
        let batch = &mut buffer.current;
        if batch.bytes.capacity() == 0 {
            batch.bytes = lock(&self.spare)
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(self.batch_bytes()));
        }
        encode::span_entry(&mut batch.bytes, span);
        batch.spans += 1;
        if batch.spans < self.batch {
            return Pushed::Queued;
        }
        let full = std::mem::take(&mut buffer.current);
        buffer.full.push(full);
        Pushed::BatchFull
    }

    /// Bytes a new batch's buffer is made with.
    fn batch_bytes(&self) -> usize {
        self.batch.saturating_mul(SPAN_BYTES)
    }

    /// Reserves up to a step of room ([`credit_for`]); 0 when the queue is full.
    fn reserve(&self) -> usize {
        let mut now = self.reserved.load(Ordering::Relaxed);
        loop {
            let grant = self.credit.min(self.max.saturating_sub(now));
            if grant == 0 {
                return 0;
            }
            match self.reserved.compare_exchange_weak(
                now,
                now + grant,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return grant,
                Err(actual) => now = actual,
            }
        }
    }

    /// Takes every thread's spans, as batches of at most the queue's batch
    /// size, and forgets the shards of threads that ended.
    pub(crate) fn take(&self) -> Vec<Batch> {
        let mut batches = Vec::new();
        let mut freed = 0;
        lock(&self.shards).retain(|shard| {
            let mut buffer = lock(&shard.0);
            for batch in buffer.full.drain(..) {
                freed += batch.spans;
                batches.push(batch);
            }
            if buffer.current.spans > 0 {
                let batch = std::mem::take(&mut buffer.current);
                freed += batch.spans;
                batches.push(batch);
            }
            // Only the registry holds it: its thread has ended.
            let ended = Arc::strong_count(shard) == 1;
            if ended {
                freed += std::mem::take(&mut buffer.credit);
            }
            !ended
        });
        self.reserved.fetch_sub(freed, Ordering::Relaxed);
        batches
    }

    /// Keeps the buffer of a sent batch for a new one (unless enough are
    /// kept, or it grew far past a batch's usual size).
    pub(crate) fn recycle(&self, mut bytes: Vec<u8>) {
        bytes.clear();
        let mut spare = lock(&self.spare);
        if spare.len() < SPARE_BUFFERS && bytes.capacity() <= 4 * self.batch_bytes() {
            spare.push(bytes);
        }
    }

    /// Whether no thread holds a span.
    pub(crate) fn is_empty(&self) -> bool {
        lock(&self.shards).iter().all(|shard| {
            let buffer = lock(&shard.0);
            buffer.full.is_empty() && buffer.current.spans == 0
        })
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::BTreeSet;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message as _;

    use super::*;

    /// The SDK's default batch, as the services run with.
    const MAX_EXPORT_BATCH: usize = 512;
    use crate::telemetry::encode::Resource;
    use crate::telemetry::record::SpanKind;

    fn span(id: u64) -> SpanRecord {
        SpanRecord::new(
            (7, id, 3),
            String::new(),
            true,
            Cow::Borrowed("HGET"),
            SpanKind::Client,
            id,
        )
    }

    fn resource() -> Resource {
        Resource {
            attributes: Vec::new(),
            scope: "test".into(),
        }
    }

    /// The span ids in `batch`, decoded as the collector would.
    fn ids(batch: &Batch) -> Vec<u64> {
        let request = encode::request_of_encoded(&resource(), &batch.bytes);
        let request = ExportTraceServiceRequest::decode(&request[..]).unwrap();
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), batch.spans, "the batch counts what it holds");
        spans
            .iter()
            .map(|s| u64::from_be_bytes(s.span_id[..].try_into().unwrap()))
            .collect()
    }

    #[test]
    fn a_full_queue_drops_what_comes_over_its_bound_and_has_room_again_once_taken() {
        let q = Queue::new(600, MAX_EXPORT_BATCH);
        let pushed: Vec<Pushed> = (0..700).map(|i| q.push(&span(i))).collect();
        assert_eq!(pushed[511], Pushed::BatchFull, "the 512th fills a batch");
        assert_eq!(
            pushed.iter().filter(|p| **p == Pushed::Dropped).count(),
            100
        );
        assert!(pushed[..600].iter().all(|p| *p != Pushed::Dropped));

        let batches = q.take();
        assert_eq!(batches.len(), 2);
        let sent: Vec<u64> = batches.iter().flat_map(ids).collect();
        assert_eq!(sent, (0..600).collect::<Vec<_>>(), "all kept, in order");
        assert!(q.is_empty());
        assert_eq!(q.push(&span(1_000)), Pushed::Queued, "room again");
    }

    #[test]
    fn batches_are_of_the_size_set() {
        let q = Queue::new(65_536, 100);
        let pushed: Vec<Pushed> = (0..250).map(|i| q.push(&span(i))).collect();
        let full: Vec<usize> = (0..250)
            .filter(|i| pushed[*i] == Pushed::BatchFull)
            .collect();
        assert_eq!(full, vec![99, 199], "the 100th and the 200th fill a batch");
        let sizes: Vec<usize> = q.take().iter().map(|b| b.spans).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
        // Never larger than the queue, nor empty.
        let q = Queue::new(600, 1_000);
        assert_eq!(q.batch, 600);
        assert_eq!(Queue::new(600, 0).batch, 1);
    }

    #[test]
    fn a_sent_batchs_buffer_is_reused_by_the_next_batch() {
        let q = Queue::new(65_536, MAX_EXPORT_BATCH);
        assert_eq!(q.push(&span(1)), Pushed::Queued);
        let sent = q.take().remove(0);
        assert!(
            sent.bytes.capacity() >= MAX_EXPORT_BATCH * SPAN_BYTES,
            "made big enough"
        );
        let at = sent.bytes.as_ptr();
        q.recycle(sent.bytes);
        assert_eq!(q.push(&span(2)), Pushed::Queued);
        let next = q.take().remove(0);
        assert_eq!(next.bytes.as_ptr(), at, "the same buffer");
        assert_eq!(ids(&next), vec![2], "holding only the new span");
    }

    #[test]
    fn room_reserved_by_idle_threads_never_fills_a_small_queue() {
        assert_eq!(credit_for(512), 2);
        assert_eq!(credit_for(65_536), MAX_CREDIT);
        assert_eq!(credit_for(10_000_000), MAX_CREDIT);
        // 200 threads each queue one span and keep the rest of their step.
        let q = Arc::new(Queue::new(512, MAX_EXPORT_BATCH));
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let hold = Arc::new(Mutex::new(hold));
        let (queued, done) = std::sync::mpsc::channel();
        let idle: Vec<_> = (0..200u64)
            .map(|t| {
                let (q, hold, queued) = (q.clone(), hold.clone(), queued.clone());
                std::thread::spawn(move || {
                    queued.send(q.push(&span(t))).unwrap();
                    // Alive (holding its room) until released.
                    let _ = lock(&hold).recv();
                })
            })
            .collect();
        let pushed: Vec<Pushed> = (0..200).map(|_| done.recv().unwrap()).collect();
        assert!(pushed.iter().all(|p| *p == Pushed::Queued));
        // 200 queued and 200 reserved: another thread still has room.
        let busy: Vec<Pushed> = (0..100).map(|i| q.push(&span(1_000 + i))).collect();
        assert!(busy.iter().all(|p| *p != Pushed::Dropped), "{busy:?}");
        drop(release);
        for t in idle {
            t.join().unwrap();
        }
    }

    #[test]
    fn every_threads_spans_are_taken_and_an_ended_threads_buffer_is_forgotten() {
        let q = Arc::new(Queue::new(65_536, MAX_EXPORT_BATCH));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..700 {
                        assert_ne!(q.push(&span(t * 10_000 + i)), Pushed::Dropped);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let batches = q.take();
        assert!(batches.iter().all(|b| b.spans <= MAX_EXPORT_BATCH));
        let sent: BTreeSet<u64> = batches.iter().flat_map(ids).collect();
        let want: BTreeSet<u64> = (0..4u64)
            .flat_map(|t| (0..700).map(move |i| t * 10_000 + i))
            .collect();
        assert_eq!(sent, want);
        assert_eq!(lock(&q.shards).len(), 1, "only the fallback shard is left");
        assert_eq!(
            q.reserved.load(Ordering::Relaxed),
            0,
            "the ended threads' unused room is given back"
        );
    }
}
