//! The adapter against `mssql-mock-tds`, a scripted TDS endpoint running in
//! this process: a real TDS conversation (pre-login, TLS, login, RPC
//! batches, result sets) without a SQL Server. It proves the connection
//! path of [`SqlServerQueue`] (and so of the shared pool): plain and TLS
//! connects, certificate trust, refused logins, command and login timeouts,
//! and the mapping of server errors to `sync-core` error kinds.
//!
//! What the mock cannot do, and how these tests work around it:
//! - it accepts every login, so the refused login is a small hand-written
//!   TDS responder below (pre-login answer, then an `ERROR` token 18456);
//! - it matches an RPC (`sp_executesql`, which tiberius uses for every
//!   query) by finding the registered text, upper-cased, inside the request,
//!   so only upper-case statements can be scripted: here `SELECT 1`, which
//!   the queue's `ping` sends; any other statement gets an empty result;
//! - it frames its half of the TLS handshake in TABULAR RESULT packets
//!   where SQL Server uses PRELOGIN, which tiberius insists on, so the TLS
//!   tests talk to it through `handshake_relay`, which fixes that in flight;
//! - it sends integer and character columns only; the decoding of every
//!   other type is unit-tested in `src/decode.rs` with built rows, and the
//!   wire decoding of integers, text and NULL in `src/decode/tds_tests.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mssql_mock_tds::protocol::{build_prelogin_response_with_encryption, build_terminal_error_tokens};
use mssql_mock_tds::{
    ConnectionInfo, ConnectionStore, LOGIN_DELAY_KEY, MockTdsServer, QueryRegistry, QueryResponse,
    TerminalError,
};
use openssl::asn1::Asn1Time;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509, X509NameBuilder};
use storage_mssql::{SqlServerConfig, SqlServerQueue};
use sync_core::{ErrorKind, QueueName, WorkQueue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, oneshot};

/// A running mock; shut down when dropped.
struct Mock {
    port: u16,
    registry: Arc<Mutex<QueryRegistry>>,
    connections: Arc<Mutex<ConnectionStore>>,
    _shutdown: oneshot::Sender<()>,
}

impl Mock {
    async fn start(server: MockTdsServer) -> Mock {
        let port = server.local_addr().port();
        let registry = server.query_registry();
        let connections = server.connection_store();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(server.run_with_shutdown(rx));
        Mock { port, registry, connections, _shutdown: tx }
    }

    async fn plain() -> Mock {
        Mock::start(MockTdsServer::new("127.0.0.1:0").await.unwrap()).await
    }

    /// TLS negotiated in the pre-login (TDS 7.x, `encrypt=true`), as SQL
    /// Server does, with a self-signed certificate made now.
    async fn tls() -> Mock {
        Mock::tls_with(self_signed_cert()).await
    }

    async fn tls_with((cert, key): (Vec<u8>, Vec<u8>)) -> Mock {
        let identity = mssql_mock_tds::create_test_identity(&cert, &key).unwrap();
        let mut mock =
            Mock::start(MockTdsServer::new_with_tls("127.0.0.1:0", Some(identity)).await.unwrap()).await;
        mock.port = handshake_relay(mock.port).await;
        mock
    }

    async fn script(&self, query: &str, response: QueryResponse) {
        self.registry.lock().await.register(query, response);
    }

    /// The connections that completed a login, oldest first.
    async fn logins(&self) -> Vec<ConnectionInfo> {
        self.connections.lock().await.all().values().filter(|c| c.authenticated).cloned().collect()
    }

    /// A configuration for this mock: `extra` is appended to the connection
    /// string; timeouts are short so failures show quickly.
    fn config(&self, extra: &str) -> SqlServerConfig {
        let mut c = SqlServerConfig::from_ado(format!(
            "server=tcp:127.0.0.1,{};database=offline_sync;user=sync;password=Sup3r$ecret;{extra}",
            self.port
        ));
        c.connect_timeout = Duration::from_secs(5);
        c.command_timeout = Duration::from_secs(5);
        c
    }
}

