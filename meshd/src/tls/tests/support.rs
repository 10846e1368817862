//! Test PKI, a settable identity source, and client/server drivers.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, CommonState, ServerConfig};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;
use tokio_rustls::{client, server, TlsAcceptor, TlsConnector};

use crate::identity::testutil::TempDir;
use crate::identity::{
    CaSource, CaSourceConfig, CertInfo, DevCa, Error, IdentitySource, SpiffeId, Svid, TrustBundle, TrustDomain,
};
use crate::tls::{peer_identity, VerifyError};

pub(super) const PING: &[u8] = b"ping from client";
pub(super) const PONG: &[u8] = b"pong from server";
const TIMEOUT: Duration = Duration::from_secs(10);

/// A development CA for trust domain `example.org` in a temporary directory.
pub(super) struct Pki {
    dir: TempDir,
    pub(super) ca: DevCa,
}

impl Pki {
    pub(super) fn new(label: &str) -> Self {
        let dir = TempDir::new(label);
        let ca = DevCa::init(&dir.path().join("ca"), &td(), false).unwrap();
        Self { dir, ca }
    }

    /// A fresh `CaSource` over this CA (loaded from its files).
    pub(super) fn ca_source(&self) -> Arc<CaSource> {
        let ca = DevCa::load(&self.dir.path().join("ca")).unwrap();
        CaSource::start(ca, CaSourceConfig::default()).unwrap()
    }

    /// A scratch directory inside the PKI's temporary directory.
    pub(super) fn subdir(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(&path).unwrap();
        path
    }

    /// An SVID signed by this CA from SVID-shaped parameters changed by `tweak`.
    pub(super) fn custom_svid(&self, tweak: impl FnOnce(&mut CertificateParams)) -> Svid {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::OrganizationName, "meshd test");
        params.subject_alt_names = vec![rcgen::SanType::URI("spiffe://example.org/custom".try_into().unwrap())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::hours(1);
        tweak(&mut params);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = self.ca.sign(&params, &key);
        let info = CertInfo::parse(&cert).unwrap();
        Svid {
            // Not necessarily what the certificate says: bad certificates may hold no valid ID.
            spiffe_id: id("custom"),
            cert_chain: vec![cert],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            not_before: info.not_before,
            not_after: info.not_after,
            serial: info.serial,
        }
    }
}

pub(super) fn td() -> TrustDomain {
    TrustDomain::new("example.org").unwrap()
}

/// `spiffe://example.org/<path>`.
pub(super) fn id(path: &str) -> SpiffeId {
    SpiffeId::new(&format!("spiffe://example.org/{path}")).unwrap()
}

/// A source serving one settable SVID (for any ID) and a settable bundle.
pub(super) struct SettableSource {
    svid: Mutex<Arc<Svid>>,
    bundle: Mutex<Arc<TrustBundle>>,
    changes: watch::Sender<u64>,
}

impl SettableSource {
    pub(super) fn new(svid: Svid, bundle: TrustBundle) -> Arc<Self> {
        Arc::new(Self {
            svid: Mutex::new(Arc::new(svid)),
            bundle: Mutex::new(Arc::new(bundle)),
            changes: watch::channel(0).0,
        })
    }

    pub(super) fn set_bundle(&self, bundle: TrustBundle) {
        *self.bundle.lock().unwrap() = Arc::new(bundle);
        self.changes.send_modify(|n| *n += 1);
    }
}

impl IdentitySource for SettableSource {
    fn svid(&self, _id: &SpiffeId) -> Result<Arc<Svid>, Error> {
        Ok(self.svid.lock().unwrap().clone())
    }
    fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle.lock().unwrap().clone()
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

pub(super) type ClientStream = client::TlsStream<DuplexStream>;
pub(super) type ServerStream = server::TlsStream<DuplexStream>;

fn server_name() -> ServerName<'static> {
    ServerName::try_from("meshd.invalid").unwrap()
}

