//! SIEM feed: a real rsyslog receives every alert over TCP; an HTTP receiver that is down, then
//! up, then restarted, and an agent restarted with alerts spooled: every alert arrives.

use std::{
    collections::BTreeSet,
    convert::Infallible,
    ffi::OsStr,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use guard_tests::*;
use http_body_util::{BodyExt, Full};
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One alert per call: `curl --version` in the notebook, with `marker` in its argv.
fn make_alert(cg: &TestCgroup, marker: &str) {
    let argv = [OsStr::new("curl"), OsStr::new("--version"), OsStr::new("-H"), OsStr::new(marker)];
    let pid = spawn_in(cg, Exec::Path(Path::new("/usr/bin/curl")), &argv).unwrap();
    wait_ok(pid).unwrap();
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn rsyslog_receives_every_alert_over_tcp() {
    privileged!();
    let dir = TempDir::new("rsyslog").unwrap();
    let port = free_port();
    let out = dir.0.join("out.log");
    let conf = dir.0.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{d}\" maxMessageSize=\"64k\")\nmodule(load=\"imtcp\")\nmodule(load=\"imudp\")\ninput(type=\"imtcp\" port=\"{port}\" address=\"127.0.0.1\")\ninput(type=\"imudp\" port=\"{port}\" address=\"127.0.0.1\")\n*.* action(type=\"omfile\" file=\"{o}\" template=\"RSYSLOG_SyslogProtocol23Format\")\n",
            d = dir.0.display(),
            o = out.display()
        ),
    )
    .unwrap();
    let mut rsyslog = std::process::Command::new("rsyslogd")
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(dir.0.join("rsyslog.pid"))
        .spawn()
        .expect("rsyslogd (Debian rsyslog; cargo xtask test installs it)");
    wait_until("rsyslog to listen", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });

    let (cg, user) = TestCgroup::tljh().unwrap();
    let spool = dir.0.join("spool");
    let file = dir.0.join("copy.json");
    let target = format!("syslog+tcp://127.0.0.1:{port}");
    let udp = format!("syslog+udp://127.0.0.1:{port}");
    let copy = format!("file:{}", file.display());
    let guard = GuardProcess::start(
        "",
        &["--output", &target, "--output", &udp, "--output", &copy, "--spool-dir", spool.to_str().unwrap()],
    )
    .unwrap();
    let markers: Vec<String> = (0..5).map(|i| format!("X-Marker: syslog-{i}")).collect();
    for m in &markers {
        make_alert(&cg, m);
    }
    std::thread::sleep(Duration::from_millis(500));
    guard.stop().unwrap();
    let sent: Vec<Value> =
        std::fs::read_to_string(&file).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // Every alert twice: once over TCP, once over UDP.
    wait_until("rsyslog to write every alert", Duration::from_secs(10), || {
        std::fs::read_to_string(&out).map(|t| t.lines().count() >= 2 * sent.len()).unwrap_or(false)
    });
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(rsyslog.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = rsyslog.wait();

    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2 * sent.len(), "one syslog message per alert and transport:\n{text}");
    for m in &markers {
        let found: Vec<&&str> =
            lines.iter().filter(|l| l.contains(m.as_str()) && l.contains(" notebook.network_tool ")).collect();
        assert_eq!(found.len(), 2, "{m} over TCP and UDP:\n{text}");
        let line = found[0];
        // RFC 5424 as rsyslog parsed it: PRI/VERSION, APP-NAME and MSGID in place, the alert as MSG.
        assert!(line.starts_with("<132>1 "), "local0.warning: {line}");
        assert!(line.contains(" notebook-guard ") && line.contains(" notebook.network_tool - "), "{line}");
        let json = &line[line.find('{').unwrap()..];
        let v: Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {json}"));
        assert_eq!(v["output_fields"]["jupyterhub.user"], user.as_str());
    }
    assert!(lines.iter().any(|l| l.contains(" guard.started ")) && lines.iter().any(|l| l.contains(" guard.stopped ")));
}

