//! A Prometheus text endpoint: `GET /metrics` on an address of the
//! operator's choosing answers the registry's metrics in the OpenMetrics
//! text format, after a refresh callback has brought the sampled ones up to
//! date. There is no authentication: bind it to loopback or a monitoring
//! network.

use crate::CliError;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

/// The content type of the OpenMetrics text format.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The endpoint's thread; dropping it stops the endpoint.
pub struct MetricsServer {
    addr: SocketAddr,
    http: Arc<tiny_http::Server>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Serves `registry` on `addr` (IP:PORT), calling `refresh` before each
    /// scrape.
    pub fn start(
        addr: &str,
        registry: Registry,
        refresh: impl Fn() + Send + 'static,
    ) -> Result<Self, CliError> {
        let failed = |message: String| CliError::MetricsListen {
            addr: addr.to_owned(),
            message,
        };
        let http = tiny_http::Server::http(loopback_unless_named(addr))
            .map_err(|e| failed(e.to_string()))?;
        let bound = http
            .server_addr()
            .to_ip()
            .ok_or_else(|| failed("not an IP address".to_owned()))?;
        let http = Arc::new(http);
        let serving = Arc::clone(&http);
        let thread = std::thread::Builder::new()
            .name("metrics".to_owned())
            .spawn(move || {
                for request in serving.incoming_requests() {
                    answer(request, &registry, &refresh);
                }
            })
            .map_err(|e| failed(e.to_string()))?;
        tracing::info!(addr = %bound, "metrics on http://{bound}/metrics");
        Ok(Self {
            addr: bound,
            http,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.http.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer(request: tiny_http::Request, registry: &Registry, refresh: &dyn Fn()) {
    let path = request
        .url()
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned();
    let response = match (request.method(), path.as_str()) {
        (tiny_http::Method::Get | tiny_http::Method::Head, "/metrics") => {
            refresh();
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, registry) {
                Ok(()) => with_type(tiny_http::Response::from_string(text), CONTENT_TYPE),
                Err(e) => tiny_http::Response::from_string(format!("encoding failed: {e}\n"))
                    .with_status_code(500),
            }
        }
        (tiny_http::Method::Get | tiny_http::Method::Head, "/") => with_type(
            tiny_http::Response::from_string("rtbackup metrics: GET /metrics\n"),
            "text/plain; charset=utf-8",
        ),
        (tiny_http::Method::Get | tiny_http::Method::Head, _) => {
            tiny_http::Response::from_string("not found: GET /metrics\n").with_status_code(404)
        }
        _ => tiny_http::Response::from_string("only GET\n").with_status_code(405),
    };
    if let Err(e) = request.respond(response) {
        tracing::debug!("metrics: cannot answer a scrape: {e}");
    }
}

fn with_type(
    r: tiny_http::Response<std::io::Cursor<Vec<u8>>>,
    content_type: &str,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    match tiny_http::Header::from_bytes("Content-Type", content_type) {
        Ok(h) => r.with_header(h),
        Err(()) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::gauge::Gauge;
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicU64, Ordering};

    fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "{request}\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn scrapes_see_refreshed_values() {
        let mut registry = Registry::with_prefix("rtbackup_test");
        let lag = Gauge::<i64>::default();
        registry.register("lag_records", "Records not yet on the server", lag.clone());
        let source = Arc::new(AtomicU64::new(7));
        let seen = Arc::clone(&source);
        let server = MetricsServer::start("127.0.0.1:0", registry, move || {
            lag.set(seen.load(Ordering::Relaxed) as i64);
        })
        .unwrap();
        let body = get(server.addr(), "GET /metrics HTTP/1.1");
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.contains("application/openmetrics-text"), "{body}");
        assert!(
            body.contains("# TYPE rtbackup_test_lag_records gauge"),
            "{body}"
        );
        assert!(body.contains("\nrtbackup_test_lag_records 7\n"), "{body}");
        assert!(body.trim_end().ends_with("# EOF"), "{body}");
        source.store(0, Ordering::Relaxed);
        let body = get(server.addr(), "GET /metrics HTTP/1.1");
        assert!(body.contains("\nrtbackup_test_lag_records 0\n"), "{body}");
        assert!(get(server.addr(), "GET /nope HTTP/1.1").starts_with("HTTP/1.1 404"));
        assert!(get(server.addr(), "POST /metrics HTTP/1.1").starts_with("HTTP/1.1 405"));
        drop(server);
    }

    #[test]
    fn an_address_in_use_is_an_error() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let e = MetricsServer::start(&addr, Registry::default(), || {})
            .err()
            .unwrap();
        assert!(e.to_string().contains(&addr), "{e}");
        let e = MetricsServer::start("no-such-host-x:1", Registry::default(), || {})
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("cannot serve metrics on"), "{e}");
    }
}

/// `addr` with the loopback address when it names only a port (`9742`,
/// `:9742`): metrics are for the host's own scraper unless an address is
/// given.
fn loopback_unless_named(addr: &str) -> String {
    let port = addr.strip_prefix(':').unwrap_or(addr);
    if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        format!("127.0.0.1:{port}")
    } else {
        addr.to_owned()
    }
}

#[cfg(test)]
mod loopback_tests {
    use super::loopback_unless_named;

    #[test]
    fn a_bare_port_is_on_loopback() {
        assert_eq!(loopback_unless_named("9742"), "127.0.0.1:9742");
        assert_eq!(loopback_unless_named(":9742"), "127.0.0.1:9742");
        assert_eq!(loopback_unless_named("0.0.0.0:9742"), "0.0.0.0:9742");
        assert_eq!(loopback_unless_named("[::1]:9742"), "[::1]:9742");
    }
}
