//! The price answers' JSON, written directly rather than through serde's
//! derived `Serialize`, byte for byte the same (the tests compare the two).
//!
//! A price is the read path's whole answer, and on a near-cache hit
//! serialising it was the largest piece of the api's own work: serde_json
//! escapes every key, chrono writes the timestamp one character at a time
//! through serde_json's escaping adapter, and axum's `Json` starts from a
//! 128-byte buffer that a price outgrows. Here the keys are literals, the
//! amounts and the timestamp are written from their parts, and the buffer
//! is sized once.

use axum::body::Body;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Datelike, SecondsFormat, Timelike, Utc};

use crate::model::{BatchResponse, PriceDetail, PriceSource};

/// Bytes one price takes, with room to spare (about 160 for a typical one).
const PRICE_BYTES: usize = 224;

/// A price endpoint's answer: `200` with the JSON of `T`.
pub(crate) struct PriceJson<T>(pub T);

/// What a price answer (`PriceJson`) can write (public for the benches).
pub trait WriteJson {
    /// Appends the JSON of `self`, the same bytes `serde_json::to_vec` makes.
    fn write_json(&self, out: &mut Vec<u8>);
    /// A first guess at the size, so the buffer is allocated once.
    fn size_hint(&self) -> usize;
}

impl<T: WriteJson> IntoResponse for PriceJson<T> {
    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(self.0.size_hint());
        self.0.write_json(&mut body);
        // A buffer with room to spare becomes `Bytes` through one more
        // allocation (its shared header); trimmed, it is taken as it is.
        // Trimming keeps the block where it is unless it is mostly empty.
        body.shrink_to_fit();
        let mut response = Response::new(Body::from(body));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

impl WriteJson for PriceDetail {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"product_id\":");
        write_str(out, &self.product_id);
        out.extend_from_slice(b",\"final_price\":");
        write_f64(out, self.final_price);
        out.extend_from_slice(b",\"base_price\":");
        write_f64(out, self.base_price);
        out.extend_from_slice(b",\"discount_rate\":");
        write_f64(out, self.discount_rate);
        out.extend_from_slice(match self.source {
            PriceSource::Cache => b",\"source\":\"cache\"",
            PriceSource::Database => b",\"source\":\"database\"",
        });
        out.extend_from_slice(b",\"currency\":");
        write_str(out, &self.currency);
        out.extend_from_slice(b",\"calculated_at\":\"");
        write_timestamp(out, &self.calculated_at);
        out.extend_from_slice(b"\"}");
    }

    fn size_hint(&self) -> usize {
        PRICE_BYTES + self.product_id.len()
    }
}

impl WriteJson for BatchResponse {
    fn write_json(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"prices\":[");
        for (i, price) in self.prices.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            price.write_json(out);
        }
        out.extend_from_slice(b"],\"not_found\":[");
        for (i, id) in self.not_found.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, id);
        }
        out.extend_from_slice(b"]}");
    }

    fn size_hint(&self) -> usize {
        32 + self.prices.len() * PRICE_BYTES + self.not_found.len() * 24
    }
}

/// A JSON string as serde_json writes it. One with nothing to escape (a
/// product id or a currency always) is copied between its quotes; any
/// other goes through serde_json.
fn write_str(out: &mut Vec<u8>, value: &str) {
    // serde_json escapes only `"`, `\` and control characters.
    if value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
        return;
    }
    // Writing into a Vec cannot fail, and a str always serialises.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// A timestamp as chrono's `Serialize` writes it (RFC 3339 with `Z`, and
