//! SIP over TLS (RFC 3261 s.26, RFC 5630): rustls with the ring provider,
//! TLS 1.2 and 1.3.
//!
//! The served certificate is a [`CertificateStore`]: every handshake asks
//! it for the current certificate, and it is replaced — not the acceptor —
//! when the PEM files change (checked every few seconds) or on SIGHUP.
//! Connections already open keep the session they negotiated; a file that
//! does not load keeps the old certificate and logs an error.
//!
//! A handshake is bounded by `tls_handshake_timeout`: a client that opens
//! a connection and never finishes (or never starts) its handshake is
//! closed, holding its place in the connection limits only until then.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::limits::ConnectionLimits;
use super::stream::{accept_admitted, serve_stream, Admitted, NewConnection, StreamContext};
use super::Transport;
use crate::config::TlsFiles;
use crate::core::metric;
use crate::{Error, Result};

/// Certificate reloads, labelled `result` = `ok` or `error`.
pub const TLS_RELOADS: &str = "dialtone_sip_tls_reloads_total";

/// The crypto provider of every TLS connection of the gateway.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The certificate the gateway serves, swappable while it runs.
#[derive(Debug)]
pub struct CertificateStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// Modification times of the files the current certificate was read
    /// from: a change makes the watcher reload.
    loaded_from: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl CertificateStore {
    /// Loads the certificate and key; an error here stops the start-up.
    pub fn load(files: &TlsFiles) -> Result<Arc<CertificateStore>> {
        let stamps = modified(&files.cert, &files.key);
        let key = load_certified_key(&files.cert, &files.key).map_err(Error::Config)?;
        Ok(Arc::new(CertificateStore {
            cert: files.cert.clone(),
            key: files.key.clone(),
            current: RwLock::new(Arc::new(key)),
            loaded_from: Mutex::new(stamps),
        }))
    }

    /// Reads the files again and serves what they hold from the next
    /// handshake on. On error the current certificate stays.
    pub fn reload(&self) -> std::result::Result<(), String> {
        let stamps = modified(&self.cert, &self.key);
        let key = load_certified_key(&self.cert, &self.key)?;
        if let Ok(mut current) = self.current.write() {
            *current = Arc::new(key);
        }
        if let Ok(mut loaded) = self.loaded_from.lock() {
            *loaded = stamps;
        }
        Ok(())
    }

    /// Whether either file changed since the last load (or attempt).
    fn changed(&self) -> bool {
        let now = modified(&self.cert, &self.key);
        self.loaded_from.lock().is_ok_and(|l| *l != now)
    }

    fn reload_logged(&self, why: &str) {
        match self.reload() {
            Ok(()) => {
                metrics::counter!(TLS_RELOADS, "result" => "ok").increment(1);
                tracing::info!(cert = %self.cert.display(), why, "SIP TLS certificate reloaded");
            }
            Err(e) => {
                metrics::counter!(TLS_RELOADS, "result" => "error").increment(1);
                // Not retried until the files change again (or SIGHUP).
                if let Ok(mut loaded) = self.loaded_from.lock() {
                    *loaded = modified(&self.cert, &self.key);
                }
                tracing::error!(
                    cert = %self.cert.display(),
                    error = %e,
                    why,
                    "SIP TLS certificate not reloaded; still serving the previous one"
                );
            }
        }
    }
}

impl ResolvesServerCert for CertificateStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

fn modified(cert: &Path, key: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let at = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (at(cert), at(key))
}

/// The chain and key of the PEM files, checked to belong together.
fn load_certified_key(cert: &Path, key: &Path) -> std::result::Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the TLS certificate {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("no certificate in {}", cert.display()));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("cannot read the TLS key {}: {e}", key.display()))?;
    CertifiedKey::from_der(chain, private, &provider()).map_err(|e| {
        format!(
            "the TLS key {} does not fit the certificate {}: {e}",
            key.display(),
            cert.display()
        )
    })
}

