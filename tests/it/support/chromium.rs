//! Headless Chromium driven over the DevTools protocol (CDP), for integration tests.
//! Included by test binaries with `#[path = "support/chromium.rs"] mod chromium;`.
//!
//! Drives Debian's `/usr/bin/chromium` (tested with 156) with nothing but
//! tokio-tungstenite: no puppeteer, no playwright, no chromedriver.
//!
//! * [`Chromium::launch`] starts a private browser (fresh temp `HOME` and
//!   `--user-data-dir`, `--remote-debugging-port=0`, host names mapped to
//!   127.0.0.1 with `--host-resolver-rules`). It returns `None` — after printing
//!   `skipped: chromium not installed …` to stderr — only when the binary is
//!   missing; every other failure panics with the tail of Chromium's stderr.
//!   Chromium runs in its own process group; drop SIGKILLs the group and the
//!   two `chrome_crashpad_handler`s (own session, found by the temp HOME in
//!   their command line) and reaps them all: the test process makes itself a
//!   child subreaper, so helpers orphaned by the browser's exit are reaped
//!   here, not left as zombies of PID 1.
//! * Trust: [`LaunchOptions::trust_ca_pem`] puts a test CA into an NSS database
//!   at `$HOME/.pki/nssdb` of the temp `HOME` (`certutil` from Debian's
//!   `libnss3-tools`, trust `C,,`). Chromium 156 on Linux honours it for real
//!   chain verification (no `--ignore-certificate-errors`). Without it the same
//!   server fails with `net::ERR_CERT_AUTHORITY_INVALID`.
//! * [`Chromium::eval`] opens a new tab (`Target.createTarget`), navigates it,
//!   runs `Runtime.evaluate` with `awaitPromise`/`returnByValue` under a
//!   timeout, closes the tab and returns the value; a thrown exception or a
//!   rejected promise comes back as [`CdpError::Exception`], a failed
//!   navigation (certificate, TLS, connection errors) as [`CdpError::Navigate`]
//!   carrying Chromium's `net::ERR_…` text.
//! * [`Chromium::eval_with_tls`] is `eval` that also returns what Chromium recorded about
//!   the page's TLS connection (`securityDetails`: protocol, subject, issuer, SANs).
//! * [`Chromium::screenshot`] renders a URL at a given viewport into a PNG.
//! * [`nostr_wss_probe`] / [`nip11_probe`] build JS expressions for `eval`.
//!
//! Origin, CORS and Local Network Access (what works with Chromium 156):
//! * Recommended: let `eval` navigate the tab to the relay's own origin first
//!   (`https://relay.test:PORT/`, whatever page it serves, even a 404 with a
//!   body). The NIP-11 `fetch` is then same-origin (no CORS headers needed),
//!   the page's address space is loopback so Local Network Access (below) does
//!   not interfere, and the WebSocket carries `Origin: https://relay.test:PORT`.
//!   Loading that page also proves the certificate chain verifies.
//! * Trap: an error status with an EMPTY body (e.g. `426 Upgrade Required`
//!   from a WebSocket-only endpoint) makes `Page.navigate` fail with
//!   `net::ERR_HTTP_RESPONSE_CODE_FAILURE` (Chromium's own error page, origin
//!   `chrome-error://chromewebdata`). Then use [`Chromium::eval_on_stub`]: a
//!   page of that origin made by the DevTools `Fetch` domain. Its same-origin
//!   fetch works; its WebSockets to 127.0.0.1 need LNA off (below).
//! * From there a fetch to another origin (`https://other.test:PORT/`, another
//!   port) is cross-origin and needs `Access-Control-Allow-Origin: *`; the
//!   `Accept: application/nostr+json` header is CORS-safelisted, so there is no
//!   preflight. WebSockets are not subject to CORS.
//! * `about:blank` does NOT work by default: its opaque origin (`null`) counts
//!   as a public page, and Chromium's Local Network Access checks block both
//!   fetch and WebSocket to 127.0.0.1 after the TLS handshake (the JS sees only
//!   `TypeError: Failed to fetch` / a WebSocket `error` event). It works with
//!   [`LaunchOptions::allow_local_network_from_public_pages`], and then needs
//!   `Access-Control-Allow-Origin: *` for the fetch (`Origin: null`).
//!
//! Each `eval`/`screenshot` uses its own CDP connection and tab, so calls from
//! concurrent tasks don't interfere.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Where Debian's chromium package puts its launcher.
pub const CHROMIUM_BIN: &str = "/usr/bin/chromium";