/// as many fractional digits as `SecondsFormat::AutoSi` keeps: none, 3, 6
/// or 9), without the quotes.
///
/// Written from the date and time fields directly: chrono's writer goes
/// through its formatting machinery into a fresh `String`, which was a
/// fifth of writing a price. Years outside 0..=9999 (which chrono writes
/// with a sign) and leap seconds still go to chrono. Only ASCII digits and
/// `-:.TZ+` are written, which JSON needs no escape for.
fn write_timestamp(out: &mut Vec<u8>, at: &DateTime<Utc>) {
    // The UTC fields as stored: `date_naive` would first add the zero offset.
    let naive = at.naive_utc();
    let (date, time) = (naive.date(), naive.time());
    let nanos = time.nanosecond();
    let year = date.year();
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        out.extend_from_slice(at.to_rfc3339_opts(SecondsFormat::AutoSi, true).as_bytes());
        return;
    }
    let two = |n: u32| [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8];
    let year = year as u32;
    let [y1, y2] = two(year / 100);
    let [y3, y4] = two(year % 100);
    let [mo1, mo2] = two(date.month());
    let [d1, d2] = two(date.day());
    let [h1, h2] = two(time.hour());
    let [mi1, mi2] = two(time.minute());
    let [s1, s2] = two(time.second());
    out.extend_from_slice(&[
        y1, y2, y3, y4, b'-', mo1, mo2, b'-', d1, d2, b'T', h1, h2, b':', mi1, mi2, b':', s1, s2,
    ]);
    let (fraction, digits) = match nanos {
        0 => (0, 0),
        n if n % 1_000_000 == 0 => (n / 1_000_000, 3),
        n if n % 1_000 == 0 => (n / 1_000, 6),
        n => (n, 9),
    };
    if digits > 0 {
        let mut buf = itoa::Buffer::new();
        let written = buf.format(fraction).as_bytes();
        out.push(b'.');
        // Leading zeros: 5 ms is `.005`.
        out.extend_from_slice(&b"000000000"[..digits - written.len()]);
        out.extend_from_slice(written);
    }
    out.push(b'Z');
}

/// A JSON number as serde_json writes it (`null` if not finite).
///
/// Prices and rates are whole cents divided by 100, and the shortest form
/// that reads back as such a number is its decimal, trailing zeros
/// dropped (`18.99`, `19.5`, `19.0`). So it is written from the integer
/// here, without the float formatter, which took about a quarter of
/// writing a price (`price_detail_write_json`: 147 ns before, 112 after).
/// Anything else (and negative zero) goes to serde_json.
fn write_f64(out: &mut Vec<u8>, value: f64) {
    let Some(cents) = whole_cents(value) else {
        let _ = serde_json::to_writer(&mut *out, &value);
        return;
    };
    let (whole, frac) = (cents.abs() / 100, cents.abs() % 100);
    if cents < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(itoa::Buffer::new().format(whole).as_bytes());
    match (frac / 10, frac % 10) {
        (tens, 0) => out.extend_from_slice(&[b'.', b'0' + tens as u8]),
        (tens, units) => out.extend_from_slice(&[b'.', b'0' + tens as u8, b'0' + units as u8]),
    }
}

