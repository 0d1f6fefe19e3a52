//! Interned strings for server spans: route templates, standard methods and
//! the span names made of them, leaked once and then borrowed.
//!
//! Every traced request named its server span and set its method, route and
//! path as owned strings, four allocations that the export thread then
//! freed, a cross-thread free each (by perf, the allocator's share of the
//! api's CPU about tripled with every trace sampled). These strings come
//! from a small set: the router's route templates and the standard
//! methods. Each thread finds them in a map of its own; the first sight of
//! one in the process leaks it. The set is bounded ([`MAX_INTERNED`]): a
//! string past the bound, or one that is not of the set (an extension
//! method, a path that is not its route), stays owned.
//!
//! A route's strings are held by its handler ([`ServerRoute`], made when
//! the router is built), so a request to it finds them without a lookup.
//!
//! A span whose attributes are all such strings (a routed request's
//! method, route, path and scheme; a Redis call's system, operation and
//! summary) takes them already encoded ([`encoded_attributes`]): the same
//! few sets, encoded once each, instead of seven attributes built, measured,
//! encoded and dropped per traced request, which was about half of the
//! encoding's work on it (`benches/spans.rs`).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};

use super::record::AttrValue;

/// Most strings the process ever leaks here.
pub(crate) const MAX_INTERNED: usize = 1024;

/// Every string interned so far, in the process.
static GLOBAL: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);

thread_local! {
    /// This thread's view of [`GLOBAL`], read without a lock. Hashed with
    /// foldhash rather than SipHash (a fifth of a traced request's
    /// interning, by perf): what it holds is route templates and names
    /// made of them, never a string a client chose, so it needs no
    /// protection from chosen collisions.
    static LOCAL: RefCell<foldhash::HashSet<&'static str>> = RefCell::new(foldhash::HashSet::default());
}

/// Most attributes in a set [`encoded_attributes`] keeps.
const MAX_ENCODED_ATTRIBUTES: usize = 4;

/// A set of static attributes by the addresses and lengths of its keys
/// and values: a `&'static str` is never freed, so its address names it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct AttributesKey([(usize, usize, usize, usize); MAX_ENCODED_ATTRIBUTES]);

impl std::hash::Hash for AttributesKey {
    /// Hashes the values' addresses, mixed into one word: the sixteen words
    /// fed one by one were most of a lookup's cost (the map's hasher mixes
    /// the word again). Equal keys have equal addresses, so equal hashes.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mixed = self.0.iter().fold(0u64, |acc, &(_, _, value, _)| {
            (acc ^ value as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        });
        state.write_u64(mixed);
    }
}

/// Every set encoded so far, in the process: at most [`MAX_INTERNED`].
static ENCODED_SETS: Mutex<Option<HashMap<AttributesKey, &'static [u8]>>> = Mutex::new(None);

thread_local! {
    /// This thread's view of [`ENCODED_SETS`], read without a lock.
    static ENCODED: RefCell<foldhash::HashMap<AttributesKey, &'static [u8]>> =
        RefCell::new(foldhash::HashMap::default());
}

/// `attributes`, encoded as OTLP `Span.attributes` fields once in the
/// process and then borrowed; `None` for a set of more than
/// [`MAX_ENCODED_ATTRIBUTES`], or once [`MAX_INTERNED`] sets are encoded.
pub(crate) fn encoded_attributes(
    attributes: &[(&'static str, &'static str)],
) -> Option<&'static [u8]> {
    if attributes.len() > MAX_ENCODED_ATTRIBUTES {
        return None;
    }
    let mut key = AttributesKey([(0, 0, 0, 0); MAX_ENCODED_ATTRIBUTES]);
    for (slot, (k, v)) in key.0.iter_mut().zip(attributes) {
        *slot = (k.as_ptr() as usize, k.len(), v.as_ptr() as usize, v.len());
    }
    if let Some(hit) = ENCODED.with_borrow(|sets| sets.get(&key).copied()) {
        return Some(hit);
    }
    let encoded = {
        let mut sets = super::lock(&ENCODED_SETS);
        let sets = sets.get_or_insert_with(HashMap::new);
        match sets.get(&key) {
            Some(&hit) => hit,
            None if sets.len() >= MAX_INTERNED => return None,
            None => {
                let leaked: &'static [u8] =
                    Box::leak(super::encode::span_attributes(attributes).into_boxed_slice());
                sets.insert(key, leaked);
                leaked
            }
        }
    };
    ENCODED.with_borrow_mut(|sets| sets.insert(key, encoded));
    Some(encoded)
}