/// Options for [`Chromium::launch`].
#[derive(Clone, Debug)]
pub struct LaunchOptions {
    /// Host names resolved to 127.0.0.1 (`--host-resolver-rules=MAP name 127.0.0.1,…`).
    pub hosts: Vec<String>,
    /// PEM of a CA certificate to trust for TLS server authentication (NSS db in the temp HOME).
    pub trust_ca_pem: Option<String>,
    /// Default viewport / window size.
    pub window: (u32, u32),
    /// Timeout for one `eval` (navigation + evaluation).
    pub eval_timeout: Duration,
    /// Extra command-line flags. Don't pass `--disable-features` here: Chromium honours only
    /// the last occurrence of a switch; use [`LaunchOptions::disable_features`].
    pub extra_args: Vec<String>,
    /// Chromium features to switch off (joined into one `--disable-features=` flag).
    pub disable_features: Vec<String>,
    /// Browser binary (default [`CHROMIUM_BIN`]).
    pub binary: PathBuf,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        LaunchOptions {
            hosts: Vec::new(),
            trust_ca_pem: None,
            window: (1024, 768),
            eval_timeout: Duration::from_secs(30),
            extra_args: Vec::new(),
            disable_features: Vec::new(),
            binary: PathBuf::from(CHROMIUM_BIN),
        }
    }
}

impl LaunchOptions {
    pub fn hosts<I: IntoIterator<Item = S>, S: Into<String>>(mut self, hosts: I) -> Self {
        self.hosts = hosts.into_iter().map(Into::into).collect();
        self
    }
    pub fn trust_ca(mut self, ca_pem: impl Into<String>) -> Self {
        self.trust_ca_pem = Some(ca_pem.into());
        self
    }
    /// Turns off Local Network Access checks (`--disable-features=LocalNetworkAccessChecks`).
    /// Chromium 156 blocks requests — fetch *and* WebSocket — from a "public" page to a
    /// loopback/private address; an opaque-origin `about:blank` tab counts as public, so its
    /// probes to `relay.test` (mapped to 127.0.0.1) fail after the TLS handshake with no
    /// request sent. Pages served from 127.0.0.1 themselves (e.g. `https://relay.test:PORT/`)
    /// are not affected and need none of this.
    pub fn allow_local_network_from_public_pages(mut self) -> Self {
        self.disable_features
            .push("LocalNetworkAccessChecks".into());
        self
    }
}

/// Errors from the DevTools side.
#[derive(Debug, Clone, PartialEq)]
pub enum CdpError {
    /// The CDP WebSocket or a CDP command failed.
    Protocol(String),
    /// `Page.navigate` answered with an `errorText` (e.g. `net::ERR_CERT_AUTHORITY_INVALID`).
    Navigate { url: String, error_text: String },
    /// The evaluated expression threw, or its promise rejected.
    Exception(String),
    /// The operation did not finish in time.
    Timeout(String),
}

impl std::fmt::Display for CdpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CdpError::Protocol(m) => write!(f, "cdp: {m}"),
            CdpError::Navigate { url, error_text } => write!(f, "navigate {url}: {error_text}"),
            CdpError::Exception(m) => write!(f, "js exception: {m}"),
            CdpError::Timeout(m) => write!(f, "timeout: {m}"),
        }
    }
}

impl std::error::Error for CdpError {}

/// A running headless Chromium. Terminated (whole process group) and reaped on drop.
pub struct Chromium {
    child: Option<Child>,
    ws_url: String,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    opts: LaunchOptions,
    // Holds HOME (with .pki/nssdb) and the profile; removed after the browser is gone.
    home: Option<tempfile::TempDir>,
}

