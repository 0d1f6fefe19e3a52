//! One span as this crate keeps it from start to export: ids, name, kind,
//! times, attributes, events, links and status, in plain fields, with keys
//! borrowed from the `tracing` callsite wherever they can be.

use std::borrow::Cow;
use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

/// An attribute value (OTLP `AnyValue`, the scalar kinds).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum AttrValue {
    Str(Cow<'static, str>),
    Bool(bool),
    Int(i64),
    Float(f64),
}

impl From<opentelemetry::Value> for AttrValue {
    fn from(v: opentelemetry::Value) -> Self {
        match v {
            opentelemetry::Value::Bool(b) => Self::Bool(b),
            opentelemetry::Value::I64(i) => Self::Int(i),
            opentelemetry::Value::F64(f) => Self::Float(f),
            other => Self::Str(Cow::Owned(other.to_string())),
        }
    }
}

/// A span's attributes: inline while there are at most two, which is what
/// a traced cache hit's spans have besides their [`SpanRecord::encoded_attributes`].
pub(crate) type Attributes = smallvec::SmallVec<[(Cow<'static, str>, AttrValue); 2]>;

/// Span kind, numbered as OTLP numbers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum SpanKind {
    Internal = 1,
    Server = 2,
    Client = 3,
    Producer = 4,
    Consumer = 5,
}

impl SpanKind {
    /// The kind an `otel.kind` field names (any case); `None` for others.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "internal" => Self::Internal,
            "server" => Self::Server,
            "client" => Self::Client,
            "producer" => Self::Producer,
            "consumer" => Self::Consumer,
            _ => return None,
        })
    }
}

/// A log event inside a span.
#[derive(Debug, Clone)]
pub(crate) struct SpanEvent {
    pub(crate) time_unix_nano: u64,
    pub(crate) name: String,
    pub(crate) attributes: Vec<(Cow<'static, str>, AttrValue)>,
}

/// A link to a span of another trace.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    pub(crate) trace_state: String,
}

/// Most boxes of finished records a thread keeps ([`SpanRecord::recycle`]).
const MAX_SPARE_RECORDS: usize = 8;
/// Most events or links a recycled record has room for.
const MAX_RECYCLED_CAPACITY: usize = 8;
/// The longest status message or `tracestate` a recycled record has room for.
const MAX_RECYCLED_STRING: usize = 512;

thread_local! {
    /// This thread's boxes of finished records ([`SpanRecord::recycle`]).
    #[allow(clippy::vec_box, reason = "the boxes are what is kept, to be handed out again")]
    static SPARE_RECORDS: RefCell<Vec<Box<SpanRecord>>> = const { RefCell::new(Vec::new()) };
}

/// A span, live (in the `tracing` registry's extensions) or finished.
#[derive(Debug, Clone)]
pub(crate) struct SpanRecord {
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    /// 0 for a root.
    pub(crate) parent_span_id: u64,
    /// The W3C `tracestate` header value, empty when none.
    pub(crate) trace_state: String,
    /// Whether it is exported (and passed on as sampled).
    pub(crate) sampled: bool,
    pub(crate) name: Cow<'static, str>,
    pub(crate) kind: SpanKind,
    pub(crate) start_unix_nano: u64,
    pub(crate) end_unix_nano: u64,
    pub(crate) attributes: Attributes,
    /// More attributes, already encoded as OTLP `Span.attributes` fields,
    /// in up to two runs: sets that many spans share, encoded once
    /// ([`super::intern::encoded_attributes`], and a server span's status
    /// code, [`super::intern::status_attribute`]). Never replaced by
    /// [`SpanRecord::set`]; empty for most spans.
    pub(crate) encoded_attributes: [&'static [u8]; 2],
    pub(crate) events: Vec<SpanEvent>,
    pub(crate) links: Vec<Link>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub(crate) status_code: u8,
    pub(crate) status_message: String,
}

impl SpanRecord {
    /// A span with no attributes, events or links yet, status unset, started
    /// at `start_unix_nano` and not ended.
    pub(crate) fn new(
        (trace_id, span_id, parent_span_id): (u128, u64, u64),
        trace_state: String,
        sampled: bool,
        name: Cow<'static, str>,
        kind: SpanKind,
        start_unix_nano: u64,
    ) -> Self {
        Self {
            trace_id,
            span_id,
            parent_span_id,
            trace_state,
            sampled,
            name,
            kind,
            start_unix_nano,
            end_unix_nano: 0,
            attributes: Attributes::new(),
            encoded_attributes: [&[], &[]],
            events: Vec::new(),
            links: Vec::new(),
            status_code: 0,
            status_message: String::new(),
        }
    }

