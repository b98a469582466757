//! Answering through JupyterHub (policy `response`): an alert of a chosen rule in a notebook
//! asks the hub to stop that server, and optionally to put its user in a group the hub's
//! configuration refuses. Never on the event path: the pipeline only queues a request (at most
//! one per server per `min_interval_seconds`); a task sends it, retrying with back-off what
//! may pass later (no connection, 5xx, 429), and hands back what the hub answered, which goes
//! out as a `guard.response` alert.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;

use crate::{
    detect::alert::Alert,
    http::HttpClient,
    policy::{response::HubToken, Policy},
};

const ATTEMPTS: u32 = 5;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One answer to send.
#[derive(Clone, Debug)]
pub struct Request {
    api: String,
    token: HubToken,
    pub user: String,
    /// "" for the user's default server.
    pub server: String,
    pub trigger: String,
    stop: bool,
    group: Option<String>,
}

/// One call and what came of it: `DELETE /users/alice/server` → `202`, or the error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub what: String,
    pub answer: String,
    pub ok: bool,
    pub attempts: u32,
}

/// What the hub was asked for one alert, and answered.
#[derive(Debug)]
pub struct Outcome {
    pub request: Request,
    pub calls: Vec<Call>,
}

impl Outcome {
    /// The `guard.response` alert's fields and summary.
    pub fn fields(&self) -> (String, Vec<(&'static str, serde_json::Value)>) {
        let r = &self.request;
        let asked: Vec<String> = self.calls.iter().map(|c| format!("{} → {}", c.what, c.answer)).collect();
        let ok = self.calls.iter().all(|c| c.ok);
        let server = if r.server.is_empty() { r.user.clone() } else { format!("{}/{}", r.user, r.server) };
        let summary =
            format!("asked JupyterHub to act on {server} for {}: {}", r.trigger, if ok { "done" } else { "failed" });
        let fields = vec![
            ("jupyterhub.user", r.user.clone().into()),
            ("jupyterhub.server", r.server.clone().into()),
            ("guard.trigger", r.trigger.clone().into()),
            ("guard.response", asked.into()),
            ("guard.response_ok", ok.into()),
            ("guard.attempts", self.calls.iter().map(|c| c.attempts).sum::<u32>().into()),
        ];
        (summary, fields)
    }
}

/// The pipeline's side: decides what to ask, and queues it.
pub struct HubResponder {
    tx: mpsc::UnboundedSender<Request>,
    last: HashMap<(String, String), Instant>,
}

impl HubResponder {
    /// Starts the task that talks to the hub (on the current tokio runtime); outcomes come
    /// back on the returned receiver.
    pub fn start() -> (Self, mpsc::UnboundedReceiver<Outcome>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<Request>();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            // Made on the first answer: a node without CA certificates, or a policy without a
            // response, never needs it.
            let mut client: Option<HttpClient> = None;
            while let Some(req) = rx.recv().await {
                if client.is_none() {
                    client = match crate::http::http_client() {
                        Ok(c) => Some(c),
                        Err(e) => {
                            let what = "making the HTTP client".to_string();
                            let call = Call { what, answer: format!("{e:#}"), ok: false, attempts: 1 };
                            let _ = done_tx.send(Outcome { request: req, calls: vec![call] });
                            continue;
                        }
                    };
                }
                let Some(c) = client.as_ref() else { continue };
                let calls = answer(c, &req).await;
                if done_tx.send(Outcome { request: req, calls }).is_err() {
                    break;
                }
            }
        });
        (Self { tx, last: HashMap::new() }, done_rx)
    }

    /// Queues an answer to `a` when the policy asks for one: a rule it names, in a notebook
    /// whose user is known, not answered for that server within the interval.
    pub fn consider(&mut self, a: &Alert, policy: &Policy, now: Instant) -> bool {
        let spec = &policy.response;
        let (Some(api), Some(token)) = (&spec.hub_api_url, &policy.hub_token) else { return false };
        if !spec.rules.iter().any(|r| r == a.rule) {
            return false;
        }
        let Some(user) = a.field_str("jupyterhub.user").filter(|u| !u.is_empty()) else { return false };
        let server = a.field_str("jupyterhub.server").unwrap_or("").to_string();
        let key = (user.to_string(), server.clone());
        let interval = Duration::from_secs(spec.min_interval_seconds);
        if self.last.get(&key).is_some_and(|t| now.duration_since(*t) < interval) {
            return false;
        }
        self.last.retain(|_, t| now.duration_since(*t) < interval);
        self.last.insert(key, now);
        let req = Request {
            api: api.trim_end_matches('/').to_string(),
            token: token.clone(),
            user: user.to_string(),
            server,
            trigger: a.rule.to_string(),
            stop: spec.stop_server,
            group: spec.block_group.clone(),
        };
        self.tx.send(req).is_ok()
    }
}