impl Chromium {
    /// Starts Chromium. `None` only when the binary is missing (prints a `skipped:` line).
    /// Panics on any other failure, with Chromium's stderr.
    pub async fn launch(opts: LaunchOptions) -> Option<Chromium> {
        if !opts.binary.exists() {
            eprintln!(
                "skipped: chromium not installed ({} missing; `apt-get install -y chromium libnss3-tools`)",
                opts.binary.display()
            );
            return None;
        }
        let t0 = Instant::now();
        let home = tempfile::Builder::new()
            .prefix("chromium-home-")
            .tempdir()
            .expect("temp HOME for chromium");
        let profile = home.path().join("profile");
        std::fs::create_dir_all(&profile).expect("profile dir");
        if let Some(pem) = &opts.trust_ca_pem {
            install_nss_ca(home.path(), pem);
        }

        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--password-store=basic",
            "--hide-scrollbars",
            "--mute-audio",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.push(format!("--window-size={},{}", opts.window.0, opts.window.1));
        if !opts.hosts.is_empty() {
            let rules: Vec<String> = opts
                .hosts
                .iter()
                .map(|h| format!("MAP {h} 127.0.0.1"))
                .collect();
            args.push(format!("--host-resolver-rules={}", rules.join(",")));
        }
        if !opts.disable_features.is_empty() {
            args.push(format!(
                "--disable-features={}",
                opts.disable_features.join(",")
            ));
        }
        args.extend(opts.extra_args.iter().cloned());
        args.push("about:blank".into());

        become_child_subreaper();
        let mut cmd = Command::new(&opts.binary);
        cmd.args(&args)
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join(".config"))
            .env("XDG_CACHE_HOME", home.path().join(".cache"))
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        {
            use std::os::unix::process::CommandExt;
            // Own process group: drop signals the browser and all its helpers at once.
            cmd.process_group(0);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", opts.binary.display()));

        // Drain stderr forever (a full pipe would stall Chromium); hand over the DevTools URL.
        let stderr = child.stderr.take().expect("piped stderr");
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = tokio::sync::oneshot::channel::<String>();
        {
            let tail = tail.clone();
            std::thread::Builder::new()
                .name("chromium-stderr".into())
                .spawn(move || {
                    let mut tx = Some(tx);
                    for line in BufReader::new(stderr).lines() {
                        let Ok(line) = line else { break };
                        if let Some(pos) = line.find("DevTools listening on ") {
                            if let Some(tx) = tx.take() {
                                let _ = tx.send(line[pos + 22..].trim().to_string());
                            }
                        }
                        let mut t = tail.lock().unwrap();
                        if t.len() >= 60 {
                            t.pop_front();
                        }
                        t.push_back(line);
                    }
                })
                .expect("stderr thread");
        }

        let mut me = Chromium {
            child: Some(child),
            ws_url: String::new(),
            stderr_tail: tail,
            opts,
            home: Some(home),
        };
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(url)) => me.ws_url = url,
            Ok(Err(_)) => panic!(
                "chromium exited before DevTools was up:\n{}",
                me.stderr_text()
            ),
            Err(_) => panic!(
                "no `DevTools listening on` within 30 s:\n{}",
                me.stderr_text()
            ),
        }
        if std::env::var_os("CHROMIUM_DEBUG").is_some() {
            eprintln!("chromium up in {:?}: {}", t0.elapsed(), me.ws_url);
        }
        Some(me)
    }

    /// Changes the timeout of later `eval`/`screenshot` calls.
    pub fn set_eval_timeout(&mut self, timeout: Duration) {
        self.opts.eval_timeout = timeout;
    }

    /// Process id of the browser (also its process-group id).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The browser-level DevTools WebSocket URL.
    pub fn ws_url(&self) -> &str {
        &self.ws_url
    }

    /// Last lines Chromium printed on stderr (for failure messages).
    pub fn stderr_text(&self) -> String {
        let t = self.stderr_tail.lock().unwrap();
        t.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// A browser-level CDP command (no session), on a fresh connection.
    pub async fn browser_call(&self, method: &str, params: Value) -> Result<Value, CdpError> {
        let mut cdp = Cdp::connect(&self.ws_url).await?;
        cdp.call(None, method, params).await
    }

    /// `Browser.getVersion` → e.g. "Chrome/156.0.8078.114" (product field).
    pub async fn version(&self) -> Result<String, CdpError> {
        let mut cdp = Cdp::connect(&self.ws_url).await?;
        let v = cdp.call(None, "Browser.getVersion", json!({})).await?;
        Ok(v["product"].as_str().unwrap_or_default().to_string())
    }

    /// Opens a new tab on `about:blank` (own CDP connection). Close it with [`Page::close`];
    /// a tab that is just dropped stays open until the browser exits.
    pub async fn new_page(&self) -> Result<Page, CdpError> {
        let mut cdp = Cdp::connect(&self.ws_url).await?;
        let t = cdp
            .call(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let target_id = str_field(&t, "targetId")?;
        let a = cdp
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await?;
        let session_id = str_field(&a, "sessionId")?;
        let mut page = Page {
            cdp,
            target_id,
            session_id,
        };
        page.call("Page.enable", json!({})).await?;
        Ok(page)
    }

    /// Opens a tab, navigates to `page_url` (`about:blank` for an opaque origin), evaluates
    /// `js` (an expression; a promise is awaited), closes the tab and returns the value.
    pub async fn eval(&self, page_url: &str, js: &str) -> Result<Value, CdpError> {
        let timeout = self.opts.eval_timeout;
        let mut page = self.new_page().await?;
        let res = tokio::time::timeout(timeout, async {
            page.goto(page_url).await?;
            page.eval(js).await
        })
        .await
        .unwrap_or_else(|_| {
            Err(CdpError::Timeout(format!(
                "eval on {page_url} after {timeout:?}"
            )))
        });
        page.close().await;
        res
    }

    /// Like [`Chromium::eval`], and also returns the `securityDetails` Chromium recorded for
    /// the page's own response (`Network.responseReceived`): `protocol` ("TLS 1.3"),
    /// `subjectName`, `issuer`, `sanList`, `keyExchangeGroup`, `serverSignatureAlgorithm`, …
    /// (`null` for a page without TLS).
    pub async fn eval_with_tls(
        &self,
        page_url: &str,
        js: &str,
    ) -> Result<(Value, Value), CdpError> {
        let timeout = self.opts.eval_timeout;
        let mut page = self.new_page().await?;
        let res = tokio::time::timeout(timeout, async {
            page.call("Network.enable", json!({})).await?;
            page.goto(page_url).await?;
            let tls = page.document_security_details(page_url);
            Ok((page.eval(js).await?, tls))
        })
        .await
        .unwrap_or_else(|_| {
            Err(CdpError::Timeout(format!(
                "eval on {page_url} after {timeout:?}"
            )))
        });
        page.close().await;
        res
    }

    /// Like [`Chromium::eval`], but the document at `page_url` is a stub made by the DevTools
    /// `Fetch` domain ([`Page::goto_stub`]); the server is not asked for it. Gives a page of the
    /// relay's origin (same-origin NIP-11 fetch) even when the server answers GET with an empty
    /// error status. The stub has no IP address, so Chromium's Local Network Access treats it as
    /// public: its WebSockets to 127.0.0.1 are blocked unless launched with
    /// [`LaunchOptions::allow_local_network_from_public_pages`] (same-origin fetch is not).
    pub async fn eval_on_stub(&self, page_url: &str, js: &str) -> Result<Value, CdpError> {
        let timeout = self.opts.eval_timeout;
        let mut page = self.new_page().await?;
        let res = tokio::time::timeout(timeout, async {
            page.goto_stub(page_url, "<!doctype html><title>probe</title>")
                .await?;
            page.eval(js).await
        })
        .await
        .unwrap_or_else(|_| {
            Err(CdpError::Timeout(format!(
                "eval on stub {page_url} after {timeout:?}"
            )))
        });
        page.close().await;
        res
    }

    /// Renders `url` in a `width`×`height` viewport and writes a PNG to `path`.
    pub async fn screenshot(
        &self,
        url: &str,
        path: impl AsRef<Path>,
        width: u32,
        height: u32,
    ) -> Result<(), CdpError> {
        let timeout = self.opts.eval_timeout;
        let mut page = self.new_page().await?;
        let res = tokio::time::timeout(timeout, async {
            page.call(
                "Emulation.setDeviceMetricsOverride",
                json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
            )
            .await?;
            page.goto(url).await?;
            page.screenshot_png().await
        })
        .await
        .unwrap_or_else(|_| {
            Err(CdpError::Timeout(format!(
                "screenshot of {url} after {timeout:?}"
            )))
        });
        page.close().await;
        let png = res?;
        std::fs::write(path.as_ref(), png)
            .map_err(|e| CdpError::Protocol(format!("write {}: {e}", path.as_ref().display())))
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pgid = child.id() as libc::pid_t;
            // chrome_crashpad_handler daemonizes into its own session (not in our group); it is
            // recognised by its `--database=` under our temp HOME. Find it while it still has
            // a command line (a zombie's is empty).
            let crashpad: Vec<libc::pid_t> = match &self.home {
                Some(home) => pids_with_cmdline_containing(&home.path().to_string_lossy()),
                None => Vec::new(),
            };
            // SIGKILL the whole group (browser, zygotes, renderers, GPU/network services):
            // there is nothing to save, the profile is a temp dir. A gentler SIGTERM to the
            // browser does not help: it exits without waiting for its zygotes, which are then
            // orphaned just the same.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            // Orphaned helpers were re-parented to us (child subreaper, set in launch): reap
            // every member of the group so none is left as a zombie.
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                while unsafe { libc::waitpid(-pgid, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
                if !process_group_exists(pgid as u32) || Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            for pid in crashpad {
                // Our children (re-parented to this subreaper): waitpid reaps them; if they
                // are not (subreaper unavailable), waitpid returns ECHILD at once.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, std::ptr::null_mut(), 0);
                }
            }
        }
        // The profile is removed only now that nothing writes to it.
        drop(self.home.take());
    }
}

/// Whether any process (zombies included) is still in process group `pgid` (Linux /proc).
fn process_group_exists(pgid: u32) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    dir.flatten().any(|e| {
        std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|st| {
                let rest = st.rsplit_once(") ")?.1.to_string();
                rest.split_whitespace().nth(2)?.parse::<u32>().ok()
            })
            == Some(pgid)
    })
}