    /// [`SpanRecord::new`], boxed: in the box of a record this thread
    /// finished ([`SpanRecord::recycle`]) when there is one. A traced
    /// request boxes two (its server span and its Redis call's), and the
    /// allocator's aligned path (a record holds a `u128`), the free and a
    /// record's move into a new box were about 500 of the instructions
    /// tracing added to a cache hit (callgrind).
    pub(crate) fn boxed(
        ids: (u128, u64, u64),
        trace_state: String,
        sampled: bool,
        name: Cow<'static, str>,
        kind: SpanKind,
        start_unix_nano: u64,
    ) -> Box<Self> {
        let spare = SPARE_RECORDS
            .try_with(|spare| spare.borrow_mut().pop())
            .ok()
            .flatten();
        let Some(mut record) = spare else {
            return Box::new(Self::new(
                ids,
                trace_state,
                sampled,
                name,
                kind,
                start_unix_nano,
            ));
        };
        let r = &mut *record;
        (r.trace_id, r.span_id, r.parent_span_id) = ids;
        r.trace_state = trace_state;
        r.sampled = sampled;
        r.name = name;
        r.kind = kind;
        r.start_unix_nano = start_unix_nano;
        r.end_unix_nano = 0;
        r.encoded_attributes = [&[], &[]];
        r.status_code = 0;
        // Emptied by `recycle`.
        debug_assert!(r.attributes.is_empty() && r.events.is_empty() && r.links.is_empty());
        debug_assert!(r.status_message.is_empty());
        record
    }

    /// Keeps `record`'s box for this thread's next [`SpanRecord::boxed`],
    /// emptied, unless the thread keeps enough already or the record grew
    /// (its attributes or events left their inline room or a few slots),
    /// which would keep that memory for as long as the thread lives.
    pub(crate) fn recycle(mut record: Box<Self>) {
        if record.attributes.spilled()
            || record.events.capacity() > MAX_RECYCLED_CAPACITY
            || record.links.capacity() > MAX_RECYCLED_CAPACITY
            || record.status_message.capacity() > MAX_RECYCLED_STRING
            || record.trace_state.capacity() > MAX_RECYCLED_STRING
        {
            return;
        }
        record.attributes.clear();
        record.events.clear();
        record.links.clear();
        record.status_message.clear();
        // Its `name` and `trace_state` are replaced by the next `boxed`.
        let _ = SPARE_RECORDS.try_with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < MAX_SPARE_RECORDS {
                spare.push(record);
            }
        });
    }

    /// Sets attribute `key`, replacing an earlier value of the same key.
    pub(crate) fn set(&mut self, key: Cow<'static, str>, value: AttrValue) {
        match self.attributes.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.attributes.push((key, value)),
        }
    }

    /// A span context from its parts (marked remote: it is read by code
    /// outside this span's process or layer).
    pub(crate) fn context_of(
        trace: u128,
        span: u64,
        sampled: bool,
        state: &str,
    ) -> opentelemetry::trace::SpanContext {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        use std::str::FromStr as _;
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::from_str(state).unwrap_or_default(),
        )
    }

    /// Its W3C `traceparent` (`00-{trace id}-{span id}-{flags}`).
    pub(crate) fn traceparent(&self) -> String {
        self.traceparent_value().as_str().to_owned()
    }

    /// [`SpanRecord::traceparent`] as a header value.
    pub(crate) fn traceparent_value(&self) -> Traceparent {
        Traceparent::new(self.trace_id, self.span_id, u8::from(self.sampled))
    }

    /// What a child elsewhere needs: its `traceparent`, and its
    /// `tracestate` unless empty.
    pub(crate) fn w3c(&self) -> (String, Option<String>) {
        (
            self.traceparent(),
            Some(self.trace_state.clone()).filter(|s| !s.is_empty()),
        )
    }
}

/// A W3C `traceparent` (`00-{trace id}-{span id}-{flags}`) as a `String`.
pub(crate) fn traceparent(trace_id: u128, span_id: u64, flags: u8) -> String {
    Traceparent::new(trace_id, span_id, flags)
        .as_str()
        .to_owned()
}

/// A W3C `traceparent` header value (`00-{trace id}-{span id}-{flags}`, in
/// lowercase hex): its 55 ASCII bytes, written without the formatting
/// machinery or an allocation, since one goes out with every traced
/// response.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Traceparent([u8; 55]);

impl Traceparent {
    pub(crate) fn new(trace_id: u128, span_id: u64, flags: u8) -> Self {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        out[3..19].copy_from_slice(&hex16((trace_id >> 64) as u64));
        out[19..35].copy_from_slice(&hex16(trace_id as u64));
        out[36..52].copy_from_slice(&hex16(span_id));
        out[53..55].copy_from_slice(&hex16(u64::from(flags))[14..]);
        Self(out)
    }