/// `http.response.status_code` of each status from 100 to 599, encoded
/// as a `Span.attributes` field the first time it is asked for: a server
/// span's last attribute, which otherwise was measured and encoded anew for
/// every traced request (about 270 instructions of one, callgrind).
static STATUS_ATTRIBUTES: [OnceLock<Box<[u8]>>; 500] = [const { OnceLock::new() }; 500];

/// A server span's `http.response.status_code` attribute, encoded (see
/// [`STATUS_ATTRIBUTES`]); `None` for a status outside 100 to 599.
pub(crate) fn status_attribute(status: u16) -> Option<&'static [u8]> {
    let slot = STATUS_ATTRIBUTES.get(usize::from(status).checked_sub(100)?)?;
    Some(slot.get_or_init(|| {
        super::encode::span_attributes_of(&[(
            Cow::Borrowed(super::server::STATUS_CODE),
            AttrValue::Int(i64::from(status)),
        )])
        .into_boxed_slice()
    }))
}

/// `s`, borrowed from the interned set (added to it if there is room), or
/// owned once the set is full.
pub(crate) fn intern(s: &str) -> Cow<'static, str> {
    if let Some(hit) = LOCAL.with_borrow(|local| local.get(s).copied()) {
        return Cow::Borrowed(hit);
    }
    match intern_in(&GLOBAL, MAX_INTERNED, s) {
        Some(hit) => {
            LOCAL.with_borrow_mut(|local| local.insert(hit));
            Cow::Borrowed(hit)
        }
        None => Cow::Owned(s.to_owned()),
    }
}

/// `s` from `set`, leaked into it first if it holds fewer than `max`.
fn intern_in(
    set: &Mutex<Option<HashSet<&'static str>>>,
    max: usize,
    s: &str,
) -> Option<&'static str> {
    let mut set = super::lock(set);
    let set = set.get_or_insert_with(HashSet::new);
    if let Some(&hit) = set.get(s) {
        return Some(hit);
    }
    if set.len() >= max {
        return None;
    }
    let leaked: &'static str = Box::leak(s.into());
    set.insert(leaked);
    Some(leaked)
}

/// The standard HTTP methods.
const METHODS: [&str; 9] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE",
];

/// A standard HTTP method as a static string, with its place in
/// [`METHODS`]; `None` for an extension method, which a client may make
/// up at will and so is never interned.
pub(crate) fn standard_method(method: &str) -> Option<(usize, &'static str)> {
    METHODS
        .iter()
        .position(|m| *m == method)
        .map(|i| (i, METHODS[i]))
}

/// What [`ServerStrings::of`] found for a route and a standard method.
#[derive(Clone, Copy)]
struct Routed {
    name: &'static str,
    route: &'static str,
    /// The server span's attributes for a request whose path is the route
    /// itself ([`encoded_attributes`]), if they could be kept.
    encoded: Option<&'static [u8]>,
}

/// A route template, with its server spans' strings found once per
/// standard method: its handler holds it ([`ServerRoute::of`], when the
/// router is built), so a request to it looks nothing up. The thread-local
/// map by template this replaced cost about 150 instructions per traced
/// request (callgrind).
pub struct ServerRoute {
    template: &'static str,
    /// By [`METHODS`]: `None` once the interned set was full.
    by_method: [OnceLock<Option<Routed>>; METHODS.len()],
}

impl std::fmt::Debug for ServerRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ServerRoute").field(&self.template).finish()
    }
}

/// Every [`ServerRoute`] made so far, by template.
static ROUTES: Mutex<Option<HashMap<&'static str, &'static ServerRoute>>> = Mutex::new(None);

impl ServerRoute {
    /// The route `template` (a router's, as axum writes it), made once in
    /// the process and then shared: a router built again (as the tests do)
    /// finds the same. What it keeps is bounded by the templates in the
    /// code.
    pub fn of(template: &'static str) -> &'static ServerRoute {
        let mut routes = super::lock(&ROUTES);
        routes
            .get_or_insert_with(HashMap::new)
            .entry(template)
            .or_insert_with(|| {
                Box::leak(Box::new(ServerRoute {
                    template,
                    by_method: [const { OnceLock::new() }; METHODS.len()],
                }))
            })
    }

    /// Its template.
    pub fn template(&self) -> &'static str {
        self.template
    }

    /// Its strings for the standard method `m` ([`METHODS`]), found the
    /// first time; `None` when the interned set is full.
    fn routed(&self, m: usize, method: &'static str) -> Option<Routed> {
        *self.by_method[m].get_or_init(|| {
            let (Cow::Borrowed(route), Cow::Borrowed(name)) =
                (intern(self.template), name_of(method, self.template))
            else {
                return None;
            };
            Some(Routed {
                name,
                route,
                encoded: encoded_attributes(&super::server::route_attributes(method, route)),
            })
        })
    }
}

