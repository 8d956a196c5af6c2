//! Clock control on the management listener (`server.clock_control`): on in
//! the `test` preset, 404 elsewhere; moving it moves what the server decides.

mod common;

use common::*;
use serde_json::{json, Value};

async fn post(server: &Server, path: &str, body: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", server.mgmt_url))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("management listener answers");
    let status = r.status().as_u16();
    let v = serde_json::from_slice(&r.bytes().await.unwrap_or_default()).unwrap_or(Value::Null);
    (status, v)
}

#[tokio::test]
async fn advancing_the_clock_expires_an_order() {
    let server = Server::start(ServerOpts::test());
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.register().await;
    let (order_url, order) = c.new_order(&["later.example.com"]).await;
    assert_eq!(order["status"], "pending");

    let (status, v) = post(&server, "/clock/advance", r#"{"seconds": 7200}"#).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["offsetSeconds"], 7200, "{v}");
    let r = reqwest::get(format!("{}/clock", server.mgmt_url))
        .await
        .expect("GET /clock");
    let v: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("JSON");
    assert_eq!(v["offsetSeconds"], 7200);

    // The test preset's orders live an hour: two hours later it is invalid.
    // (The nonce the client holds is two hours old too: badNonce.)
    let r = c.post_as_get(&order_url).await;
    assert_problem(&r, 400, "badNonce");
    let r = c.post_as_get(&order_url).await;
    assert_eq!(r.json()["status"], "invalid", "{r}");
}

/// The clock moves at most 100 years ahead in all: an advance past that is
/// refused (it used to push time past year 9999 and panic every request).
#[tokio::test]
async fn the_clock_stops_100_years_ahead() {
    let server = Server::start(ServerOpts::test());
    let ten_years: i64 = 10 * 366 * 86_400;
    for _ in 0..10 {
        let (status, v) = post(
            &server,
            "/clock/advance",
            &format!(r#"{{"seconds": {ten_years}}}"#),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    for _ in 0..3 {
        let (status, v) = post(
            &server,
            "/clock/advance",
            &format!(r#"{{"seconds": {ten_years}}}"#),
        )
        .await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["type"], "urn:ietf:params:acme:error:malformed", "{v}");
        assert!(
            v["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("100 years"),
            "{v}"
        );
    }
    let r = reqwest::get(format!("{}/clock", server.mgmt_url))
        .await
        .expect("GET /clock");
    let v: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("JSON");
    assert_eq!(v["offsetSeconds"], 10 * ten_years);
    // The server still works a century on: an account, an order.
    let c = AcmeClient::new(&server, KeyKind::Es256).await;
    c.register().await;
    c.new_order(&["century.example.com"]).await;
}

#[tokio::test]
async fn bad_advances_are_refused_and_change_nothing() {
    let server = Server::start(ServerOpts::test());
    for body in [
        "",
        "{}",
        r#"{"seconds": -5}"#,
        r#"{"seconds": "60"}"#,
        r#"{"seconds": 1e99}"#,
        r#"{"seconds": 60, "extra": 1}"#,
        r#"{"seconds": 999999999999}"#,
    ] {
        let (status, v) = post(&server, "/clock/advance", body).await;
        assert_eq!(status, 400, "{body}: {v}");
        assert_eq!(v["type"], "urn:ietf:params:acme:error:malformed", "{v}");
    }
    let r = reqwest::get(format!("{}/clock", server.mgmt_url))
        .await
        .expect("GET /clock");
    let v: Value = serde_json::from_slice(&r.bytes().await.expect("body")).expect("JSON");
    assert_eq!(v["offsetSeconds"], 0);
}

#[tokio::test]
async fn clock_control_is_off_unless_enabled() {
    let server = Server::start(ServerOpts::test().with_env("CAIRN_SERVER_CLOCK_CONTROL", "false"));
    let (status, _) = post(
        &server,
        "/clock/advance",
        &json!({"seconds": 60}).to_string(),
    )
    .await;
    assert_eq!(status, 404);
    let r = reqwest::get(format!("{}/clock", server.mgmt_url))
        .await
        .expect("GET /clock");
    assert_eq!(r.status().as_u16(), 404);
}