/// Live processes whose command line contains `needle` (Linux /proc).
fn pids_with_cmdline_containing(needle: &str) -> Vec<libc::pid_t> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: libc::pid_t = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmd)
                .contains(needle)
                .then_some(pid)
        })
        .collect()
}

/// Make this process the reaper of orphaned descendants (Chromium's helpers outlive the
/// browser process by a few ms), so `Drop` can reap them instead of leaving them to PID 1.
fn become_child_subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| unsafe {
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0);
    });
}

/// One tab, attached over its own CDP connection (flattened session).
pub struct Page {
    cdp: Cdp,
    target_id: String,
    session_id: String,
}

impl Page {
    /// Sends a CDP command to this tab's session.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, CdpError> {
        let sid = self.session_id.clone();
        self.cdp.call(Some(&sid), method, params).await
    }

    /// Navigates and waits until `document.readyState == "complete"`.
    /// A failed navigation (bad certificate, TLS failure, refused…) is [`CdpError::Navigate`].
    pub async fn goto(&mut self, url: &str) -> Result<(), CdpError> {
        let r = self.call("Page.navigate", json!({"url": url})).await?;
        if let Some(err) = r.get("errorText").and_then(Value::as_str) {
            if !err.is_empty() {
                return Err(CdpError::Navigate {
                    url: url.into(),
                    error_text: err.into(),
                });
            }
        }
        self.wait_complete(url).await
    }

    /// Page.navigate answers once the navigation has committed; wait for the load.
    async fn wait_complete(&mut self, url: &str) -> Result<(), CdpError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if Instant::now() > deadline {
                return Err(CdpError::Timeout(format!("load of {url}")));
            }
            let state = self.eval("document.readyState").await?;
            if state == "complete" {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Commits a document at `url` whose response is `html`, produced by the DevTools `Fetch`
    /// domain: nothing is sent to the server, so this gives a page *of that origin* even when
    /// the server answers GET with an empty error (Chromium shows its own error page, origin
    /// `chrome-error://chromewebdata`, and `Page.navigate` reports
    /// `net::ERR_HTTP_RESPONSE_CODE_FAILURE`). It proves nothing about the server's certificate.
    pub async fn goto_stub(&mut self, url: &str, html: &str) -> Result<(), CdpError> {
        let sid = self.session_id.clone();
        let s = Some(sid.as_str());
        self.cdp
            .call(
                s,
                "Fetch.enable",
                json!({"patterns": [{"urlPattern": "*", "requestStage": "Request"}]}),
            )
            .await?;
        let nav = self
            .cdp
            .send(s, "Page.navigate", json!({"url": url}))
            .await?;
        loop {
            let ev = self.cdp.event("Fetch.requestPaused").await?;
            let rid = ev["params"]["requestId"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if ev["params"]["request"]["url"] == url {
                self.cdp
                    .call(
                        s,
                        "Fetch.fulfillRequest",
                        json!({
                            "requestId": rid,
                            "responseCode": 200,
                            "responseHeaders": [
                                {"name": "Content-Type", "value": "text/html; charset=utf-8"},
                                {"name": "Cache-Control", "value": "no-store"}
                            ],
                            "body": base64_encode(html.as_bytes()),
                        }),
                    )
                    .await?;
                break;
            }
            self.cdp
                .call(s, "Fetch.continueRequest", json!({"requestId": rid}))
                .await?;
        }
        let r = self.cdp.response(nav, "Page.navigate").await?;
        self.cdp.call(s, "Fetch.disable", json!({})).await?;
        if let Some(err) = r.get("errorText").and_then(Value::as_str) {
            if !err.is_empty() {
                return Err(CdpError::Navigate {
                    url: url.into(),
                    error_text: err.into(),
                });
            }
        }
        self.wait_complete(url).await
    }

    /// `response.securityDetails` of the `Document` response for `url` among the events seen
    /// so far (needs `Network.enable` before the navigation); `null` when there is none.
    pub fn document_security_details(&self, url: &str) -> Value {
        self.cdp
            .events
            .iter()
            .filter(|e| e["method"] == "Network.responseReceived")
            .map(|e| &e["params"])
            .find(|p| p["type"] == "Document" && p["response"]["url"] == url)
            .map(|p| p["response"]["securityDetails"].clone())
            .unwrap_or(Value::Null)
    }

    /// `Runtime.evaluate` with `awaitPromise` and `returnByValue`.
    pub async fn eval(&mut self, js: &str) -> Result<Value, CdpError> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({
                    "expression": js,
                    "awaitPromise": true,
                    "returnByValue": true,
                    "userGesture": true,
                }),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            let desc = ex["exception"]["description"]
                .as_str()
                .map(str::to_string)
                .or_else(|| ex["exception"]["value"].as_str().map(str::to_string))
                .unwrap_or_else(|| ex["text"].as_str().unwrap_or("exception").to_string());
            return Err(CdpError::Exception(desc));
        }
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// `Page.captureScreenshot` (PNG bytes) of the current viewport, after two animation frames.
    pub async fn screenshot_png(&mut self) -> Result<Vec<u8>, CdpError> {
        self.eval(
            "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))",
        )
        .await?;
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await?;
        let b64 = shot["data"]
            .as_str()
            .ok_or_else(|| CdpError::Protocol("captureScreenshot: no data".into()))?;
        base64_decode(b64).ok_or_else(|| CdpError::Protocol("captureScreenshot: bad base64".into()))
    }

    /// Closes the tab (best effort) and the CDP connection.
    pub async fn close(mut self) {
        let tid = self.target_id.clone();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            self.cdp
                .call(None, "Target.closeTarget", json!({"targetId": tid})),
        )
        .await;
        let _ = self.cdp.ws.close(None).await;
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A minimal sequential CDP client: one request at a time, events kept aside.
struct Cdp {
    ws: Ws,
    next_id: u64,
    events: VecDeque<Value>,
}

impl Cdp {
    async fn connect(url: &str) -> Result<Cdp, CdpError> {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .map_err(|e| CdpError::Protocol(format!("connect {url}: {e}")))?;
        Ok(Cdp {
            ws,
            next_id: 1,
            events: VecDeque::new(),
        })
    }

    async fn call(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<Value, CdpError> {
        let id = self.send(session, method, params).await?;
        self.response(id, method).await
    }

    /// Sends a command without waiting for its answer; returns its id.
    async fn send(
        &mut self,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Result<u64, CdpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .map_err(|e| CdpError::Protocol(format!("send {method}: {e}")))?;
        Ok(id)
    }

    /// Reads until the answer to `id`; events met on the way are kept for [`Cdp::event`].
    async fn response(&mut self, id: u64, method: &str) -> Result<Value, CdpError> {
        loop {
            let v = self.read(method).await?;
            if v.get("id").and_then(Value::as_u64) == Some(id) {
                if let Some(err) = v.get("error") {
                    return Err(CdpError::Protocol(format!("{method}: {err}")));
                }
                return Ok(v.get("result").cloned().unwrap_or(Value::Null));
            }
            if v.get("method").is_some() {
                if self.events.len() >= 256 {
                    self.events.pop_front();
                }
                self.events.push_back(v);
            }
        }
    }

    /// Next event named `method` (already buffered or read now); answers to other ids are dropped.
    async fn event(&mut self, method: &str) -> Result<Value, CdpError> {
        if let Some(i) = self.events.iter().position(|e| e["method"] == method) {
            return Ok(self.events.remove(i).unwrap());
        }
        loop {
            let v = self.read(method).await?;
            if v["method"] == method {
                return Ok(v);
            }
            if v.get("method").is_some() {
                if self.events.len() >= 256 {
                    self.events.pop_front();
                }
                self.events.push_back(v);
            }
        }
    }

    async fn read(&mut self, what: &str) -> Result<Value, CdpError> {
        loop {
            let m = match self.ws.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(CdpError::Protocol(format!("{what}: {e}"))),
                None => return Err(CdpError::Protocol(format!("{what}: connection closed"))),
            };
            match m {
                Message::Text(t) => {
                    return serde_json::from_str(t.as_str())
                        .map_err(|e| CdpError::Protocol(format!("{what}: bad json: {e}")))
                }
                Message::Close(_) => {
                    return Err(CdpError::Protocol(format!("{what}: connection closed")))
                }
                _ => continue,
            }
        }
    }
}

fn str_field(v: &Value, k: &str) -> Result<String, CdpError> {
    v.get(k)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| CdpError::Protocol(format!("missing {k} in {v}")))
}

