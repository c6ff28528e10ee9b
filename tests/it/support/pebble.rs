//! Debian's real Pebble (`apt-get install pebble`) for the ACME scenarios: offline, on
//! 127.0.0.1 only, with real validation connecting to the gateway.
//!
//! * Pebble's own HTTPS certificate is made here with rcgen (CA + leaf for 127.0.0.1 and
//!   localhost); [`Pebble::ca_file`] is what `tls.acme.ca_file` trusts.
//! * `pebble-challtestsrv` (same package) runs as DNS server only: it answers every A query
//!   with 127.0.0.1 (no AAAA), and Pebble is pointed at it with `-dnsserver`, so any test
//!   domain resolves to the gateway.
//! * Validation is real: no `PEBBLE_VA_ALWAYS_VALID`; `PEBBLE_VA_NOSLEEP=1`; Pebble's
//!   default 5 % deliberate `badNonce` rejections stay on.
//! * `tlsPort` / `httpPort` are where Pebble validates TLS-ALPN-01 / HTTP-01, so they must
//!   be the gateway's public port / `http_listen` port: reserve those first
//!   ([`ReservedPort`]), start Pebble with them, release them just before the gateway binds.
//! * [`Pebble::issuing_root_pem`] (`/roots/0` on the management port) is the root the
//!   issued certificates chain to; it is new for every Pebble start.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Ports and knobs of one Pebble instance.
#[derive(Debug, Clone, Default)]
pub struct PebbleOptions {
    /// Where Pebble sends HTTP-01 validation (`httpPort`); 0 = an unused free port.
    pub http_port: u16,
    /// Where Pebble sends TLS-ALPN-01 validation (`tlsPort`); 0 = an unused free port.
    pub tls_port: u16,
    /// `certificateValidityPeriod` in seconds; None = Pebble's default (5 years).
    pub validity_secs: Option<u64>,
}

/// A running Pebble plus its DNS (pebble-challtestsrv); both are killed on drop.
pub struct Pebble {
    dir: PathBuf,
    pebble: Child,
    dns: Child,
    acme_addr: SocketAddr,
    mgmt_addr: SocketAddr,
    tls_client: Arc<ClientConfig>,
}

static INSTANCE: AtomicU32 = AtomicU32::new(0);

impl Pebble {
    pub const BINARY: &'static str = "/usr/bin/pebble";
    pub const DNS_BINARY: &'static str = "/usr/bin/pebble-challtestsrv";

    pub fn installed() -> bool {
        Path::new(Self::BINARY).exists() && Path::new(Self::DNS_BINARY).exists()
    }

    /// True (after printing `skipped: pebble not installed`) when the scenario cannot run;
    /// with `PEBBLE_REQUIRED` set a missing Pebble fails instead.
    pub fn skip(test: &str) -> bool {
        if Self::installed() {
            return false;
        }
        if std::env::var_os("PEBBLE_REQUIRED").is_some() {
            panic!("{test}: pebble is not installed (apt-get install pebble)");
        }
        eprintln!("{test}: skipped: pebble not installed");
        true
    }