/// The strings of a server span: its name (`{method} {route}`, or the
/// method alone), method, route and path; interned where they come from
/// the bounded set (see the module docs), owned otherwise.
pub(crate) struct ServerStrings {
    pub(crate) name: Cow<'static, str>,
    pub(crate) method: Cow<'static, str>,
    pub(crate) route: Option<Cow<'static, str>>,
    pub(crate) path: Cow<'static, str>,
    /// Its method, route, path and scheme attributes, encoded, when all
    /// are interned ([`encoded_attributes`]).
    pub(crate) encoded: Option<&'static [u8]>,
}

impl ServerStrings {
    /// The strings of a request for `path` by `method`, matched to `route`.
    pub(crate) fn of(method: &str, route: Option<&ServerRoute>, path: &str) -> Self {
        let Some((m, standard)) = standard_method(method) else {
            return Self {
                name: Cow::Owned(match route {
                    Some(route) => format!("{method} {}", route.template),
                    None => method.to_owned(),
                }),
                method: Cow::Owned(method.to_owned()),
                route: route.map(|r| Cow::Owned(r.template.to_owned())),
                path: Cow::Owned(path.to_owned()),
                encoded: None,
            };
        };
        let Some(route) = route else {
            return Self {
                name: Cow::Borrowed(standard),
                method: Cow::Borrowed(standard),
                route: None,
                path: Cow::Owned(path.to_owned()),
                encoded: None,
            };
        };
        let Some(routed) = route.routed(m, standard) else {
            // The interned set is full.
            return Self {
                name: Cow::Owned(format!("{standard} {}", route.template)),
                method: Cow::Borrowed(standard),
                path: Cow::Owned(path.to_owned()),
                route: Some(Cow::Owned(route.template.to_owned())),
                encoded: None,
            };
        };
        // A route without parameters is its own path.
        let own_path = routed.route == path;
        Self {
            name: Cow::Borrowed(routed.name),
            method: Cow::Borrowed(standard),
            route: Some(Cow::Borrowed(routed.route)),
            path: if own_path {
                Cow::Borrowed(routed.route)
            } else {
                Cow::Owned(path.to_owned())
            },
            encoded: routed.encoded.filter(|_| own_path),
        }
    }
}

