//! One span as this crate keeps it from start to export: ids, name, kind,
//! times, attributes, events, links and status, in plain fields, with keys
//! borrowed from the `tracing` callsite wherever they can be.

use std::borrow::Cow;
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
    /// More attributes, already encoded as OTLP `Span.attributes` fields:
    /// a set that many spans share, encoded once
    /// ([`super::intern::encoded_attributes`]). Never replaced by
    /// [`SpanRecord::set`]; empty for most spans.
    pub(crate) encoded_attributes: &'static [u8],
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
            encoded_attributes: &[],
            events: Vec::new(),
            links: Vec::new(),
            status_code: 0,
            status_message: String::new(),
        }
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
        traceparent(self.trace_id, self.span_id, u8::from(self.sampled))
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

/// A W3C `traceparent` (`00-{trace id}-{span id}-{flags}`), written without
/// the formatting machinery: one goes out with every response.
pub(crate) fn traceparent(trace_id: u128, span_id: u64, flags: u8) -> String {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let trace = trace_id.to_be_bytes();
    for i in 0..16 {
        out[3 + 2 * i..5 + 2 * i].copy_from_slice(&HEX_PAIRS[usize::from(trace[i])]);
    }
    let span = span_id.to_be_bytes();
    for i in 0..8 {
        out[36 + 2 * i..38 + 2 * i].copy_from_slice(&HEX_PAIRS[usize::from(span[i])]);
    }
    out[53..55].copy_from_slice(&HEX_PAIRS[usize::from(flags)]);
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

/// Each byte's two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    pairs
};

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
    }
}
