//! `--listen`: `/healthz`, `/readyz` and `/metrics` (Prometheus text format).

pub mod metrics;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;

use metrics::Metrics;

/// Binds `addr` and serves until the process ends. Returns the bound address (port 0 works).
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let m = metrics.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(req, m.clone()));
                let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(bound)
}

async fn handle(req: Request<hyper::body::Incoming>, m: Arc<Metrics>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, ctype, body) = match req.uri().path() {
        "/healthz" => {
            if m.healthy() {
                (200, "text/plain", "ok\n".to_string())
            } else {
                (503, "text/plain", "event loop stalled\n".to_string())
            }
        }
        "/readyz" => {
            let attached = m.sensors_attached.load(Ordering::Relaxed);
            let synced = m.discovery_synced.load(Ordering::Relaxed);
            if attached && synced {
                (200, "text/plain", "ready\n".to_string())
            } else {
                (503, "text/plain", format!("not ready: sensors_attached={attached} discovery_synced={synced}\n"))
            }
        }
        "/metrics" => (200, "application/openmetrics-text; version=1.0.0; charset=utf-8", m.encode()),
        _ => (404, "text/plain", "not found\n".to_string()),
    };
    Ok(Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default())
}
