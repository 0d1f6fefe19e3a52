//! Finished spans to OTLP protobuf bytes (`ExportTraceServiceRequest`),
//! written straight from [`SpanRecord`]s.
//!
//! The OpenTelemetry SDK's exporter first copies every span into the
//! generated `opentelemetry-proto` structs (a `String` per attribute key and
//! value) and then encodes those; writing the wire format directly skips the
//! copy, which was about a fifth of what a traced request cost. The field
//! numbers are those of `opentelemetry/proto/trace/v1/trace.proto` and
//! `common/v1/common.proto`; the tests decode the bytes with the generated
//! structs to prove it.
//!
//! Every message is measured before it is written (`span_len` and the other
//! `_len` functions), so that its length prefix goes in front of it directly,
//! into a slice of exactly the measured length, and the buffer grows at most
//! once per span: writing a body first and its length after moves the body,
//! or has to guess the prefix's size. Attribute sets that many spans share
//! come encoded already ([`SpanRecord::encoded_attributes`]) and are copied
//! as they are. Encoding was 44% of what a traced cache hit's spans cost
//! the request thread before both (`benches/spans.rs`).
//!
//! A plain span (attributes encoded once only; no events, links,
//! `tracestate` or status message) skips the measuring and is appended
//! field by field ([`plain_span_entry`]). The file is long on purpose: the
//! two ways a span is written and the tests that decode them with the
//! generated structs, and hold them equal byte for byte, belong together.

use std::borrow::Cow;

use super::record::{AttrValue, SpanRecord};

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// How many bytes `v` takes as a varint.
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// How many bytes a field's key takes.
fn key_len(field: u32) -> usize {
    varint_len(u64::from(field << 3))
}

/// How many bytes a length-delimited field with a body of `len` bytes takes.
fn len_field(field: u32, len: usize) -> usize {
    key_len(field) + varint_len(len as u64) + len
}

/// [`len_field`] of a string field, which is left out when empty.
fn string_len(field: u32, s: &str) -> usize {
    if s.is_empty() {
        0
    } else {
        len_field(field, s.len())
    }
}

/// Where a measured message is written: a slice of exactly its length. A
/// write past the end is not made, and [`Out::is_full`] then says no: a
/// measuring mistake drops a span, it never panics.
struct Out<'a> {
    buf: &'a mut [u8],
    at: usize,
    overrun: bool,
}

impl<'a> Out<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Self {
            buf,
            at: 0,
            overrun: false,
        }
    }

    fn byte(&mut self, b: u8) {
        match self.buf.get_mut(self.at) {
            Some(slot) => *slot = b,
            None => self.overrun = true,
        }
        self.at += 1;
    }

    fn put(&mut self, b: &[u8]) {
        match self.buf.get_mut(self.at..self.at + b.len()) {
            Some(dst) => dst.copy_from_slice(b),
            None => self.overrun = true,
        }
        self.at += b.len();
    }

    /// Whether exactly the measured length was written.
    fn is_full(&self) -> bool {
        !self.overrun && self.at == self.buf.len()
    }
}

fn varint(buf: &mut Out<'_>, mut v: u64) {
    while v >= 0x80 {
        buf.byte((v as u8) | 0x80);
        v >>= 7;
    }
    buf.byte(v as u8);
}

fn key(buf: &mut Out<'_>, field: u32, wire: u8) {
    varint(buf, u64::from(field << 3 | u32::from(wire)));
}

/// The key and length of a length-delimited field whose body of `len`
/// bytes the caller writes next.
fn len_prefix(buf: &mut Out<'_>, field: u32, len: usize) {
    key(buf, field, LEN);
    varint(buf, len as u64);
}

fn bytes(buf: &mut Out<'_>, field: u32, b: &[u8]) {
    len_prefix(buf, field, b.len());
    buf.put(b);
}

fn string(buf: &mut Out<'_>, field: u32, s: &str) {
    if !s.is_empty() {
        bytes(buf, field, s.as_bytes());
    }
}

fn fixed64(buf: &mut Out<'_>, field: u32, v: u64) {
    key(buf, field, FIXED64);
    buf.put(&v.to_le_bytes());
}