/// `value` as a whole number of cents, if it is exactly one over 100 (and
/// under 1e11 in size, and not negative zero).
fn whole_cents(value: f64) -> Option<i64> {
    let scaled = value * 100.0;
    // NaN and infinities fail the first test.
    if !scaled.is_finite() || scaled.abs() >= 1e13 || value.to_bits() == (-0.0f64).to_bits() {
        return None;
    }
    // The nearest integer, by adding a half and truncating: `f64::round`
    // is a libm call on this target. Whether it is exact is checked below.
    let cents = (scaled + 0.5f64.copysign(scaled)) as i64;
    (cents as f64 / 100.0 == value).then_some(cents)
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeZone, Utc};

    use super::*;

    fn price(product_id: &str, cents: i64, at: DateTime<Utc>, source: PriceSource) -> PriceDetail {
        PriceDetail {
            product_id: product_id.into(),
            final_price: cents as f64 * 0.95 / 100.0,
            base_price: cents as f64 / 100.0,
            discount_rate: 0.05,
            source,
            currency: "USD".into(),
            calculated_at: at,
        }
    }

    /// Timestamps that take every branch of chrono's AutoSi precision,
    /// and years outside 0..=9999, which it writes with a sign.
    fn instants() -> Vec<DateTime<Utc>> {
        let base = Utc.with_ymd_and_hms(2026, 12, 5, 6, 7, 8).unwrap();
        let mut out = vec![
            base,
            base + chrono::Duration::milliseconds(120),
            base + chrono::Duration::microseconds(123_450),
            base + chrono::Duration::nanoseconds(123_456_789),
            base + chrono::Duration::nanoseconds(1),
            Utc.with_ymd_and_hms(1970, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap(),
            Utc.with_ymd_and_hms(-5, 3, 4, 23, 59, 59).unwrap(),
        ];
        // A leap second, which chrono keeps as a nanosecond past 1e9.
        let leap = chrono::NaiveDate::from_ymd_opt(2016, 12, 31)
            .and_then(|d| d.and_hms_nano_opt(23, 59, 59, 1_500_000_000))
            .map(|naive| naive.and_utc());
        out.extend(leap);
        out
    }

    fn json_of<T: WriteJson>(value: &T) -> Vec<u8> {
        let mut out = Vec::new();
        value.write_json(&mut out);
        out
    }

    #[test]
    fn a_price_is_written_exactly_as_serde_writes_it() {
        let odd_values = [0, 1, 5, 99, 1_999, 123_456_789, -250, i64::from(i32::MAX)];
        for at in instants() {
            for cents in odd_values {
                for source in [PriceSource::Cache, PriceSource::Database] {
                    let detail = price("P-1:a.b_c", cents, at, source);
                    let ours = json_of(&detail);
                    let serde = serde_json::to_vec(&detail).unwrap();
                    assert_eq!(
                        String::from_utf8_lossy(&ours),
                        String::from_utf8_lossy(&serde)
                    );
                }
            }
        }
    }

    #[test]
    fn timestamps_are_written_exactly_as_serde_writes_them() {
        let write = |at: &DateTime<Utc>| {
            let mut out = vec![b'"'];
            write_timestamp(&mut out, at);
            out.push(b'"');
            String::from_utf8(out).unwrap()
        };
        let mut all = instants();
        let start = Utc.with_ymd_and_hms(0, 1, 1, 0, 0, 0).unwrap().timestamp();
        let end = Utc
            .with_ymd_and_hms(9999, 12, 31, 23, 59, 59)
            .unwrap()
            .timestamp();
        all.extend((0..100_000).map(|i| {
            // Every precision AutoSi picks: whole seconds, millis, micros, nanos.
            let nanos = match i % 4 {
                0 => 0,
                1 => fastrand::u32(0..1_000) * 1_000_000,
                2 => fastrand::u32(0..1_000_000) * 1_000,
                _ => fastrand::u32(0..1_000_000_000),
            };
            DateTime::from_timestamp(fastrand::i64(start..=end), nanos).unwrap()
        }));
        for at in all {
            assert_eq!(write(&at), serde_json::to_string(&at).unwrap(), "{at:?}");
        }
    }

    #[test]
    fn amounts_are_written_exactly_as_serde_writes_them() {
        let write = |value: f64| {
            let mut out = Vec::new();
            write_f64(&mut out, value);
            String::from_utf8(out).unwrap()
        };
        let mut values: Vec<f64> = vec![0.0, -0.0, 0.05, 0.5, 19.0, -0.01, 1e12, 1e13, 1e16, 0.001];
        values.extend(
            (0..200_000).map(|_| fastrand::i64(-10_000_000_000..10_000_000_000) as f64 / 100.0),
        );
        values.extend(
            (0..20_000).map(|_| fastrand::i64(-1_000_000..1_000_000) as f64 * 0.95 / 100.0),
        );
        values.extend((0..20_000).map(|_| f64::from_bits(fastrand::u64(..))));
        for value in values {
            assert_eq!(
                write(value),
                serde_json::to_string(&value).unwrap(),
                "{value:?}"
            );
        }
    }

    #[test]
    fn strings_are_escaped_and_non_finite_numbers_are_null_as_with_serde() {
        let mut detail = price(
            "quote\"back\\slash\u{1}é",
            1,
            Utc::now(),
            PriceSource::Cache,
        );
        detail.currency = "tab\there".into();
        detail.final_price = f64::NAN;
        detail.base_price = f64::INFINITY;
        assert_eq!(json_of(&detail), serde_json::to_vec(&detail).unwrap());
    }

    #[test]
    fn a_batch_answer_is_written_exactly_as_serde_writes_it() {
        let at = Utc::now();
        let cases = [
            BatchResponse {
                prices: vec![],
                not_found: vec![],
            },
            BatchResponse {
                prices: vec![price("P-1", 1_999, at, PriceSource::Cache)],
                not_found: vec!["P-404".into()],
            },
            BatchResponse {
                prices: (0..5)
                    .map(|i| price(&format!("P-{i}"), 100 + i, at, PriceSource::Database))
                    .collect(),
                not_found: vec!["P-x".into(), "P-y".into(), "P-\"z".into()],
            },
        ];
        for batch in cases {
            assert_eq!(json_of(&batch), serde_json::to_vec(&batch).unwrap());
        }
    }

    #[test]
    fn the_response_is_200_json() {
        let response = PriceJson(price("P-1", 1, Utc::now(), PriceSource::Cache)).into_response();
        assert_eq!(response.status(), axum::http::StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
    }
}
