//! `OTEL_RESOURCE_ATTRIBUTES`, read as the OpenTelemetry specification
//! writes it, and the service name that follows from it and
//! `OTEL_SERVICE_NAME`.

/// Reads `OTEL_RESOURCE_ATTRIBUTES` as the OpenTelemetry specification
/// writes it: comma-separated `key=value` pairs (W3C Baggage without
/// properties), blanks around each trimmed, `%XX` escapes decoded (`,` and
/// `=` inside a key or value must be escaped); a later pair of the same key
/// wins. An item without `=`, an empty key, a bad escape or a value that is
/// not UTF-8 once decoded is refused, naming the item.
pub fn parse_resource_attributes(raw: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not key=value"))?;
        let (key, value) = (percent_decode(key.trim())?, percent_decode(value.trim())?);
        if key.is_empty() {
            return Err(format!("{item:?} has an empty key"));
        }
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => out.push((key, value)),
        }
    }
    Ok(out)
}

/// `s` with its `%XX` escapes decoded.
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = bytes
                .get(i + 1..i + 3)
                .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| format!("bad %-escape in {s:?}"))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} is not UTF-8 once decoded"))
}

/// The service's name: `OTEL_SERVICE_NAME` if set, else `service.name`
/// from the resource attributes, else the binary's own.
pub(super) fn service_name_of(
    explicit: Option<String>,
    resource: &[(String, String)],
    default_service: &str,
) -> String {
    explicit
        .map(|name| name.trim().to_string())
        .or_else(|| {
            resource
                .iter()
                .find(|(k, _)| k == "service.name")
                .map(|(_, v)| v.clone())
        })
        .unwrap_or_else(|| default_service.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_attributes_are_read_as_the_specification_writes_them() {
        let pairs = |v: &[(&str, &str)]| {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            parse_resource_attributes(
                " deployment.environment.name = staging ,team=pricing%2Cdata,note=a%3Db%20c, "
            ),
            Ok(pairs(&[
                ("deployment.environment.name", "staging"),
                ("team", "pricing,data"),
                ("note", "a=b c"),
            ]))
        );
        assert_eq!(parse_resource_attributes(""), Ok(vec![]));
        assert_eq!(
            parse_resource_attributes("k=1,k=2,city=K%C3%B6ln"),
            Ok(pairs(&[("k", "2"), ("city", "Köln")])),
            "a later pair wins; escapes may spell UTF-8"
        );
        assert_eq!(parse_resource_attributes("k="), Ok(pairs(&[("k", "")])));
        for bad in ["novalue", "=v", "k=%zz", "k=%4", "k=%+1", "k=%ff%fe"] {
            let err = parse_resource_attributes(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
        }
    }

    #[test]
    fn the_service_name_comes_from_otel_service_name_then_the_resource_then_the_binary() {
        let resource = vec![("service.name".to_string(), "from-resource".to_string())];
        assert_eq!(
            service_name_of(Some(" explicit ".into()), &resource, "pricing-api"),
            "explicit"
        );
        assert_eq!(
            service_name_of(None, &resource, "pricing-api"),
            "from-resource"
        );
        assert_eq!(service_name_of(None, &[], "pricing-api"), "pricing-api");
    }
}