/// A Falco-style HTTP receiver that can be stopped and started on the same port.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Value>>>,
    rt: tokio::runtime::Runtime,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Receiver {
    fn new() -> Self {
        Self { port: free_port(), got: Arc::default(), rt: tokio::runtime::Runtime::new().unwrap(), task: None }
    }

    fn up(&mut self) {
        let got = self.got.clone();
        let listener = self.rt.block_on(tokio::net::TcpListener::bind(("127.0.0.1", self.port))).unwrap();
        self.task = Some(self.rt.spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else { return };
                let got = got.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let got = got.clone();
                        async move {
                            let hec = req.uri().path() == "/services/collector/event";
                            let auth = req
                                .headers()
                                .get("authorization")
                                .and_then(|h| h.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            // Like falcosidekick: a valid alert has rule, priority, time, output_fields.
                            let valid = |v: &Value| {
                                v["rule"].is_string()
                                    && v["priority"].is_string()
                                    && v["time"].is_string()
                                    && v["output_fields"].is_object()
                            };
                            let ok = if hec {
                                // Splunk HEC: a batch of {"event": …} objects, token in the header.
                                let events: Vec<Value> = serde_json::Deserializer::from_slice(&body)
                                    .into_iter::<Value>()
                                    .filter_map(Result::ok)
                                    .collect();
                                let ok = auth == "Splunk hec-test-token"
                                    && !events.is_empty()
                                    && events.iter().all(|e| valid(&e["event"]));
                                if ok {
                                    got.lock().unwrap().extend(events.into_iter().map(|e| e["event"].clone()));
                                }
                                ok
                            } else {
                                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                                let ok = valid(&v);
                                if ok {
                                    got.lock().unwrap().push(v);
                                }
                                ok
                            };
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(if ok { 200 } else { 400 })
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(s), svc).await;
                });
            }
        }));
    }

    fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = self.rt.block_on(t);
        }
    }

    /// Markers of one test's alerts (tests run in parallel and every agent sees every notebook).
    fn markers(&self, user: &str) -> BTreeSet<String> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["output_fields"]["jupyterhub.user"] == user)
            .filter_map(|v| v["output_fields"]["proc.cmdline"].as_str())
            .filter_map(|c| c.split("X-Marker: ").nth(1).map(str::to_string))
            .collect()
    }
}

#[test]
fn http_sink_delivers_everything_across_receiver_and_agent_restarts() {
    privileged!();
    let dir = TempDir::new("http-sink").unwrap();
    let spool = dir.0.join("spool");
    let (cg, user) = TestCgroup::tljh().unwrap();
    let mut rx = Receiver::new();
    let target = format!("http://127.0.0.1:{}/", rx.port);
    let args = ["--output", target.as_str(), "--spool-dir", spool.to_str().unwrap()];

    // Receiver down: alerts are spooled; the agent stops with them undelivered.
    let guard = GuardProcess::start("", &args).unwrap();
    for i in 0..3 {
        make_alert(&cg, &format!("X-Marker: m{i}"));
    }
    std::thread::sleep(Duration::from_millis(500));
    guard.stop().unwrap();
    assert!(rx.markers(&user).is_empty());

    // Receiver up, agent started again on the same spool: the old alerts go out first.
    rx.up();
    let guard = GuardProcess::start("", &args).unwrap();
    wait_until("spooled alerts after restart", Duration::from_secs(15), || rx.markers(&user).len() >= 3);
    for i in 3..6 {
        make_alert(&cg, &format!("X-Marker: m{i}"));
    }
    wait_until("live alerts", Duration::from_secs(15), || rx.markers(&user).len() >= 6);

    // Receiver restarted mid-stream.
    rx.down();
    for i in 6..9 {
        make_alert(&cg, &format!("X-Marker: m{i}"));
    }
    std::thread::sleep(Duration::from_millis(800));
    rx.up();
    wait_until("alerts sent while the receiver was down", Duration::from_secs(30), || rx.markers(&user).len() >= 9);
    guard.stop().unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let want: BTreeSet<String> = (0..9).map(|i| format!("m{i}")).collect();
    assert_eq!(rx.markers(&user), want, "every alert arrived");
    let got = rx.got.lock().unwrap().clone();
    assert!(got.iter().any(|v| v["rule"] == "guard.started"));
    assert!(got.iter().all(|v| v["source"] == "syscall" && v["hostname"].is_string()));
}