/// The server side: TLS 1.2 and 1.3, no client certificates, the store's
/// current certificate.
pub(super) fn acceptor(store: Arc<CertificateStore>) -> Result<TlsAcceptor> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(store);
    // Session tickets and a session cache let phones that reconnect
    // (re-REGISTER on a new connection) skip the full handshake.
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The client side, for connections the node opens (a `sips:` or
/// `transport=tls` destination whose connection is gone): the platform's
/// roots plus the configured CA file, host checked against the IP address
/// (destinations are IP literals: no DNS).
pub(super) fn connector(ca: Option<&Path>) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(ca) = ca {
        let certs = CertificateDer::pem_file_iter(ca)
            .and_then(|certs| certs.collect::<std::result::Result<Vec<_>, _>>())
            .map_err(|e| Error::Config(format!("cannot read the TLS CA {}: {e}", ca.display())))?;
        let (added, _) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(Error::Config(format!(
                "no usable certificate in the TLS CA {}",
                ca.display()
            )));
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| Error::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Reloads the store when its files change and on SIGHUP, until shutdown.
pub(super) async fn watch_certificate(
    store: Arc<CertificateStore>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: certificate reload by file change only");
            None
        }
    };
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let hup = async {
            match hangup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = hup => store.reload_logged("SIGHUP"),
            _ = tick.tick() => {
                if store.changed() {
                    store.reload_logged("file changed");
                }
            }
        }
    }
}

/// What the TLS and WSS listeners share.
#[derive(Clone)]
pub(super) struct SecureListener {
    pub acceptor: TlsAcceptor,
    pub handshake_timeout: Duration,
}

impl SecureListener {
    /// The TLS handshake on `stream`, within the timeout; `None` (counted
    /// with the reason) when it fails or takes too long.
    pub(super) async fn handshake(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        match tokio::time::timeout(self.handshake_timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                metrics::counter!(metric::DROPPED, "reason" => "tls_handshake_failed").increment(1);
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                None
            }
            Err(_) => {
                metrics::counter!(metric::DROPPED, "reason" => "tls_handshake_timeout")
                    .increment(1);
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        }
    }
}

/// Accepts SIP over TLS: the connection limits first, then the handshake
/// (in the connection's own task, so a slow one holds up nobody), then
/// [`serve_stream`] as for TCP.
pub(super) async fn tls_accept_loop(
    cx: StreamContext,
    listener: TcpListener,
    limits: Arc<ConnectionLimits>,
    secure: SecureListener,
) {
    let mut shutdown = cx.shutdown.clone();
    while let Some(Admitted {
        stream,
        peer,
        local,
        permit,
    }) = accept_admitted(&listener, &mut shutdown, &limits, Transport::Tls).await
    {
        let cx = cx.clone();
        let secure = secure.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut stop = cx.shutdown.clone();
            // Boxed, so that the connection's task does not keep the
            // handshake's space (the TLS stream inline) while it serves.
            let tls = Box::pin(async move {
                tokio::select! {
                    _ = stop.changed() => None,
                    s = secure.handshake(stream, peer) => s,
                }
            })
            .await;
            let Some(tls) = tls else {
                return;
            };
            let conn = NewConnection::new(Transport::Tls, peer, local, &cx.transports);
            let (reader, writer) = tokio::io::split(tls);
            serve_stream(cx, conn, reader, writer).await;
        });
    }
}