/// Creates `$home/.pki/nssdb` and adds `ca_pem` as a trusted CA for TLS servers (`C,,`).
/// Chromium on Linux reads this user NSS database for locally trusted roots.
fn install_nss_ca(home: &Path, ca_pem: &str) {
    let db = home.join(".pki/nssdb");
    std::fs::create_dir_all(&db).expect("nssdb dir");
    let ca_path = home.join("test-ca.pem");
    std::fs::write(&ca_path, ca_pem).expect("write CA pem");
    let dbarg = format!("sql:{}", db.display());
    let run = |args: &[&str]| {
        let out = Command::new("certutil")
            .args(args)
            .env("HOME", home)
            .output()
            .unwrap_or_else(|e| {
                panic!("certutil not runnable ({e}): `apt-get install -y libnss3-tools`")
            });
        assert!(
            out.status.success(),
            "certutil {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["-N", "-d", &dbarg, "--empty-password"]);
    run(&[
        "-A",
        "-d",
        &dbarg,
        "-t",
        "C,,",
        "-n",
        "mosaic-test-ca",
        "-i",
        ca_path.to_str().unwrap(),
    ]);
}

fn base64_encode(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    }
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let n = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// A JS string literal for `s` (JSON strings are valid JS literals).
fn js_str(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// JS expression (a promise) that opens `new WebSocket(wss_url)`, sends
/// `["REQ","probe",{"limit":1}]` and resolves with `{ok:true, eose:true, protocol, ms}` on
/// `["EOSE","probe"]`, or `{ok:false, error, ms}` on error, close or a 10 s timeout.
/// It never rejects. A browser WebSocket error carries no reason: to learn *why* (certificate,
/// TLS), navigate a tab to the https:// origin and read [`CdpError::Navigate`].
pub fn nostr_wss_probe(wss_url: &str) -> String {
    nostr_wss_probe_with(wss_url, &[], 10_000)
}

/// [`nostr_wss_probe`] offering WebSocket subprotocols (`ws.protocol` shows the server's pick).
pub fn nostr_wss_probe_with(wss_url: &str, protocols: &[&str], timeout_ms: u32) -> String {
    let protos = Value::from(protocols.iter().map(|p| p.to_string()).collect::<Vec<_>>());
    format!(
        r#"new Promise((resolve) => {{
  const t0 = performance.now();
  let ws = null, done = false, notices = [];
  const finish = (v) => {{
    if (done) return;
    done = true;
    clearTimeout(timer);
    v.ms = Math.round(performance.now() - t0);
    if (notices.length) v.notices = notices;
    try {{ if (ws) ws.close(); }} catch (_) {{}}
    resolve(v);
  }};
  const timer = setTimeout(() => finish({{ok: false, error: "timeout after {timeout_ms} ms"}}), {timeout_ms});
  try {{
    const protos = {protos};
    ws = protos.length ? new WebSocket({url}, protos) : new WebSocket({url});
  }} catch (e) {{
    finish({{ok: false, error: "WebSocket constructor: " + e}});
    return;
  }}
  ws.onopen = () => ws.send(JSON.stringify(["REQ", "probe", {{limit: 1}}]));
  ws.onmessage = (ev) => {{
    let m;
    try {{ m = JSON.parse(ev.data); }} catch (_) {{ return; }}
    if (!Array.isArray(m)) return;
    if (m[0] === "EOSE" && m[1] === "probe") finish({{ok: true, eose: true, protocol: ws.protocol}});
    else if (m[0] === "NOTICE" || m[0] === "CLOSED") notices.push(m);
  }};
  ws.onerror = () => finish({{ok: false, error: "error event (readyState " + ws.readyState + ")"}});
  ws.onclose = (ev) => finish({{ok: false, error: "closed code=" + ev.code + " reason=" + ev.reason}});
}})"#,
        url = js_str(wss_url),
        protos = protos,
        timeout_ms = timeout_ms,
    )
}