    /// Starts Pebble and its DNS on free 127.0.0.1 ports and waits for the directory.
    /// Retries with other ports if one was taken meanwhile.
    pub async fn start(options: PebbleOptions) -> Result<Self, BoxError> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(&options).await {
                Ok(p) => return Ok(p),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| "pebble did not start".into()))
    }

    async fn try_start(options: &PebbleOptions) -> Result<Self, BoxError> {
        let n = INSTANCE.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("gw-pebble-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;

        // Pebble's own HTTPS identity.
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Pebble harness CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut leaf_params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
        std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
        std::fs::write(dir.join("cert.pem"), leaf.pem())?;
        std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem())?;

        let acme_port = free_tcp_port()?;
        let mgmt_port = free_tcp_port()?;
        let dns_port = free_tcp_udp_port()?;
        let dns_mgmt_port = free_tcp_port()?;
        let http_port = match options.http_port {
            0 => free_tcp_port()?,
            p => p,
        };
        let tls_port = match options.tls_port {
            0 => free_tcp_port()?,
            p => p,
        };
        let mut pebble = serde_json::json!({
            "listenAddress": format!("127.0.0.1:{acme_port}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
            "certificate": dir.join("cert.pem"),
            "privateKey": dir.join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        });
        if let Some(v) = options.validity_secs {
            pebble["certificateValidityPeriod"] = v.into();
        }
        let config = serde_json::json!({ "pebble": pebble });
        std::fs::write(dir.join("pebble.json"), serde_json::to_vec_pretty(&config)?)?;

        let mut roots = RootCertStore::empty();
        roots.add(ca_cert.der().clone())?;
        let tls_client = Arc::new(
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let logs = |name: &str| std::fs::File::create(dir.join(name));
        let (dns_out, dns_err) = (logs("dns.log")?, logs("dns.err")?);
        let (pebble_out, pebble_err) = (logs("pebble.log")?, logs("pebble.err")?);
        let mut dns = Command::new(Self::DNS_BINARY)
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-management", &format!("127.0.0.1:{dns_mgmt_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .stdin(Stdio::null())
            .stdout(dns_out)
            .stderr(dns_err)
            .spawn()?;
        let pebble = Command::new(Self::BINARY)
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env_remove("PEBBLE_VA_ALWAYS_VALID")
            .env_remove("PEBBLE_WFE_NONCEREJECT")
            .stdin(Stdio::null())
            .stdout(pebble_out)
            .stderr(pebble_err)
            .spawn();
        let pebble = match pebble {
            Ok(child) => child,
            Err(e) => {
                let _ = dns.kill();
                let _ = dns.wait();
                return Err(e.into());
            }
        };

        let mut me = Self {
            dir,
            pebble,
            dns,
            acme_addr: SocketAddr::from(([127, 0, 0, 1], acme_port)),
            mgmt_addr: SocketAddr::from(([127, 0, 0, 1], mgmt_port)),
            tls_client,
        };

        // Pebble generates its RSA issuer keys first: about a second.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = me.pebble.try_wait()? {
                return Err(format!("pebble exited with {status}: {}", me.logs()).into());
            }
            if let Some(status) = me.dns.try_wait()? {
                return Err(format!("challtestsrv exited with {status}: {}", me.logs()).into());
            }
            let dir_ok = me.get(me.acme_addr, "/dir").await.is_ok();
            let dns_ok = TcpStream::connect(("127.0.0.1", dns_port)).await.is_ok();
            if dir_ok && dns_ok {
                return Ok(me);
            }
            if Instant::now() > deadline {
                return Err(format!("pebble not ready after 30 s: {}", me.logs()).into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The ACME directory URL (`tls.acme.directory`).
    pub fn directory_url(&self) -> String {
        format!("https://{}/dir", self.acme_addr)
    }

    /// PEM of the CA that signed Pebble's HTTPS certificate (`tls.acme.ca_file`).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// PEM of the root that issues the ACME certificates (new for every Pebble start).
    pub async fn issuing_root_pem(&self) -> Result<String, BoxError> {
        self.get(self.mgmt_addr, "/roots/0").await
    }

    /// Pebble's and the DNS server's output so far.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for f in ["pebble.log", "pebble.err", "dns.log", "dns.err"] {
            if let Some(s) = std::fs::read_to_string(self.dir.join(f))
                .ok()
                .filter(|s| !s.is_empty())
            {
                out.push_str(&format!("--- {f}\n{s}"));
            }
        }
        out
    }

    /// HTTP/1.0 GET over TLS to Pebble; the body when the status is 200.
    async fn get(&self, addr: SocketAddr, path: &str) -> Result<String, BoxError> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost")?;
        let mut tls = TlsConnector::from(self.tls_client.clone())
            .connect(name, tcp)
            .await?;
        tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await?;
        let text = String::from_utf8(buf)?;
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header end")?;
        if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
            return Err(format!("GET {path}: {}", head.lines().next().unwrap_or("")).into());
        }
        Ok(body.to_owned())
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.pebble.kill();
        let _ = self.dns.kill();
        let _ = self.pebble.wait();
        let _ = self.dns.wait();
        if std::env::var_os("PEBBLE_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A loopback port held by a listener that never accepts, until [`ReservedPort::release`],
/// so nothing else takes it between configuring Pebble with it and the gateway binding it.
pub struct ReservedPort {
    holder: Option<StdTcpListener>,
    pub port: u16,
}

impl ReservedPort {
    pub fn new() -> Self {
        let holder = StdTcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let port = holder.local_addr().expect("bound").port();
        Self {
            holder: Some(holder),
            port,
        }
    }

    /// `127.0.0.1:<port>`, and the port is free for the gateway from now on.
    pub fn release(mut self) -> String {
        self.holder.take();
        format!("127.0.0.1:{}", self.port)
    }
}

fn free_tcp_port() -> std::io::Result<u16> {
    Ok(StdTcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// challtestsrv listens on TCP and UDP with the same port.
fn free_tcp_udp_port() -> std::io::Result<u16> {
    for _ in 0..50 {
        let tcp = StdTcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if StdUdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::other("no port free for both TCP and UDP"))
}
