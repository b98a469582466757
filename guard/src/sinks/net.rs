//! Network sinks with at-least-once delivery: every alert goes to the sink's disk spool first;
//! a worker delivers from the spool in order, retrying with exponential back-off and jitter,
//! and removes alerts only once delivered. Alerts spooled when the agent stops are delivered
//! after it starts again. Duplicates are possible (an alert delivered just before a crash, not
//! yet committed), never gaps.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpStream, UdpSocket},
    sync::{watch, Notify},
};

use super::{spool::Spool, syslog, Sink};
use crate::policy::outputs::NetTarget;
use crate::{detect::alert::Alert, server::metrics::Metrics};

/// Records sent per attempt (Splunk HEC batches them in one request).
const BATCH: usize = 64;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);

pub enum SendError {
    /// Try again later (receiver down, timeout, 5xx, 429).
    Retry(String),
    /// The receiver refused this alert for good (400): drop it, count it.
    Reject(String),
}

use crate::http::{http_client, HttpClient};

enum Transport {
    Http { client: HttpClient, url: hyper::Uri },
    Splunk { client: HttpClient, url: hyper::Uri, token: String },
    Stream { host: String, port: u16, tls: Option<tokio_rustls::TlsConnector>, conn: Option<Box<dyn Conn>> },
    Udp { host: String, port: u16, sock: Option<UdpSocket> },
}

trait Conn: tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncWrite + Unpin + Send> Conn for T {}

fn tls_connector(ca: Option<&Path>) -> Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in CertificateDer::pem_file_iter(path).with_context(|| format!("reading {}", path.display()))? {
                roots.add(cert.with_context(|| format!("parsing {}", path.display()))?)?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

impl Transport {
    fn new(target: &NetTarget) -> Result<Self> {
        Ok(match target {
            NetTarget::Http(url) => Transport::Http { client: http_client()?, url: url.parse()? },
            NetTarget::Splunk { url, token } => {
                Transport::Splunk { client: http_client()?, url: url.parse()?, token: token.read()? }
            }
            NetTarget::Syslog { proto, host, port, ca } => match proto.as_str() {
                "udp" => Transport::Udp { host: host.clone(), port: *port, sock: None },
                "tcp" => Transport::Stream { host: host.clone(), port: *port, tls: None, conn: None },
                "tls" => Transport::Stream {
                    host: host.clone(),
                    port: *port,
                    tls: Some(tls_connector(ca.as_deref())?),
                    conn: None,
                },
                p => bail!("unknown syslog transport {p}"),
            },
        })
    }

    async fn post(client: &HttpClient, url: &hyper::Uri, body: Vec<u8>, auth: Option<&str>) -> Result<(), SendError> {
        let mut req = hyper::Request::post(url.clone()).header("content-type", "application/json");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let req = req.body(Full::new(Bytes::from(body))).map_err(|e| SendError::Reject(e.to_string()))?;
        let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
            .await
            .map_err(|_| SendError::Retry("timed out".into()))?
            .map_err(|e| SendError::Retry(format!("{e}")))?;
        let status = resp.status();
        let _ = resp.into_body().collect().await;
        match status.as_u16() {
            200..=299 => Ok(()),
            408 | 429 => Err(SendError::Retry(format!("HTTP {status}"))),
            400..=499 => Err(SendError::Reject(format!("HTTP {status}"))),
            _ => Err(SendError::Retry(format!("HTTP {status}"))),
        }
    }

    /// Delivers a prefix of `records`; returns how many.
    async fn send(&mut self, records: &[Vec<u8>]) -> Result<usize, SendError> {
        match self {
            // Falco's format, one alert per request: falcosidekick takes it as is.
            Transport::Http { client, url } => {
                Self::post(client, url, records[0].clone(), None).await?;
                Ok(1)
            }
            Transport::Splunk { client, url, token } => {
                let mut body = Vec::new();
                for r in records {
                    let event: serde_json::Value = serde_json::from_slice(r).unwrap_or(serde_json::Value::Null);
                    let host = event.get("hostname").cloned().unwrap_or_default();
                    serde_json::to_writer(&mut body, &serde_json::json!({"event": event, "host": host, "sourcetype": "_json", "source": "notebook-guard"}))
                        .map_err(|e| SendError::Reject(e.to_string()))?;
                }
                Self::post(client, url, body, Some(&format!("Splunk {token}"))).await?;
                Ok(records.len())
            }
            Transport::Stream { host, port, tls, conn } => {
                if conn.is_none() {
                    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect((host.as_str(), *port)))
                        .await
                        .map_err(|_| SendError::Retry("connect timed out".into()))?
                        .map_err(|e| SendError::Retry(format!("connect: {e}")))?;
                    *conn = Some(match tls {
                        None => Box::new(tcp),
                        Some(c) => {
                            let name = rustls::pki_types::ServerName::try_from(host.clone())
                                .map_err(|e| SendError::Reject(format!("server name: {e}")))?;
                            Box::new(c.connect(name, tcp).await.map_err(|e| SendError::Retry(format!("TLS: {e}")))?)
                        }
                    });
                }
                let mut buf = Vec::new();
                for r in records {
                    buf.extend_from_slice(&syslog::frame(&syslog::message(r)));
                }
                let w = conn.as_mut().expect("connected above");
                let res = async {
                    w.write_all(&buf).await?;
                    w.flush().await
                }
                .await;
                if let Err(e) = res {
                    *conn = None;
                    return Err(SendError::Retry(format!("write: {e}")));
                }
                Ok(records.len())
            }
            Transport::Udp { host, port, sock } => {
                if sock.is_none() {
                    let s = UdpSocket::bind(("0.0.0.0", 0)).await.map_err(|e| SendError::Retry(e.to_string()))?;
                    s.connect((host.as_str(), *port)).await.map_err(|e| SendError::Retry(e.to_string()))?;
                    *sock = Some(s);
                }
                let s = sock.as_ref().expect("bound above");
                for r in records {
                    s.send(&syslog::message(r)).await.map_err(|e| SendError::Retry(e.to_string()))?;
                }
                Ok(records.len())
            }
        }
    }
}