/// Runs both handshakes over a fresh pipe.
pub(super) async fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
) -> (io::Result<ClientStream>, io::Result<ServerStream>) {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let connect = TlsConnector::from(client).connect(server_name(), c);
    let accept = TlsAcceptor::from(server).accept(s);
    tokio::time::timeout(TIMEOUT, async { tokio::join!(connect, accept) }).await.expect("handshake finished in time")
}

/// Handshakes that must succeed.
pub(super) async fn connect(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> (ClientStream, ServerStream) {
    match handshake(client, server).await {
        (Ok(c), Ok(s)) => (c, s),
        (c, s) => panic!("handshake failed: client {:?}, server {:?}", c.err(), s.err()),
    }
}

/// Sends PING client→server and PONG server→client over an established pair.
pub(super) async fn ping_pong(client: &mut ClientStream, server: &mut ServerStream) {
    let exchange = async {
        client.write_all(PING).await.unwrap();
        client.flush().await.unwrap();
        let mut got = vec![0; PING.len()];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, PING);
        server.write_all(PONG).await.unwrap();
        server.flush().await.unwrap();
        let mut got = vec![0; PONG.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, PONG);
    };
    tokio::time::timeout(TIMEOUT, exchange).await.expect("ping-pong in time");
}

/// What each side of an attempted connection saw; the application on each side sends its
/// message right after its handshake and records every byte it receives.
pub(super) struct Exchange {
    pub(super) client_err: Option<io::Error>,
    pub(super) server_err: Option<io::Error>,
    pub(super) client_got: Vec<u8>,
    pub(super) server_got: Vec<u8>,
    pub(super) client_peer: Option<SpiffeId>,
    pub(super) server_peer: Option<SpiffeId>,
}

pub(super) async fn exchange(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Exchange {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let client_side = async {
        let mut stream = TlsConnector::from(client).connect(server_name(), c).await?;
        let peer = peer_identity(stream.get_ref().1).ok();
        stream.write_all(PING).await?;
        stream.flush().await?;
        let (got, err) = read_up_to(&mut stream, PONG.len()).await;
        Ok::<_, io::Error>((peer, got, err))
    };
    let server_side = async {
        let mut stream = TlsAcceptor::from(server).accept(s).await?;
        let peer = peer_identity(stream.get_ref().1).ok();
        let (got, err) = read_up_to(&mut stream, PING.len()).await;
        if err.is_none() {
            stream.write_all(PONG).await?;
            stream.flush().await?;
        }
        Ok::<_, io::Error>((peer, got, err))
    };
    let (c, s) = tokio::time::timeout(TIMEOUT, async { tokio::join!(client_side, server_side) })
        .await
        .expect("exchange finished in time");
    let split = |r: io::Result<(Option<SpiffeId>, Vec<u8>, Option<io::Error>)>| match r {
        Ok((peer, got, err)) => (peer, got, err),
        Err(e) => (None, Vec::new(), Some(e)),
    };
    let (client_peer, client_got, client_err) = split(c);
    let (server_peer, server_got, server_err) = split(s);
    Exchange { client_err, server_err, client_got, server_got, client_peer, server_peer }
}

async fn read_up_to<S: AsyncReadExt + Unpin>(stream: &mut S, n: usize) -> (Vec<u8>, Option<io::Error>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < n {
        match stream.read(&mut buf).await {
            Ok(0) => return (got, Some(io::ErrorKind::UnexpectedEof.into())),
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

/// The `VerifyError` carried by a failed handshake, if that is why it failed.
pub(super) fn verify_reason(err: &io::Error) -> Option<&VerifyError> {
    let tls = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    match tls {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            other.0.downcast_ref::<VerifyError>()
        }
        _ => None,
    }
}

/// Serial of the certificate the peer presented on `conn`.
pub(super) fn peer_serial(conn: &CommonState) -> String {
    let certs = conn.peer_certificates().expect("peer certificate");
    CertInfo::parse(&certs[0]).unwrap().serial
}