/// JS expression (a promise) that does `fetch(https_url, {headers: {Accept:
/// "application/nostr+json"}})` and resolves with `{ok, status, contentType, json, origin, ms}`
/// (`json` is null when the body is not JSON; then `body` holds its first 200 chars), or
/// `{ok:false, error, origin}` when fetch fails (network, TLS, certificate or CORS — the browser
/// does not say which). `origin` is the page's origin ("null" on about:blank). 10 s timeout.
pub fn nip11_probe(https_url: &str) -> String {
    format!(
        r#"(async () => {{
  const t0 = performance.now();
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), 10000);
  try {{
    const r = await fetch({url}, {{headers: {{Accept: "application/nostr+json"}}, cache: "no-store", signal: ctl.signal}});
    const text = await r.text();
    let json = null;
    try {{ json = JSON.parse(text); }} catch (_) {{}}
    const out = {{ok: r.ok && json !== null, status: r.status, contentType: r.headers.get("content-type"),
                 json, origin: self.origin, ms: Math.round(performance.now() - t0)}};
    if (json === null) out.body = text.slice(0, 200);
    return out;
  }} catch (e) {{
    return {{ok: false, error: String(e), origin: self.origin, ms: Math.round(performance.now() - t0)}};
  }} finally {{
    clearTimeout(timer);
  }}
}})()"#,
        url = js_str(https_url)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_roundtrip_known() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8hIQ==").unwrap(), b"hello!!");
        assert_eq!(base64_decode("iVBORw0KGgo=").unwrap(), b"\x89PNG\r\n\x1a\n");
        for s in [
            &b""[..],
            b"a",
            b"ab",
            b"abc",
            b"abcd",
            b"\xff\x00\xfe<html>",
        ] {
            assert_eq!(base64_decode(&base64_encode(s)).unwrap(), s);
        }
        assert_eq!(base64_encode(b"hello!!"), "aGVsbG8hIQ==");
    }

    #[tokio::test]
    async fn missing_binary_is_none() {
        let opts = LaunchOptions {
            binary: "/nonexistent/chromium".into(),
            ..Default::default()
        };
        assert!(Chromium::launch(opts).await.is_none());
    }

    #[test]
    fn probes_quote_urls() {
        let js = nostr_wss_probe("wss://relay.test:1/\"x");
        assert!(js.contains(r#"new WebSocket("wss://relay.test:1/\"x")"#));
        assert!(nip11_probe("https://a.test/").contains(r#"fetch("https://a.test/""#));
    }
}