/// The pipeline's side: append to the spool, wake the worker.
pub struct NetSink {
    name: String,
    spool: Arc<Mutex<Spool>>,
    notify: Arc<Notify>,
    metrics: Arc<Metrics>,
}

impl Sink for NetSink {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn send(&mut self, alert: &Alert) -> std::io::Result<()> {
        let line = serde_json::to_vec(alert)?;
        let mut spool = self.spool.lock().map_err(|_| std::io::Error::other("spool lock poisoned"))?;
        spool.append(&line)?;
        if spool.lost > 0 {
            // The cap forced the oldest alerts out: say so, in the same feed.
            let lost = std::mem::take(&mut spool.lost);
            self.metrics
                .lost
                .get_or_create(&crate::server::metrics::LossLabels {
                    stage: format!("spool:{}", self.name),
                    r#type: "alert".into(),
                })
                .inc_by(lost);
            tracing::error!(sink = %self.name, lost, "spool full: oldest alerts dropped");
            let note = serde_json::json!({
                "time": crate::clock::rfc3339(time::OffsetDateTime::now_utc()), "rule": "guard.alerts_dropped",
                "priority": "Error", "source": "syscall", "hostname": alert.hostname,
                "output": format!("notebook-guard dropped {lost} undelivered alerts for sink {} (spool full)", self.name),
                "tags": ["guard", "health"], "output_fields": {"guard.count": lost, "guard.sink": self.name, "guard.action": "alert"}
            });
            spool.append(note.to_string().as_bytes())?;
        }
        drop(spool);
        self.notify.notify_one();
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.spool.lock().map_err(|_| std::io::Error::other("spool lock poisoned"))?.sync()
    }
}

fn sanitize(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect()
}

/// Opens the sink's spool under `spool_dir` and starts its delivery worker. The worker stops
/// when `stop` turns true, after trying for a few seconds to deliver what is left.
pub fn start(
    name: &str,
    target: &NetTarget,
    spool_dir: &Path,
    max_bytes: u64,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> Result<(Box<dyn Sink>, tokio::task::JoinHandle<()>)> {
    let dir: PathBuf = spool_dir.join(sanitize(name));
    let spool =
        Arc::new(Mutex::new(Spool::open(&dir, max_bytes).with_context(|| format!("opening spool {}", dir.display()))?));
    let transport = Transport::new(target).with_context(|| format!("output {name}"))?;
    let notify = Arc::new(Notify::new());
    let worker =
        tokio::spawn(deliver(name.to_string(), transport, spool.clone(), notify.clone(), metrics.clone(), stop));
    Ok((Box::new(NetSink { name: name.to_string(), spool, notify, metrics }), worker))
}

async fn deliver(
    name: String,
    mut transport: Transport,
    spool: Arc<Mutex<Spool>>,
    notify: Arc<Notify>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    use crate::server::metrics::SinkLabels;
    let label = SinkLabels { sink: name.clone() };
    let mut backoff = BACKOFF_MIN;
    let mut stopping: Option<tokio::time::Instant> = None;
    loop {
        let batch = {
            let Ok(mut s) = spool.lock() else { return };
            metrics.sink_pending.get_or_create(&label).set(s.pending_bytes() as i64);
            s.peek(BATCH).unwrap_or_default()
        };
        if let Some(deadline) = stopping {
            if batch.is_empty() || tokio::time::Instant::now() > deadline {
                return;
            }
        }
        if batch.is_empty() {
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => stopping = Some(tokio::time::Instant::now() + SHUTDOWN_DRAIN),
            }
            continue;
        }
        let records: Vec<Vec<u8>> = batch.iter().map(|(r, _)| r.clone()).collect();
        match transport.send(&records).await {
            Ok(n) if n > 0 => {
                if let Ok(mut s) = spool.lock() {
                    if let Err(e) = s.commit(batch[n - 1].1) {
                        tracing::error!(sink = %name, error = %e, "committing the spool cursor");
                    }
                }
                metrics.sink_delivered.get_or_create(&label).inc_by(n as u64);
                backoff = BACKOFF_MIN;
            }
            Ok(_) => {}
            Err(SendError::Reject(e)) => {
                tracing::error!(sink = %name, error = %e, "receiver rejected an alert; dropping it");
                metrics.sink_errors.get_or_create(&label).inc();
                if let Ok(mut s) = spool.lock() {
                    let _ = s.commit(batch[0].1);
                }
            }
            Err(SendError::Retry(e)) => {
                metrics.sink_retries.get_or_create(&label).inc();
                if backoff == BACKOFF_MIN {
                    tracing::warn!(sink = %name, error = %e, "delivery failed; retrying with back-off");
                }
                let jitter = Duration::from_millis(rand::random::<u64>() % (backoff.as_millis() as u64 / 2 + 1));
                let wait = backoff + jitter;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                if stopping.is_some() {
                    tokio::time::sleep(wait.min(Duration::from_millis(200))).await;
                    continue;
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => stopping = Some(tokio::time::Instant::now() + SHUTDOWN_DRAIN),
                }
            }
        }
    }
}