/// The length of an `AnyValue` holding `v`.
fn any_value_len(v: &AttrValue) -> usize {
    match v {
        AttrValue::Str(s) => len_field(1, s.len()),
        AttrValue::Bool(_) => 2,
        AttrValue::Int(i) => 1 + varint_len(*i as u64),
        AttrValue::Float(_) => 9,
    }
}

/// The length of a `KeyValue` body.
fn key_value_len(k: &str, v: &AttrValue) -> usize {
    string_len(1, k) + len_field(2, any_value_len(v))
}

fn key_value(buf: &mut Out<'_>, field: u32, k: &str, v: &AttrValue) {
    let value_len = any_value_len(v);
    len_prefix(buf, field, string_len(1, k) + len_field(2, value_len));
    string(buf, 1, k);
    len_prefix(buf, 2, value_len);
    match v {
        AttrValue::Str(s) => bytes(buf, 1, s.as_bytes()),
        AttrValue::Bool(b) => {
            key(buf, 2, VARINT);
            varint(buf, u64::from(*b));
        }
        AttrValue::Int(i) => {
            key(buf, 3, VARINT);
            varint(buf, *i as u64);
        }
        AttrValue::Float(f) => fixed64(buf, 4, f.to_bits()),
    }
}

/// The length of the fields of `attributes`, as repeated field `field`.
fn attributes_len(field: u32, attributes: &[(Cow<'static, str>, AttrValue)]) -> usize {
    attributes
        .iter()
        .map(|(k, v)| len_field(field, key_value_len(k, v)))
        .sum()
}

/// String attributes as `Span.attributes` fields, for
/// [`SpanRecord::encoded_attributes`].
pub(crate) fn span_attributes(attributes: &[(&'static str, &'static str)]) -> Vec<u8> {
    let attributes: Vec<_> = attributes
        .iter()
        .map(|(k, v)| (Cow::Borrowed(*k), AttrValue::Str(Cow::Borrowed(*v))))
        .collect();
    span_attributes_of(&attributes)
}

/// Attributes as `Span.attributes` fields, for
/// [`SpanRecord::encoded_attributes`].
pub(crate) fn span_attributes_of(attributes: &[(Cow<'static, str>, AttrValue)]) -> Vec<u8> {
    let mut buf = vec![0; attributes_len(9, attributes)];
    let mut out = Out::new(&mut buf);
    for (k, v) in attributes {
        key_value(&mut out, 9, k, v);
    }
    debug_assert!(out.is_full(), "measured exactly");
    buf
}

/// The resource and scope every span of a service shares.
#[derive(Debug, Clone)]
pub(crate) struct Resource {
    /// Resource attributes (`service.name`, `service.version`, …).
    pub(crate) attributes: Vec<(Cow<'static, str>, AttrValue)>,
    /// Instrumentation scope name.
    pub(crate) scope: String,
}

/// One `ExportTraceServiceRequest` holding `spans`.
#[cfg(test)]
pub(crate) fn request(resource: &Resource, spans: &[SpanRecord]) -> Vec<u8> {
    let mut encoded = Vec::new();
    for s in spans {
        span_entry(&mut encoded, s);
    }
    request_of_encoded(resource, &encoded)
}

/// Appends `s` to `buf` as one entry of `ScopeSpans.spans`: what a thread
/// writes when it finishes a span ([`super::export`]), so that an export
/// request is these bytes, concatenated, behind [`request_head`].
pub(crate) fn span_entry(buf: &mut Vec<u8>, s: &SpanRecord) {
    if !plain_span_entry(buf, s) {
        measured_span_entry(buf, s);
    }
}

/// [`span_entry`] for any span: measured first ([`span_len`]), then
/// written into room of exactly that length.
fn measured_span_entry(buf: &mut Vec<u8>, s: &SpanRecord) {
    let len = span_len(s);
    let start = buf.len();
    buf.resize(start + len_field(2, len), 0);
    let mut out = Out::new(&mut buf[start..]);
    len_prefix(&mut out, 2, len);
    span(&mut out, s);
    let written = out.is_full();
    debug_assert!(written, "span_len measures what span writes");
    if !written {
        buf.truncate(start);
    }
}

/// [`span_entry`] for a plain span: one with no attributes but its
/// encoded ones, no events, links, `tracestate` or status message. Both
/// spans of a traced cache hit are plain. Its length is a sum of a few
/// field lengths, and its fields are appended as they are, with no
/// measuring pass over attributes and events, no zeroed room and no bounds
/// check a byte: about 290 instructions where the general path took 390
/// (callgrind, a traced cache hit's two spans). The bytes are the general
/// path's, field for field (tested).
/// `false`, with nothing written, for any other span.
fn plain_span_entry(buf: &mut Vec<u8>, s: &SpanRecord) -> bool {
    if !(s.attributes.is_empty()
        && s.events.is_empty()
        && s.links.is_empty()
        && s.trace_state.is_empty()
        && s.status_message.is_empty()
        // A one-byte varint (OTLP's codes are 0 to 2).
        && s.status_code < 0x80)
    {
        return false;
    }
    let parent = s.parent_span_id != 0;
    let [attributes, status_attribute] = s.encoded_attributes;
    let status = s.status_code != 0;
    let len = 28
        + if parent { 10 } else { 0 }
        + string_len(5, &s.name)
        + 20
        + attributes.len()
        + status_attribute.len()
        + status_len(s).map_or(0, |len| len_field(15, len))
        + FLAGS.len();
    buf.reserve(len_field(2, len));
    buf.push(2 << 3 | LEN);
    push_varint(buf, len as u64);
    buf.extend_from_slice(&ids(s));
    if parent {
        buf.extend_from_slice(&parent_id(s.parent_span_id));
    }
    if !s.name.is_empty() {
        buf.push(5 << 3 | LEN);
        push_varint(buf, s.name.len() as u64);
        buf.extend_from_slice(s.name.as_bytes());
    }
    buf.extend_from_slice(&kind_and_times(s));
    buf.extend_from_slice(attributes);
    buf.extend_from_slice(status_attribute);
    if status {
        buf.extend_from_slice(&[15 << 3 | LEN, 2, 3 << 3 | VARINT, s.status_code]);
    }
    buf.extend_from_slice(&FLAGS);
    true
}

/// Appends `v` as a varint.
#[inline]
fn push_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// One `ExportTraceServiceRequest` around `spans`, a run of
/// [`span_entry`]s: [`request_head`], then the spans as they are (what the
/// exporter sends, in one buffer).
#[cfg(test)]
pub(crate) fn request_of_encoded(resource: &Resource, spans: &[u8]) -> Vec<u8> {
    let head = request_head(resource, spans.len());
    let mut buf = Vec::with_capacity(head.len() + spans.len());
    buf.extend_from_slice(&head);
    buf.extend_from_slice(spans);
    buf
}

/// What an `ExportTraceServiceRequest` holds before its spans, when they
/// are `spans_len` bytes of [`span_entry`]s: the resource and the scope,
/// and the length prefixes that cover the spans. The gRPC export sends
/// these bytes and the spans' one after the other, without joining them.
pub(crate) fn request_head(resource: &Resource, spans_len: usize) -> Vec<u8> {
    let version = env!("CARGO_PKG_VERSION");
    let resource_len = attributes_len(1, &resource.attributes);
    let scope_len = string_len(1, &resource.scope) + string_len(2, version);
    let scope_spans_len = len_field(1, scope_len) + spans_len;
    let resource_spans_len = len_field(1, resource_len) + len_field(2, scope_spans_len);
    let mut buf = vec![0; len_field(1, resource_spans_len) - spans_len];
    let mut out = Out::new(&mut buf);
    // ExportTraceServiceRequest.resource_spans
    len_prefix(&mut out, 1, resource_spans_len);
    // ResourceSpans.resource
    len_prefix(&mut out, 1, resource_len);
    for (k, v) in &resource.attributes {
        key_value(&mut out, 1, k, v);
    }
    // ResourceSpans.scope_spans
    len_prefix(&mut out, 2, scope_spans_len);
    // ScopeSpans.scope
    len_prefix(&mut out, 1, scope_len);
    string(&mut out, 1, &resource.scope);
    string(&mut out, 2, version);
    debug_assert!(out.is_full(), "measured exactly");
    buf
}

/// The length of a `Span` body.
fn span_len(s: &SpanRecord) -> usize {
    let parent = if s.parent_span_id == 0 { 0 } else { 10 };
    let events: usize = s
        .events
        .iter()
        .map(|e| {
            len_field(
                11,
                9 + string_len(2, &e.name) + attributes_len(3, &e.attributes),
            )
        })
        .sum();
    let links: usize = s
        .links
        .iter()
        .map(|l| len_field(13, 18 + 10 + string_len(3, &l.trace_state)))
        .sum();
    // trace id, span id, kind, start, end, flags
    18 + 10
        + 2
        + 9
        + 9
        + 6
        + parent
        + string_len(3, &s.trace_state)
        + string_len(5, &s.name)
        + s.encoded_attributes.iter().map(|e| e.len()).sum::<usize>()
        + attributes_len(9, &s.attributes)
        + events
        + links
        + status_len(s).map_or(0, |len| len_field(15, len))
}

/// The length of the `Status` body, `None` when it is left out (unset).
fn status_len(s: &SpanRecord) -> Option<usize> {
    (s.status_code != 0 || !s.status_message.is_empty())
        .then(|| string_len(2, &s.status_message) + 1 + varint_len(u64::from(s.status_code)))
}

/// A span's trace id and span id fields (1 and 2), keys and all.
fn ids(s: &SpanRecord) -> [u8; 28] {
    let mut ids = [0; 28];
    ids[..2].copy_from_slice(&[1 << 3 | LEN, 16]);
    ids[2..18].copy_from_slice(&s.trace_id.to_be_bytes());
    ids[18..20].copy_from_slice(&[2 << 3 | LEN, 8]);
    ids[20..].copy_from_slice(&s.span_id.to_be_bytes());
    ids
}

/// A span's parent span id field (4), key and all.
fn parent_id(id: u64) -> [u8; 10] {
    let mut parent = [4 << 3 | LEN, 8, 0, 0, 0, 0, 0, 0, 0, 0];
    parent[2..].copy_from_slice(&id.to_be_bytes());
    parent
}

/// A span's kind, start and end fields (6 to 8), keys and all.
fn kind_and_times(s: &SpanRecord) -> [u8; 20] {
    let mut fields = [0; 20];
    // A kind is below 0x80: a one-byte varint.
    fields[..3].copy_from_slice(&[6 << 3 | VARINT, s.kind as u8, 7 << 3 | FIXED64]);
    fields[3..11].copy_from_slice(&s.start_unix_nano.to_le_bytes());
    fields[11] = 8 << 3 | FIXED64;
    fields[12..].copy_from_slice(&s.end_unix_nano.to_le_bytes());
    fields
}

/// The W3C flags field (16): sampled, since only sampled spans are
/// exported. Field 16's key is a two-byte varint.
const FLAGS: [u8; 6] = [(16 << 3 | FIXED32) | 0x80, 1, 1, 0, 0, 0];

fn span(buf: &mut Out<'_>, s: &SpanRecord) {
    // Fixed-size fields go in as whole arrays, keys and all: one bounds
    // check each instead of one a byte.
    buf.put(&ids(s));
    string(buf, 3, &s.trace_state);
    if s.parent_span_id != 0 {
        buf.put(&parent_id(s.parent_span_id));
    }
    string(buf, 5, &s.name);
    buf.put(&kind_and_times(s));
    for encoded in s.encoded_attributes {
        buf.put(encoded);
    }
    for (k, v) in &s.attributes {
        key_value(buf, 9, k, v);
    }
    for e in &s.events {
        len_prefix(
            buf,
            11,
            9 + string_len(2, &e.name) + attributes_len(3, &e.attributes),
        );
        fixed64(buf, 1, e.time_unix_nano);
        string(buf, 2, &e.name);
        for (k, v) in &e.attributes {
            key_value(buf, 3, k, v);
        }
    }
    for l in &s.links {
        len_prefix(buf, 13, 18 + 10 + string_len(3, &l.trace_state));
        bytes(buf, 1, &l.trace_id.to_be_bytes());
        bytes(buf, 2, &l.span_id.to_be_bytes());
        string(buf, 3, &l.trace_state);
    }
    if let Some(len) = status_len(s) {
        len_prefix(buf, 15, len);
        string(buf, 2, &s.status_message);
        key(buf, 3, VARINT);
        varint(buf, u64::from(s.status_code));
    }
    buf.put(&FLAGS);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::record::{Link, SpanEvent, SpanKind};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message as _;

    fn sample(i: u64) -> SpanRecord {
        SpanRecord {
            trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            span_id: 0x00f0_67aa_0ba9_02b7 + i,
            parent_span_id: if i == 0 { 0 } else { 7 },
            trace_state: if i == 0 { String::new() } else { "k=v".into() },
            sampled: true,
            name: Cow::Owned(format!(
                "POST /api/v1/price {}",
                "x".repeat(i as usize * 60)
            )),
            kind: SpanKind::Server,
            start_unix_nano: 1_700_000_000_000_000_000 + i,
            end_unix_nano: 1_700_000_000_000_500_000 + i,
            attributes: smallvec::smallvec![
                (
                    Cow::Borrowed("http.route"),
                    AttrValue::Str("/api/v1/price".into()),
                ),
                (
                    Cow::Borrowed("http.response.status_code"),
                    AttrValue::Int(200),
                ),
                (Cow::Borrowed("neg"), AttrValue::Int(-3)),
                (Cow::Borrowed("ok"), AttrValue::Bool(true)),
                (Cow::Borrowed("ratio"), AttrValue::Float(0.25)),
            ],
            // Odd spans carry a pre-encoded set as well.
            encoded_attributes: if i % 2 == 1 {
                [
                    Box::leak(span_attributes(&[("db.system", "redis")]).into_boxed_slice()),
                    Box::leak(
                        span_attributes_of(&[(Cow::Borrowed("http.status"), AttrValue::Int(404))])
                            .into_boxed_slice(),
                    ),
                ]
            } else {
                [&[], &[]]
            },
            events: vec![SpanEvent {
                time_unix_nano: 5,
                name: "job failed".into(),
                attributes: vec![(Cow::Borrowed("error"), AttrValue::Str("boom".into()))],
            }],
            links: vec![Link {
                trace_id: 9,
                span_id: 10,
                trace_state: String::new(),
            }],
            status_code: if i == 0 { 0 } else { 2 },
            status_message: String::new(),
        }
    }

    #[test]
    fn a_plain_span_is_written_as_the_measured_path_writes_it() {
        static ATTRIBUTES: std::sync::LazyLock<Vec<u8>> =
            std::sync::LazyLock::new(|| span_attributes(&[("db.system", "redis")]));
        let plain = |parent, name: String, status_code, encoded| {
            let mut s = sample(0);
            s.parent_span_id = parent;
            s.name = Cow::Owned(name);
            s.status_code = status_code;
            s.attributes.clear();
            s.events.clear();
            s.links.clear();
            if encoded {
                s.encoded_attributes = [ATTRIBUTES.as_slice(), ATTRIBUTES.as_slice()];
            }
            s
        };
        let spans = [
            plain(0, "POST /api/v1/price".into(), 0, true),
            plain(7, "HGET".into(), 2, false),
            plain(7, String::new(), 1, true),
            // Long enough that the name's and the span's lengths take
            // two and three bytes.
            plain(7, "x".repeat(20_000), 0, true),
        ];
        for s in &spans {
            let (mut plain, mut measured) = (vec![9], vec![9]);
            assert!(plain_span_entry(&mut plain, s));
            measured_span_entry(&mut measured, s);
            assert_eq!(plain, measured, "{}", &s.name[..s.name.len().min(20)]);
        }
        let mut with_state = spans[0].clone();
        with_state.trace_state = "k=v".into();
        let mut with_message = spans[0].clone();
        with_message.status_message = "boom".into();
        let mut with_attribute = spans[0].clone();
        with_attribute
            .attributes
            .push((Cow::Borrowed("neg"), AttrValue::Int(-3)));
        let mut with_long_code = spans[0].clone();
        with_long_code.status_code = 200;
        let others = [
            sample(0),
            sample(1),
            with_state,
            with_message,
            with_attribute,
            with_long_code,
        ];
        for s in &others {
            let mut buf = Vec::new();
            assert!(!plain_span_entry(&mut buf, s), "not plain: {s:?}");
            assert!(buf.is_empty(), "nothing written");
        }
    }

    #[test]
    fn a_span_under_128_bytes_and_one_over_16_kib_decode_too() {
        let resource = Resource {
            attributes: Vec::new(),
            scope: "s".into(),
        };
        let mut small = sample(0);
        small.attributes.clear();
        small.events.clear();
        small.links.clear();
        small.name = Cow::Borrowed("HGET");
        let mut large = sample(0);
        large.name = Cow::Owned("x".repeat(20_000));
        let mut small_alone = Vec::new();
        span_entry(&mut small_alone, &small);
        assert!(small_alone.len() < 130, "{} bytes", small_alone.len());
        let req =
            ExportTraceServiceRequest::decode(&request(&resource, &[small, large])[..]).unwrap();
        let spans = &req.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans[0].name, "HGET");
        assert_eq!(spans[1].name.len(), 20_000);
        assert_eq!(
            spans[1].attributes.len(),
            5,
            "what follows the name is intact"
        );
    }

    #[test]
    fn the_bytes_decode_as_an_otlp_export_request() {
        let resource = Resource {
            attributes: vec![
                ("service.name".into(), AttrValue::Str("pricing-api".into())),
                ("service.version".into(), AttrValue::Str("0.1.0".into())),
            ],
            scope: "pricing-api".into(),
        };
        // Enough spans that every length prefix needs more than one byte.
        let spans: Vec<SpanRecord> = (0..40).map(sample).collect();
        let req = ExportTraceServiceRequest::decode(&request(&resource, &spans)[..]).unwrap();
        let rs = &req.resource_spans[0];
        let res = rs.resource.as_ref().unwrap();
        assert_eq!(res.attributes[0].key, "service.name");
        assert_eq!(
            res.attributes[0].value.as_ref().unwrap().value,
            Some(Value::StringValue("pricing-api".into()))
        );
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().unwrap().name, "pricing-api");
        assert_eq!(ss.spans.len(), 40);
        for (got, want) in ss.spans.iter().zip(&spans) {
            assert_eq!(got.trace_id, want.trace_id.to_be_bytes());
            assert_eq!(got.span_id, want.span_id.to_be_bytes());
            if want.parent_span_id == 0 {
                assert!(got.parent_span_id.is_empty());
            } else {
                assert_eq!(got.parent_span_id, want.parent_span_id.to_be_bytes());
            }
            assert_eq!(got.trace_state, want.trace_state);
            assert_eq!(got.name, want.name);
            assert_eq!(got.kind, 2);
            assert_eq!(got.start_time_unix_nano, want.start_unix_nano);
            assert_eq!(got.end_time_unix_nano, want.end_unix_nano);
            assert_eq!(got.flags, 1);
            let values: Vec<_> = got
                .attributes
                .iter()
                .map(|kv| (kv.key.as_str(), kv.value.clone().unwrap().value.unwrap()))
                .collect();
            let pre_encoded = if want.encoded_attributes[0].is_empty() {
                vec![]
            } else {
                vec![
                    ("db.system", Value::StringValue("redis".into())),
                    ("http.status", Value::IntValue(404)),
                ]
            };
            assert_eq!(
                values,
                [
                    pre_encoded,
                    vec![
                        ("http.route", Value::StringValue("/api/v1/price".into())),
                        ("http.response.status_code", Value::IntValue(200)),
                        ("neg", Value::IntValue(-3)),
                        ("ok", Value::BoolValue(true)),
                        ("ratio", Value::DoubleValue(0.25)),
                    ],
                ]
                .concat()
            );
            assert_eq!(got.events[0].name, "job failed");
            assert_eq!(got.events[0].time_unix_nano, 5);
            assert_eq!(got.links[0].trace_id, 9u128.to_be_bytes());
            assert_eq!(got.links[0].span_id, 10u64.to_be_bytes());
            assert_eq!(
                got.status.as_ref().map(|s| s.code).unwrap_or(0),
                i32::from(want.status_code)
            );
        }
    }
}