/// A fresh RSA key and a self-signed certificate for `localhost` and
/// 127.0.0.1, valid for a day, both PEM. Test-only: made per run, never
/// stored.
fn self_signed_cert() -> (Vec<u8>, Vec<u8>) {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    // A name no real CA uses, so no trust anchor can match it by accident.
    name.append_entry_by_text("CN", "offline-sync mock-tds test").unwrap();
    let name = name.build();
    let mut cert = X509::builder().unwrap();
    cert.set_version(2).unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    cert.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
    let serial = openssl::bn::BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap();
    cert.set_serial_number(&serial).unwrap();
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .ip("127.0.0.1")
        .build(&cert.x509v3_context(None, None));
    cert.append_extension(san.unwrap()).unwrap();
    cert.sign(&key, MessageDigest::sha256()).unwrap();
    (cert.build().to_pem().unwrap(), key.private_key_to_pem_pkcs8().unwrap())
}

/// A TCP relay in front of the TLS mock that fixes how the mock frames its
/// side of the TLS handshake, so tiberius can talk to it.
///
/// In TDS 7.x the TLS handshake travels inside TDS packets of type
/// PRELOGIN (0x12), in both directions; tiberius accepts nothing else. The
/// mock wraps its handshake records in TABULAR RESULT (0x04) packets, and
/// also wraps the TLS 1.3 session tickets it sends right after the
/// handshake, when the client already reads raw TLS. The relay therefore
/// renames the mock's wrapped packets to 0x12 while the client is in the
/// handshake, and unwraps them once the client has sent its `Finished`
/// (a TLS application-data record inside its last 0x12 packet) or any raw
/// TLS record. Everything else passes unchanged. The ordering is safe: the
/// mock sends its tickets only after the client's `Finished` went through
/// the relay, which flags it before forwarding it.
async fn handshake_relay(mock_port: u16) -> u16 {
    use std::sync::atomic::{AtomicBool, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(("127.0.0.1", mock_port)).await else { return };
            let (mut client_rx, mut client_tx) = client.into_split();
            let (mut server_rx, mut server_tx) = server.into_split();
            let client_done = Arc::new(AtomicBool::new(false));
            let done = client_done.clone();
            tokio::spawn(async move {
                let mut frames = 0usize;
                while let Some((header, body)) = read_frame(&mut client_rx).await {
                    frames += 1;
                    let raw_tls = is_tls_record(header[0]);
                    if raw_tls || (frames > 1 && header[0] == 0x12 && has_application_data(&body)) {
                        done.store(true, Ordering::SeqCst);
                    }
                    if server_tx.write_all(&header).await.is_err()
                        || server_tx.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            });
            tokio::spawn(async move {
                let mut frames = 0usize;
                while let Some((mut header, body)) = read_frame(&mut server_rx).await {
                    frames += 1;
                    let tds = !is_tls_record(header[0]);
                    if tds && frames > 1 {
                        if client_done.load(Ordering::SeqCst) {
                            // Post-handshake records: the client reads raw TLS now.
                            if client_tx.write_all(&body).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        header[0] = 0x12;
                    }
                    if client_tx.write_all(&header).await.is_err()
                        || client_tx.write_all(&body).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn is_tls_record(first: u8) -> bool {
    (0x14..=0x17).contains(&first)
}

/// Whether a run of TLS records holds an application-data record.
fn has_application_data(records: &[u8]) -> bool {
    let mut at = 0;
    while at + 5 <= records.len() {
        if records[at] == 0x17 {
            return true;
        }
        at += 5 + usize::from(u16::from_be_bytes([records[at + 3], records[at + 4]]));
    }
    false
}

/// Reads one frame, a TDS packet or a raw TLS record: its header and its
/// body. `None` at the end of the stream.
async fn read_frame(rx: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut first = [0u8; 1];
    rx.read_exact(&mut first).await.ok()?;
    let (header_len, len_at) = if is_tls_record(first[0]) { (5, 3) } else { (8, 2) };
    let mut header = vec![first[0]; header_len];
    rx.read_exact(&mut header[1..]).await.ok()?;
    let len = usize::from(u16::from_be_bytes([header[len_at], header[len_at + 1]]));
    // A TDS length counts its header; a TLS record length does not.
    let body_len = if header_len == 8 { len.checked_sub(8)? } else { len };
    let mut body = vec![0u8; body_len];
    rx.read_exact(&mut body).await.ok()?;
    Some((header, body))
}

/// The mock offers no TLS, so the client must not ask for it.
const PLAINTEXT: &str = "encrypt=DANGER_PLAINTEXT";

#[tokio::test]
async fn connects_logs_in_and_runs_a_scripted_query() {
    let mock = Mock::plain().await;
    let queue = SqlServerQueue::connect(&mock.config(PLAINTEXT)).await.unwrap();
    // `ping` runs `SELECT 1`, answered by the mock's scripted one-row result.
    queue.ping().await.unwrap();
    // A statement the mock has no script for gets an empty result: the
    // receive path reads "no message" from it.
    let q = QueueName::new("datasync").unwrap();
    assert!(queue.receive(&q, Duration::from_secs(30)).await.unwrap().is_none());

    let logins = mock.logins().await;
    assert_eq!(logins.len(), 1, "the pool reused its one connection: {logins:?}");
    assert_eq!(logins[0].received_database.as_deref(), Some("offline_sync"));
    // The queue-table DDL, the ping and the receive, each one autocommit
    // request (TransactionDescriptor 0, OutstandingRequestCount 1).
    assert_eq!(logins[0].transaction_descriptor_headers, vec![(0, 1); 3]);
}

#[tokio::test]
async fn tls_with_a_trusted_self_signed_certificate() {
    let mock = Mock::tls().await;
    let queue =
        SqlServerQueue::connect(&mock.config("encrypt=true;TrustServerCertificate=true")).await.unwrap();
    queue.ping().await.unwrap();
    assert_eq!(mock.logins().await.len(), 1);
}

#[tokio::test]
async fn tls_verifying_the_server_against_a_pinned_ca() {
    let (cert, key) = self_signed_cert();
    let mut ca = tempfile::Builder::new().suffix(".pem").tempfile().unwrap();
    std::io::Write::write_all(&mut ca, &cert).unwrap();
    let mock = Mock::tls_with((cert, key)).await;
    // Full verification (chain and the name 127.0.0.1), against this CA only.
    let trusted = format!("encrypt=true;TrustServerCertificateCA={}", ca.path().display());
    let queue = SqlServerQueue::connect(&mock.config(&trusted)).await.unwrap();
    queue.ping().await.unwrap();
}

#[tokio::test]
async fn tls_with_an_untrusted_certificate_fails_clearly_and_sends_no_login() {
    let mock = Mock::tls().await;
    let err = SqlServerQueue::connect(&mock.config("encrypt=true")).await.unwrap_err();
    // Not retryable: retrying cannot make the certificate trusted.
    assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("certificate"), "{msg}");
    assert!(msg.contains("TrustServerCertificate"), "the error says how to fix it: {msg}");
    assert!(!msg.contains("Sup3r$ecret"), "{msg}");
    assert!(mock.logins().await.is_empty(), "no credentials went to an unverified server");
}

#[tokio::test]
async fn a_server_without_tls_is_refused_when_encryption_is_required() {
    let mock = Mock::plain().await;
    // The default (and `encrypt=true`) requires TLS: no silent plaintext.
    let err = SqlServerQueue::connect(&mock.config("TrustServerCertificate=true")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
    assert!(err.to_string().contains("encryption level"), "{err}");
    assert!(mock.logins().await.is_empty(), "no login was sent in clear text");
}

/// Reads one TDS packet, returning its type.
async fn read_packet(sock: &mut TcpStream) -> u8 {
    let mut header = [0u8; 8];
    sock.read_exact(&mut header).await.unwrap();
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let mut body = vec![0u8; len.saturating_sub(8)];
    sock.read_exact(&mut body).await.unwrap();
    header[0]
}

/// A one-connection TDS endpoint that answers the pre-login (no TLS) and
/// refuses the login as SQL Server does: error 18456, severity 14.
async fn refusing_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        assert_eq!(read_packet(&mut sock).await, 0x12, "pre-login");
        sock.write_all(&build_prelogin_response_with_encryption(false)).await.unwrap();
        assert_eq!(read_packet(&mut sock).await, 0x10, "login7");
        let tokens =
            build_terminal_error_tokens(&TerminalError::new(18456, 14, "Login failed for user 'sync'."));
        let len = u16::try_from(8 + tokens.len()).unwrap().to_be_bytes();
        // Tabular result, end of message.
        let mut reply = vec![0x04, 0x01, len[0], len[1], 0, 0, 1, 0];
        reply.extend_from_slice(&tokens);
        sock.write_all(&reply).await.unwrap();
        // Leave the socket open: the client must not wait for more.
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    port
}

#[tokio::test]
async fn a_refused_login_is_a_clear_non_retryable_error() {
    let port = refusing_server().await;
    let mut config = SqlServerConfig::from_ado(format!(
        "server=tcp:127.0.0.1,{port};user=sync;password=Sup3r$ecret;{PLAINTEXT}"
    ));
    config.connect_timeout = Duration::from_secs(5);
    let started = Instant::now();
    let err = SqlServerQueue::connect(&config).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(4), "took {:?}", started.elapsed());
    assert_eq!(err.kind(), ErrorKind::Internal, "{err}");
    assert!(!err.is_retryable());
    let msg = err.to_string();
    assert!(msg.contains("refused the configured login"), "{msg}");
    assert!(msg.contains("Login failed for user 'sync'"), "{msg}");
    assert!(!msg.contains("Sup3r$ecret"), "{msg}");
}

#[tokio::test]
async fn a_stalled_login_times_out_within_the_connect_timeout() {
    let mock = Mock::plain().await;
    mock.script(LOGIN_DELAY_KEY, QueryResponse::select_one().with_delay(Duration::from_secs(30))).await;
    let mut config = mock.config(PLAINTEXT);
    config.connect_timeout = Duration::from_millis(400);
    let started = Instant::now();
    let err = SqlServerQueue::connect(&config).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_command_timeout_is_retryable_and_the_connection_is_not_reused() {
    let mock = Mock::plain().await;
    let mut config = mock.config(PLAINTEXT);
    config.command_timeout = Duration::from_millis(300);
    let queue = SqlServerQueue::connect(&config).await.unwrap();
    mock.script("SELECT 1", QueryResponse::select_one().with_delay(Duration::from_secs(30))).await;

    let started = Instant::now();
    let err = queue.ping().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_retryable());

    // The timed-out connection may still get the late answer: the pool
    // drops it, and the next command opens a new connection.
    mock.script("SELECT 1", QueryResponse::select_one()).await;
    queue.ping().await.unwrap();
    assert_eq!(mock.logins().await.len(), 2, "a second connection was opened");
}

#[tokio::test]
async fn server_errors_map_to_error_kinds_and_keep_the_connection() {
    let mock = Mock::plain().await;
    let queue = SqlServerQueue::connect(&mock.config(PLAINTEXT)).await.unwrap();
    let cases = [
        (
            1205,
            13,
            "Transaction was deadlocked on lock resources with another process",
            ErrorKind::Unavailable,
        ),
        (1222, 16, "Lock request time out period exceeded.", ErrorKind::Unavailable),
        (
            40613,
            17,
            "Database 'offline_sync' on server 'x' is not currently available.",
            ErrorKind::Unavailable,
        ),
        (
            3956,
            16,
            "Snapshot isolation transaction failed to start in database 'offline_sync' because the ALTER \
             DATABASE command which enables snapshot isolation for this database has not finished yet.",
            ErrorKind::Unavailable,
        ),
        // An org database another process is dropping: its one session is
        // taken, or the drop lost it; both pass.
        (
            924,
            14,
            "Database 'sync_org_a' is already open and can only have one user at a time.",
            ErrorKind::Unavailable,
        ),
        (
            3702,
            16,
            "Cannot drop database \"sync_org_a\" because it is currently in use.",
            ErrorKind::Unavailable,
        ),
        (
            5064,
            16,
            "Changes to the state or options of database 'sync_org_a' cannot be made at this time. The \
             database is in single-user mode, and a user is currently connected to it.",
            ErrorKind::Unavailable,
        ),
        (2627, 14, "Violation of PRIMARY KEY constraint 'PK_x'.", ErrorKind::Conflict),
        (208, 16, "Invalid object name 'dbo.nope'.", ErrorKind::Internal),
    ];
    for (number, severity, message, kind) in cases {
        mock.script("SELECT 1", QueryResponse::error_only(TerminalError::new(number, severity, message)))
            .await;
        let err = queue.ping().await.unwrap_err();
        assert_eq!(err.kind(), kind, "error {number}: {err}");
        assert!(err.to_string().contains(message), "{err}");
    }
    mock.script("SELECT 1", QueryResponse::select_one()).await;
    queue.ping().await.unwrap();
    // A server error leaves the connection in step: it was kept.
    assert_eq!(mock.logins().await.len(), 1);
}

/// A command that failed with a server error may have left a transaction
/// open (a compile-time error inside a statement that began one is not
/// rolled back by `XACT_ABORT`): the pool rolls the session back before the
/// connection is reused, and drops a connection it could not roll back.
#[tokio::test]
async fn a_failed_command_is_rolled_back_and_a_connection_that_cannot_be_is_dropped() {
    let mock = Mock::plain().await;
    let queue = SqlServerQueue::connect(&mock.config(PLAINTEXT)).await.unwrap();
    let missing =
        || QueryResponse::error_only(TerminalError::new(208, 16, "Invalid object name 'dbo.nope'."));
    mock.script("SELECT 1", missing()).await;
    queue.ping().await.unwrap_err();
    let logins = mock.logins().await;
    assert_eq!(logins.len(), 1);
    // The queue-table DDL, the failed ping, then the rollback batch.
    assert_eq!(logins[0].transaction_descriptor_headers.len(), 3, "{:?}", logins[0]);

    // The rollback itself fails: the connection must not go back to the pool.
    mock.script(
        storage_mssql::sql::ROLLBACK,
        QueryResponse::error_only(TerminalError::new(3903, 16, "nope")),
    )
    .await;
    queue.ping().await.unwrap_err();
    mock.script("SELECT 1", QueryResponse::select_one()).await;
    queue.ping().await.unwrap();
    assert_eq!(mock.logins().await.len(), 2, "the connection that could not be rolled back was dropped");
}

/// A dedup key longer than the `nvarchar(400)` column is refused before it
/// reaches the server (which would fail the insert as a truncation, an
/// `Internal` error); one at the limit is sent.
#[tokio::test]
async fn an_overlong_dedup_key_is_invalid_input() {
    let mock = Mock::plain().await;
    let queue = SqlServerQueue::connect(&mock.config(PLAINTEXT)).await.unwrap();
    let q = QueueName::new("datasync").unwrap();
    let max = storage_mssql::sql::queue::MAX_DEDUP_KEY;
    // Characters outside the BMP count twice, as UTF-16 code units.
    let long = sync_core::Message::default().with_dedup_key("😀".repeat(max / 2 + 1));
    let err = queue.send(&q, long).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");
    assert!(err.to_string().contains(&max.to_string()), "{err}");
    let requests = mock.logins().await[0].transaction_descriptor_headers.len();
    assert_eq!(requests, 1, "only the queue-table DDL reached the server");
    // At the limit the key is sent (the mock answers with an empty result,
    // which send reports as a missing row: what matters is that it went out).
    let at_limit = sync_core::Message::default().with_dedup_key("k".repeat(max));
    let _ = queue.send(&q, at_limit).await;
    assert!(mock.logins().await[0].transaction_descriptor_headers.len() > requests);
}