/// `{method} {route}`, interned; put together on the stack when it fits.
fn name_of(method: &str, route: &str) -> Cow<'static, str> {
    const ROOM: usize = 256;
    let len = method.len() + 1 + route.len();
    if len > ROOM {
        return Cow::Owned(format!("{method} {route}"));
    }
    let mut buf = [0u8; ROOM];
    buf[..method.len()].copy_from_slice(method.as_bytes());
    buf[method.len()] = b' ';
    buf[method.len() + 1..len].copy_from_slice(route.as_bytes());
    match std::str::from_utf8(&buf[..len]) {
        Ok(name) => intern(name),
        // Cannot happen (two strs and a space), but never panic here.
        Err(_) => Cow::Owned(format!("{method} {route}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Which variant the `Cow` is, is the point here.
    #[allow(clippy::ptr_arg)]
    fn is_borrowed(s: &Cow<'static, str>) -> bool {
        matches!(s, Cow::Borrowed(_))
    }

    #[test]
    fn a_routed_request_with_a_standard_method_allocates_no_string() {
        let s = ServerStrings::of(
            "POST",
            Some(ServerRoute::of("/api/v1/price")),
            "/api/v1/price",
        );
        assert_eq!(s.name, "POST /api/v1/price");
        assert_eq!(s.method, "POST");
        assert_eq!(s.route.as_deref(), Some("/api/v1/price"));
        assert_eq!(s.path, "/api/v1/price");
        assert!(is_borrowed(&s.name) && is_borrowed(&s.method) && is_borrowed(&s.path));
        assert!(s.route.as_ref().is_some_and(is_borrowed));
        assert_eq!(
            s.encoded,
            encoded_attributes(&[
                ("http.request.method", "POST"),
                ("http.route", "/api/v1/price"),
                ("url.path", "/api/v1/price"),
                ("url.scheme", "http"),
            ])
            .map(|e| e.to_vec())
            .as_deref(),
            "its four attributes, encoded"
        );
        let seen = ServerStrings::of(
            "POST",
            Some(ServerRoute::of("/api/v1/price")),
            "/api/v1/price",
        );
        assert!(
            matches!((s.encoded, seen.encoded), (Some(a), Some(b)) if std::ptr::eq(a, b)),
            "the second request finds what the first did"
        );
        // The same string from the same set, whichever thread asks.
        let again = std::thread::spawn(|| {
            ServerStrings::of(
                "POST",
                Some(ServerRoute::of("/api/v1/price")),
                "/api/v1/price",
            )
            .name
        })
        .join()
        .unwrap();
        assert!(
            matches!((&s.name, &again), (Cow::Borrowed(a), Cow::Borrowed(b)) if std::ptr::eq(*a, *b))
        );
    }

    #[test]
    fn a_route_is_made_once_in_the_process() {
        let route = ServerRoute::of("/api/v1/route-once");
        assert_eq!(route.template(), "/api/v1/route-once");
        assert!(std::ptr::eq(route, ServerRoute::of("/api/v1/route-once")));
        let elsewhere: &'static ServerRoute =
            std::thread::spawn(|| ServerRoute::of("/api/v1/route-once"))
                .join()
                .unwrap();
        assert!(std::ptr::eq(route, elsewhere), "the same from any thread");
        assert!(!std::ptr::eq(route, ServerRoute::of("/api/v1/other")));
        // Each method has strings of its own.
        let get = ServerStrings::of("GET", Some(route), "/api/v1/route-once");
        let post = ServerStrings::of("POST", Some(route), "/api/v1/route-once");
        assert_eq!(
            (&*get.name, &*post.name),
            ("GET /api/v1/route-once", "POST /api/v1/route-once")
        );
        assert!(get.encoded.is_some() && get.encoded != post.encoded);
    }

    #[test]
    fn a_path_with_parameters_an_unmatched_path_and_an_extension_method_stay_owned() {
        let s = ServerStrings::of(
            "GET",
            Some(ServerRoute::of("/api/v1/price/{product_id}")),
            "/api/v1/price/P-7",
        );
        assert_eq!(s.name, "GET /api/v1/price/{product_id}");
        assert_eq!(s.path, "/api/v1/price/P-7");
        assert!(!is_borrowed(&s.path), "a client's path is not interned");
        assert_eq!(s.encoded, None, "its path is its own");

        let unmatched = ServerStrings::of("GET", None, "/no/such/thing");
        assert_eq!(unmatched.name, "GET");
        assert!(unmatched.route.is_none());
        assert!(!is_borrowed(&unmatched.path));

        let made_up = ServerStrings::of(
            "BREW",
            Some(ServerRoute::of("/api/v1/price")),
            "/api/v1/price",
        );
        assert_eq!(made_up.name, "BREW /api/v1/price");
        assert_eq!(made_up.method, "BREW");
        assert!(!is_borrowed(&made_up.name) && !is_borrowed(&made_up.method));
    }

    #[test]
    fn a_set_of_static_attributes_is_encoded_once() {
        let set = [("db.system", "redis"), ("db.operation.name", "HGET")];
        let first = encoded_attributes(&set).expect("encoded");
        assert_eq!(
            first,
            &super::super::encode::span_attributes(&set)[..],
            "the set's own encoding"
        );
        let again = encoded_attributes(&set).expect("encoded");
        assert!(std::ptr::eq(first, again), "encoded once, then borrowed");
        let elsewhere = std::thread::spawn(move || encoded_attributes(&set))
            .join()
            .unwrap()
            .expect("encoded");
        assert!(std::ptr::eq(first, elsewhere), "once in the process");
        let other = encoded_attributes(&[("db.system", "redis"), ("db.operation.name", "SET")]);
        assert!(
            other.is_some_and(|o| o != first),
            "another set, its own bytes"
        );
        let many = [("k", "v"); MAX_ENCODED_ATTRIBUTES + 1];
        assert_eq!(encoded_attributes(&many), None, "too many to keep");
    }

    #[test]
    fn a_status_attribute_is_encoded_once_per_status() {
        let ok = status_attribute(200).expect("a standard status");
        assert_eq!(
            ok,
            &super::super::encode::span_attributes_of(&[(
                Cow::Borrowed("http.response.status_code"),
                AttrValue::Int(200),
            )])[..]
        );
        assert!(
            std::ptr::eq(ok, status_attribute(200).unwrap()),
            "then borrowed"
        );
        assert!(status_attribute(404).is_some_and(|nf| nf != ok));
        assert!(status_attribute(100).is_some() && status_attribute(599).is_some());
        assert_eq!(status_attribute(99), None);
        assert_eq!(status_attribute(600), None);
    }

    #[test]
    fn the_set_is_bounded() {
        let set = Mutex::new(None);
        let first = intern_in(&set, 2, "/a");
        assert!(first.is_some());
        assert!(intern_in(&set, 2, "/b").is_some());
        assert_eq!(intern_in(&set, 2, "/c"), None, "past the bound");
        // What was interned before is still found, the same string.
        assert!(
            matches!((first, intern_in(&set, 2, "/a")), (Some(a), Some(b)) if std::ptr::eq(a, b))
        );
    }
}