/// Opens a TLS connection to `dest` for a message of ours and serves it;
/// `first` is the first thing written on it. The peer's certificate must
/// name `dest`'s IP address and chain to a trusted root.
pub(super) async fn connect_tls(
    cx: StreamContext,
    connector: TlsConnector,
    handshake_timeout: Duration,
    dest: SocketAddr,
    first: Bytes,
) {
    let connect = async {
        let tcp = TcpStream::connect(dest).await?;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().unwrap_or(dest);
        let name = ServerName::IpAddress(dest.ip().into());
        let tls = connector.connect(name, tcp).await?;
        Ok::<_, std::io::Error>((tls, local))
    };
    let (tls, local) = match tokio::time::timeout(handshake_timeout, connect).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            metrics::counter!(metric::DROPPED, "reason" => "tls_connect_failed").increment(1);
            tracing::debug!(%dest, error = %e, "TLS connect failed");
            return;
        }
        Err(_) => {
            metrics::counter!(metric::DROPPED, "reason" => "tls_connect_failed").increment(1);
            tracing::debug!(%dest, "TLS connect timed out");
            return;
        }
    };
    let conn = NewConnection::new(Transport::Tls, dest, local, &cx.transports);
    if conn.queue.0.try_send(first).is_err() {
        tracing::debug!(%dest, "TLS send queue refused the first message");
    }
    let (reader, writer) = tokio::io::split(tls);
    serve_stream(cx, conn, reader, writer).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Files {
        _dir: tempfile::TempDir,
        files: TlsFiles,
    }

    fn write_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf, CertificateDer<'static>) {
        let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .unwrap();
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        (cert, key, made.cert.der().clone())
    }

    fn files() -> (Files, CertificateDer<'static>) {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, der) = write_cert(dir.path(), "served");
        (
            Files {
                files: TlsFiles {
                    cert: cert.clone(),
                    key,
                    ca: Some(cert),
                },
                _dir: dir,
            },
            der,
        )
    }

    fn served(store: &CertificateStore) -> CertificateDer<'static> {
        store.current.read().unwrap().cert[0].clone()
    }

    #[test]
    fn a_reload_swaps_the_certificate_and_a_bad_file_keeps_the_old_one() {
        let (f, first) = files();
        let store = CertificateStore::load(&f.files).unwrap();
        assert_eq!(served(&store), first);
        assert!(!store.changed());

        // A key that does not fit the certificate: refused, old one kept.
        let dir = f.files.cert.parent().unwrap();
        let (_, other_key, _) = write_cert(dir, "other");
        std::fs::copy(&other_key, &f.files.key).unwrap();
        let refused = store.reload().unwrap_err();
        assert!(refused.contains("does not fit"), "{refused}");
        assert_eq!(served(&store), first);
        std::fs::write(&f.files.key, "not a key").unwrap();
        assert!(store.reload().is_err());
        assert_eq!(served(&store), first);

        // A good pair: served from the next handshake on.
        let (cert, key, second) = write_cert(dir, "next");
        std::fs::copy(&cert, &f.files.cert).unwrap();
        std::fs::copy(&key, &f.files.key).unwrap();
        // (Whatever the file system's time granularity: a later time.)
        std::fs::File::options()
            .write(true)
            .open(&f.files.cert)
            .unwrap()
            .set_modified(SystemTime::now() + Duration::from_secs(10))
            .unwrap();
        assert!(store.changed());
        store.reload().unwrap();
        assert_eq!(served(&store), second);
        assert!(!store.changed());

        // Missing files at start-up are a configuration error that names them.
        let missing = TlsFiles {
            cert: dir.join("absent.pem"),
            key: f.files.key.clone(),
            ca: None,
        };
        let error = CertificateStore::load(&missing).unwrap_err().to_string();
        assert!(error.contains("absent.pem"), "{error}");
    }

    /// The outbound client trusts the configured CA and checks the peer's
    /// certificate against the destination's IP address.
    #[tokio::test]
    async fn outbound_tls_verifies_against_the_configured_ca_and_the_ip_address() {
        let (f, _) = files();
        let store = CertificateStore::load(&f.files).unwrap();
        let acceptor = acceptor(store).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = acceptor.accept(tcp).await;
                });
            }
        });
        let connect = |connector: TlsConnector, ip: std::net::IpAddr| async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            connector
                .connect(ServerName::IpAddress(ip.into()), tcp)
                .await
        };
        let trusted = connector(f.files.ca.as_deref()).unwrap();
        let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let tls = connect(trusted.clone(), local).await.unwrap();
        let version = tls.get_ref().1.protocol_version();
        assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
        // TLS 1.2 clients are served too.
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(f.files.cert.as_path()).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let tls12_only = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tls = connect(TlsConnector::from(Arc::new(tls12_only)), local)
            .await
            .unwrap();
        let version = tls.get_ref().1.protocol_version();
        assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_2));
        // Another address than the certificate names: refused.
        let other: std::net::IpAddr = "127.0.0.2".parse().unwrap();
        assert!(connect(trusted, other).await.is_err());
        // Without the CA (the platform's roots only): refused.
        assert!(connect(connector(None).unwrap(), local).await.is_err());
    }
}