/// Path segments as the hub's URLs take them (user and server names may hold `@`, `.`, …).
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn answer(client: &HttpClient, r: &Request) -> Vec<Call> {
    let mut calls = Vec::new();
    let user = segment(&r.user);
    if r.stop {
        let path = match r.server.as_str() {
            "" => format!("/users/{user}/server"),
            name => format!("/users/{user}/servers/{}", segment(name)),
        };
        // 400: the server is not running (stopped already, or by someone else).
        calls.push(call(client, r, hyper::Method::DELETE, &path, None, &[202, 204, 400]).await);
    }
    if let Some(g) = &r.group {
        let path = format!("/groups/{}/users", segment(g));
        let body = serde_json::json!({ "users": [r.user] }).to_string();
        let mut c = call(client, r, hyper::Method::POST, &path, Some(body.clone()), &[200]).await;
        if c.answer.starts_with("404") {
            // The group is made on first use.
            let made =
                call(client, r, hyper::Method::POST, &format!("/groups/{}", segment(g)), None, &[201, 409]).await;
            calls.push(made);
            c = call(client, r, hyper::Method::POST, &path, Some(body), &[200]).await;
        }
        calls.push(c);
    }
    calls
}

/// One call, retried with back-off while the answer may change (no connection, 5xx, 429).
async fn call(
    client: &HttpClient,
    r: &Request,
    method: hyper::Method,
    path: &str,
    body: Option<String>,
    ok: &[u16],
) -> Call {
    let what = format!("{method} {path}");
    let mut backoff = BACKOFF_MIN;
    let mut answer = String::new();
    for attempt in 1..=ATTEMPTS {
        let req = hyper::Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", r.api))
            .header("Authorization", format!("token {}", r.token.secret()))
            .header("Content-Type", "application/json")
            .body(Full::new(Bytes::from(body.clone().unwrap_or_default())));
        let req = match req {
            Ok(q) => q,
            Err(e) => return Call { what, answer: format!("bad request: {e}"), ok: false, attempts: attempt },
        };
        let retry = match tokio::time::timeout(REQUEST_TIMEOUT, client.request(req)).await {
            Ok(Ok(resp)) => {
                let status = resp.status().as_u16();
                let text = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                let reason: String =
                    String::from_utf8_lossy(&text).chars().filter(|c| !c.is_control()).take(200).collect();
                answer = if reason.is_empty() { status.to_string() } else { format!("{status} {reason}") };
                if ok.contains(&status) {
                    return Call { what, answer, ok: true, attempts: attempt };
                }
                status >= 500 || status == 429
            }
            Ok(Err(e)) => {
                answer = format!("no answer: {e}");
                true
            }
            Err(_) => {
                answer = format!("no answer within {} s", REQUEST_TIMEOUT.as_secs());
                true
            }
        };
        if !retry || attempt == ATTEMPTS {
            return Call { what, answer, ok: false, attempts: attempt };
        }
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
    Call { what, answer, ok: false, attempts: ATTEMPTS }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_in_paths() {
        assert_eq!(segment("alice"), "alice");
        assert_eq!(segment("a@b.org"), "a%40b.org");
        assert_eq!(segment("../x"), "..%2Fx");
    }
}
