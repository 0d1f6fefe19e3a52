//! The accept loop, over raw TCP: a client that half-closes still gets its
//! answer, and a shutdown lets the request in flight finish, closes idle
//! connections and stops accepting.

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::helpers::spawn_app;

/// A price request's body, for product `P-1`.
const BODY: &str = r#"{"product_id":"P-1","user_location":"US-NY","is_prime_member":false}"#;

/// The head of a price request with [`BODY`], with `extra` header lines.
fn price_head(extra: &str) -> String {
    format!(
        "POST /api/v1/price HTTP/1.1\r\nhost: 127.0.0.1\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n",
        BODY.len()
    )
}

/// Reads one response head (through its blank line) and returns it.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = stream.read(&mut byte).await.expect("read a response head");
        assert_eq!(n, 1, "the connection closed inside a head: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8(head).expect("an ASCII head")
}

/// Reads what is left of a response until the server closes: its status
/// line and its body parsed as JSON.
async fn read_to_close(stream: &mut TcpStream) -> (String, Value) {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read to close");
    let text = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, serde_json::from_str(body).expect("a JSON body"))
}

#[tokio::test]
async fn a_client_that_half_closes_still_gets_its_answer() {
    let app = spawn_app().await;
    let mut stream = TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .expect("connect");
    let request = price_head("connection: close\r\n") + BODY;
    stream.write_all(request.as_bytes()).await.expect("send");
    // The client is done sending: its read side stays open for the answer.
    stream.shutdown().await.expect("half-close");

    let (status, body) = read_to_close(&mut stream).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert_eq!(body["product_id"], "P-1", "{body}");
}

#[tokio::test]
async fn shutdown_finishes_the_request_in_flight_and_closes_idle_connections() {
    let mut app = spawn_app().await;
    let addr = app.base.trim_start_matches("http://").to_owned();

    // An idle keep-alive connection: one request answered, then nothing.
    let mut idle = TcpStream::connect(&addr).await.expect("connect idle");
    let request = price_head("") + BODY;
    idle.write_all(request.as_bytes()).await.expect("send");
    let head = read_head(&mut idle).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length: "))
        .expect("a content-length")
        .parse()
        .expect("a number");
    let mut body = vec![0; length];
    idle.read_exact(&mut body).await.expect("read the body");

    // A request in flight: its head sent, its handler waiting for the body.
    // The interim 100 Continue is hyper's word that the handler has started
    // reading the body, so the request is past the accept loop.
    let mut in_flight = TcpStream::connect(&addr).await.expect("connect");
    let head = price_head("expect: 100-continue\r\n");
    in_flight.write_all(head.as_bytes()).await.expect("send");
    let interim = read_head(&mut in_flight).await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");

    app.begin_shutdown();

    // The idle connection is closed by the server.
    let mut rest = Vec::new();
    let n = idle
        .read_to_end(&mut rest)
        .await
        .expect("read the idle one");
    assert_eq!(n, 0, "the idle connection got {rest:?}");

    // The request in flight gets its answer, then its connection closes.
    in_flight
        .write_all(BODY.as_bytes())
        .await
        .expect("send the body");
    let (status, body) = read_to_close(&mut in_flight).await;
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert_eq!(body["product_id"], "P-1", "{body}");

    app.stopped().await.expect("the server stops cleanly");
    let refused = TcpStream::connect(&addr).await;
    assert!(
        refused.is_err(),
        "the listener still accepts after shutdown"
    );
}