#[test]
fn splunk_hec_batches_with_the_token_from_the_environment() {
    privileged!();
    let dir = TempDir::new("hec").unwrap();
    let (cg, user) = TestCgroup::tljh().unwrap();
    let mut rx = Receiver::new();
    rx.up();
    let target = format!("splunk-hec+http://127.0.0.1:{}?token_env=GUARD_TEST_HEC", rx.port);
    let spool = dir.0.join("spool");
    let env = [("GUARD_TEST_HEC", OsStr::new("hec-test-token"))];
    let guard =
        GuardProcess::start_env("", &["--output", &target, "--spool-dir", spool.to_str().unwrap()], &env).unwrap();
    for i in 0..4 {
        make_alert(&cg, &format!("X-Marker: h{i}"));
    }
    wait_until("HEC events", Duration::from_secs(15), || rx.markers(&user).len() >= 4);
    guard.stop().unwrap();
    assert_eq!(rx.markers(&user), (0..4).map(|i| format!("h{i}")).collect());
}

/// Reads RFC 6587 octet-counted frames from a stream until it closes.
async fn read_frames<R: tokio::io::AsyncRead + Unpin>(mut r: R, out: Arc<Mutex<Vec<String>>>) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(sp) = buf.iter().position(|b| *b == b' ') {
            let Ok(len) = std::str::from_utf8(&buf[..sp]).unwrap_or("x").parse::<usize>() else { return };
            if buf.len() < sp + 1 + len {
                break;
            }
            let msg = String::from_utf8_lossy(&buf[sp + 1..sp + 1 + len]).into_owned();
            out.lock().unwrap().push(msg);
            buf.drain(..sp + 1 + len);
        }
    }
}

#[test]
fn syslog_over_tls_verifies_the_server_and_frames_every_alert() {
    privileged!();
    let dir = TempDir::new("tls").unwrap();
    // A self-signed certificate for localhost; the agent trusts it through ?ca=.
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let ca = dir.0.join("ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    let got: Arc<Mutex<Vec<String>>> = Arc::default();
    let g2 = got.clone();
    rt.spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else { return };
            let (acceptor, got) = (acceptor.clone(), g2.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    read_frames(tls, got).await;
                }
            });
        }
    });

    let (cg, user) = TestCgroup::tljh().unwrap();
    let target = format!("syslog+tls://localhost:{port}?ca={}", ca.display());
    let spool = dir.0.join("spool");
    let guard = GuardProcess::start("", &["--output", &target, "--spool-dir", spool.to_str().unwrap()]).unwrap();
    for i in 0..3 {
        make_alert(&cg, &format!("X-Marker: tls-{i}"));
    }
    wait_until("alerts over TLS", Duration::from_secs(15), || {
        let g = got.lock().unwrap();
        (0..3).all(|i| g.iter().any(|m| m.contains(&format!("tls-{i}")) && m.contains(&user)))
    });
    guard.stop().unwrap();
    let msgs = got.lock().unwrap().clone();
    for m in msgs.iter().filter(|m| m.contains(&user)) {
        assert!(m.starts_with('<') && m.contains(" notebook-guard "), "{m}");
        let json = &m[m.find('{').unwrap()..];
        serde_json::from_str::<Value>(json).unwrap();
    }
}
