//! Serving a router (feature `serve`): helpers for binaries such as the
//! examples. A host that runs its own server mounts [`router`](crate::router)
//! instead and needs none of this.
//!
//! - [`bind`] a listener, then [`serve`] plain HTTP/1.1 and HTTP/2 (h2c), or
//!   [`serve_tls`] HTTPS with rustls (HTTP/2 by ALPN) from certificate and
//!   key PEM files ([`tls_config_from_pem_files`]);
//! - both stop accepting when the `shutdown` future completes and let
//!   in-flight requests finish ([`serve_tls`]: for at most a grace period);
//!   [`shutdown_signal`] completes on Ctrl-C or `SIGTERM`.
//!
//! ```no_run
//! # async fn run(router: axum::Router) -> std::io::Result<()> {
//! use transport_http::serve;
//!
//! let listener = serve::bind("127.0.0.1:8080").await?;
//! serve::serve(listener, router, serve::shutdown_signal()).await
//! # }
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sync_core::{Error, Result};
use tokio::net::{TcpListener, ToSocketAddrs};

/// Binds a TCP listener on `addr` (e.g. `0.0.0.0:8080`, or `127.0.0.1:0`
/// for any free port; [`TcpListener::local_addr`] tells which).
pub async fn bind(addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `router` on `listener` (HTTP/1.1 and HTTP/2 with prior knowledge)
/// until `shutdown` completes; then stops accepting connections and returns
/// once every in-flight request has been answered.
///
/// Handlers can read the peer's address with
/// `axum::extract::ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, router.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown)
        .await
}

/// A rustls server configuration from a certificate chain and a private key
/// in PEM files, with the aws-lc-rs provider named explicitly (no
/// process-wide default is needed), TLS 1.2 and 1.3, and ALPN `h2` and
/// `http/1.1`.
///
/// Errors: `InvalidInput` naming the file that cannot be read or holds no
/// usable certificate or key, or a key that does not match the certificate.
pub fn tls_config_from_pem_files(cert_pem: &Path, key_pem: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let read = |path: &Path, what: &str| {
        std::fs::read(path)
            .map_err(|e| Error::invalid(format!("cannot read the TLS {what} {}: {e}", path.display())))
    };
    tls_config_from_pem(&read(cert_pem, "certificate")?, &read(key_pem, "key")?)
}

/// [`tls_config_from_pem_files`] from PEM text already in memory.
pub fn tls_config_from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::invalid(format!("the TLS certificate PEM does not parse: {e}")))?;
    if certs.is_empty() {
        return Err(Error::invalid("the TLS certificate PEM holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| Error::invalid(format!("the TLS key PEM holds no usable private key: {e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::internal(format!("TLS protocol versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::invalid(format!("the TLS certificate and key do not fit together: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `router` over TLS on `listener` until `shutdown` completes; then
/// stops accepting connections and lets in-flight requests finish for at
/// most `grace` (`None`: as long as they take) before closing what is left.
pub async fn serve_tls(
    listener: TcpListener,
    router: Router,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Option<Duration>,
) -> io::Result<()> {
    let handle = axum_server::Handle::new();
    let trigger = handle.clone();
    let stopper = tokio::spawn(async move {
        shutdown.await;
        trigger.graceful_shutdown(grace);
    });
    let server = axum_server::from_tcp_rustls(
        listener.into_std()?,
        axum_server::tls_rustls::RustlsConfig::from_config(tls),
    )?
    .handle(handle);
    let result = server.serve(router.into_make_service_with_connect_info::<SocketAddr>()).await;
    stopper.abort();
    result
}

/// Completes on Ctrl-C or, on Unix, `SIGTERM` (what a container runtime
/// sends to stop a process). Should a handler fail to install, this waits on
/// the other one alone and logs why.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C: shutting down"),
        () = term => tracing::info!("SIGTERM: shutting down"),
    }
}
