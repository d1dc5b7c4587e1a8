//! Connecting to PostgreSQL: the session settings jobd adds (application
//! name, timeouts, keepalives), TLS as the URL's `sslmode` asks, the store
//! errors that name the database with its password redacted, and the
//! NOTIFY channel of a schema.

use postgres::{Client, NoTls};

use crate::config::{redact_url, tls_settings, Tls};
use crate::store::error::StoreError;

/// The store error for a failure during `op` on the database at `url`
/// (password redacted), saying `detail`.
pub(crate) fn postgres_error(url: &str, op: &'static str, detail: impl Into<String>) -> StoreError {
    StoreError::Failed {
        database: redact_url(url),
        op,
        detail: detail.into(),
        source: None,
    }
}

/// Turns a client error during `op` into the store error that names the
/// database (password redacted) and what the server said, keeping the
/// client's error as its `source`.
pub(crate) fn failing(url: &str, op: &'static str) -> impl Fn(postgres::Error) -> StoreError {
    let url = url.to_string();
    move |e| StoreError::Failed {
        database: redact_url(&url),
        op,
        detail: describe(&e),
        source: Some(Box::new(e)),
    }
}

/// What went wrong, in the server's words where it spoke ("db error" alone
/// says nothing), else the client's with its causes.
pub(crate) fn describe(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.message().to_string();
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Connects to `url` as `application_name = jobd` unless the URL names
/// another, so that an operator finds jobd's sessions in
/// `pg_stat_activity`.
///
/// Unless the URL sets them, the connection also gets timeouts, so that a
/// server that vanished (a crashed host, a cut network) fails an operation
/// within about half a minute instead of the kernel's quarter of an hour:
/// [`CONNECT_TIMEOUT`] to connect, [`TCP_USER_TIMEOUT`] for sent data to
/// be acknowledged, and keepalives that notice a dead peer on an idle
/// connection (the listener's) within about a minute.
pub(crate) fn client(url: &str, op: &'static str) -> Result<Client, StoreError> {
    let fail = failing(url, op);
    let (parsed, tls) = tls_settings(url).map_err(|detail| postgres_error(url, op, detail))?;
    let mut config: postgres::Config = parsed.parse().map_err(&fail)?;
    if config.get_application_name().is_none() {
        config.application_name("jobd");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    if config.get_keepalives_interval().is_none() {
        config
            .keepalives_idle(std::time::Duration::from_secs(30))
            .keepalives_interval(std::time::Duration::from_secs(10))
            .keepalives_retries(3);
    }
    match tls {
        Tls::Off => config.connect(NoTls).map_err(&fail),
        Tls::Verify { roots } => {
            let tls = tls_connector(roots.as_deref())
                .map_err(|detail| postgres_error(url, op, detail))?;
            config.connect(tls).map_err(&fail)
        }
    }
}

/// A rustls connector trusting the CA certificates in `roots` (PEM), else
/// the system's.
fn tls_connector(
    roots: Option<&std::path::Path>,
) -> std::result::Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    let mut store = rustls::RootCertStore::empty();
    match roots {
        Some(path) => {
            let pem = crate::os::bounded::read(path, 16 << 20)
                .map_err(|e| format!("cannot read sslrootcert {}: {e}", path.display()))?;
            let mut found = 0;
            use rustls::pki_types::pem::PemObject as _;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    format!(
                        "sslrootcert {} is not a PEM certificate file: {e}",
                        path.display()
                    )
                })?;
                store.add(cert).map_err(|e| {
                    format!(
                        "sslrootcert {} holds an unusable certificate: {e}",
                        path.display()
                    )
                })?;
                found += 1;
            }
            if found == 0 {
                return Err(format!(
                    "sslrootcert {} holds no PEM certificate",
                    path.display()
                ));
            }
        }
        None => {
            let system = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(system.certs);
            if store.is_empty() {
                return Err(
                    "sslmode asks for TLS but the system has no CA certificates; name a CA file with sslrootcert"
                        .into(),
                );
            }
        }
    }
    // Both of rustls's crypto providers are linked (through lettre and
    // ureq), so name one rather than rely on a process default.
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(store)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// How long jobd waits to connect unless the URL says (`connect_timeout`).
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long sent data may go unacknowledged before the connection counts
/// as lost, unless the URL says (`tcp_user_timeout`).
pub const TCP_USER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The NOTIFY channel of the jobd schema `schema`.
pub fn channel(schema: &str) -> String {
    format!("jobd_jobs_{schema}")
}