    /// The header value's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The header value.
    pub fn as_str(&self) -> &str {
        // ASCII hex and dashes: always UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for Traceparent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `v`'s 16 lowercase hex digits, most significant first, all at once:
/// each nibble is spread into a byte of its own, and each byte offset
/// into `0`–`9` or `a`–`f`. About 30 instructions, where looking up each
/// byte's pair of digits in a table took about 55 (callgrind).
fn hex16(v: u64) -> [u8; 16] {
    const LOW_NIBBLES: u128 = 0x0f0f_0f0f_0f0f_0f0f_0f0f_0f0f_0f0f_0f0f;
    const ONES: u128 = 0x0101_0101_0101_0101_0101_0101_0101_0101;
    let mut n = u128::from(v);
    n = (n | n << 32) & 0x0000_0000_ffff_ffff_0000_0000_ffff_ffff;
    n = (n | n << 16) & 0x0000_ffff_0000_ffff_0000_ffff_0000_ffff;
    n = (n | n << 8) & 0x00ff_00ff_00ff_00ff_00ff_00ff_00ff_00ff;
    n = (n | n << 4) & LOW_NIBBLES;
    // 1 in each byte whose nibble is 10 or more (+6 carries it into bit 4).
    let letters = ((n + 6 * ONES) >> 4) & ONES;
    (n + u128::from(b'0') * ONES + letters * u128::from(b'a' - b'0' - 10)).to_be_bytes()
}

/// Now, in nanoseconds since the Unix epoch.
pub(crate) fn now_unix_nano() -> u64 {
    unix_nano(SystemTime::now())
}

/// `t` in nanoseconds since the Unix epoch (0 before it).
pub(crate) fn unix_nano(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How many finished records' boxes this thread keeps.
    fn spare() -> usize {
        SPARE_RECORDS.with_borrow(Vec::len)
    }

    fn boxed(kind: SpanKind) -> Box<SpanRecord> {
        SpanRecord::boxed((1, 2, 3), String::new(), true, "a".into(), kind, 10)
    }

    #[test]
    fn a_finished_record_box_is_handed_out_again_as_new() {
        let mut r = boxed(SpanKind::Server);
        r.trace_state = "k=v".into();
        r.attributes.push(("x".into(), AttrValue::Int(1)));
        r.events.push(SpanEvent {
            time_unix_nano: 1,
            name: "e".into(),
            attributes: Vec::new(),
        });
        r.encoded_attributes = [b"x", b"y"];
        (r.status_code, r.status_message, r.end_unix_nano) = (2, "boom".into(), 20);
        let at: *const SpanRecord = &*r;
        SpanRecord::recycle(r);
        assert_eq!(spare(), 1);
        let (ids, name, kind) = ((4, 5, 0), Cow::Borrowed("b"), SpanKind::Client);
        let again = SpanRecord::boxed(ids, String::new(), false, name.clone(), kind, 30);
        assert!(std::ptr::eq(at, &*again), "the same box");
        let fresh = SpanRecord::new(ids, String::new(), false, name, kind, 30);
        assert_eq!(
            format!("{again:?}"),
            format!("{fresh:?}"),
            "nothing of before"
        );
        assert_eq!(spare(), 0);
    }

    #[test]
    fn a_record_that_grew_or_one_too_many_is_not_kept() {
        let mut grew = boxed(SpanKind::Internal);
        for i in 0..3 {
            grew.attributes.push(("x".into(), AttrValue::Int(i)));
        }
        SpanRecord::recycle(grew);
        assert_eq!(spare(), 0, "its attributes left their inline room");
        let mut long = boxed(SpanKind::Internal);
        long.status_message = "e".repeat(MAX_RECYCLED_STRING + 1);
        SpanRecord::recycle(long);
        assert_eq!(spare(), 0, "a long message's room is not kept");
        let finished: Vec<_> = (0..MAX_SPARE_RECORDS + 2)
            .map(|_| boxed(SpanKind::Internal))
            .collect();
        finished.into_iter().for_each(SpanRecord::recycle);
        assert_eq!(spare(), MAX_SPARE_RECORDS, "a thread keeps a few");
    }

    #[test]
    fn the_traceparent_is_the_w3c_format() {
        let mut r = SpanRecord::new(
            (
                0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
                0x00f0_67aa_0ba9_02b7,
                0,
            ),
            String::new(),
            true,
            Cow::Borrowed("x"),
            SpanKind::Server,
            0,
        );
        assert_eq!(
            r.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        r.sampled = false;
        r.trace_id = 1;
        assert_eq!(
            r.traceparent(),
            format!("00-{:032x}-{:016x}-00", 1, r.span_id)
        );
        for _ in 0..1_000 {
            let (trace, span, flags) = (fastrand::u128(..), fastrand::u64(..), fastrand::u8(..));
            assert_eq!(
                traceparent(trace, span, flags),
                format!("00-{trace:032x}-{span:016x}-{flags:02x}")
            );
        }
        for v in [0, 9, 10, 15, 0x8000_0000_0000_0000, u64::MAX] {
            assert_eq!(hex16(v), *format!("{v:016x}").as_bytes());
        }
    }
}
