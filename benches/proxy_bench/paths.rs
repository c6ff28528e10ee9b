//! The paths under test: direct to the backend, or through mosaic-gateway, nginx or HAProxy,
//! each proxy a foreground child process with its own config in the run's directory.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;

use crate::backend::Backend;
use crate::procfs::process_tree;
use crate::settings::Settings;
use crate::tls::{tls_connector, TlsFiles};
use crate::wire::{one_connection, submission_frame};
use crate::{GATEWAY_BIN, MANIFEST_DIR};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Direct,
    Gateway,
    Nginx,
    Haproxy,
    /// mosaic-gateway with every rate limit and an access list configured, none of them hit
    /// (BENCH_GATEWAY_LIMITS=1): what an idle limiter costs.
    GatewayLimits,
}

/// How many kinds of path there are (the figures' arrays).
pub const PATHS: usize = 5;

impl PathKind {
    const ALL: [PathKind; PATHS] = [
        PathKind::Direct,
        PathKind::Gateway,
        PathKind::Nginx,
        PathKind::Haproxy,
        PathKind::GatewayLimits,
    ];

    pub fn parse(s: &str) -> Option<PathKind> {
        match s {
            "direct" => Some(PathKind::Direct),
            "gateway" | "mosaic-gateway" => Some(PathKind::Gateway),
            "nginx" => Some(PathKind::Nginx),
            "haproxy" => Some(PathKind::Haproxy),
            "gateway-limits" => Some(PathKind::GatewayLimits),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            PathKind::Direct => "direct",
            PathKind::Gateway => "mosaic-gateway",
            PathKind::Nginx => "nginx",
            PathKind::Haproxy => "HAProxy",
            PathKind::GatewayLimits => "gateway+limits",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    fn is_gateway(self) -> bool {
        matches!(self, PathKind::Gateway | PathKind::GatewayLimits)
    }
}

/// Installs nginx, HAProxy and openssl (bench/install-proxies.sh) when one is missing.
pub fn install_missing() {
    if !(have("nginx") && have("haproxy") && have("openssl")) {
        let script = Path::new(MANIFEST_DIR).join("bench/install-proxies.sh");
        let st = Command::new("bash").arg(script).status();
        if !matches!(st, Ok(s) if s.success()) {
            eprintln!("bench: could not install nginx/haproxy; those paths are skipped");
        }
    }
}

/// The paths BENCH_PATHS asks for whose programs are installed, in table order.
pub fn available(set: &Settings) -> Vec<PathKind> {
    PathKind::ALL
        .into_iter()
        .filter(|p| set.paths.contains(p))
        .filter(|p| match p {
            PathKind::Nginx => have("nginx"),
            PathKind::Haproxy => have("haproxy"),
            _ => true,
        })
        .collect()
}

pub fn which(name: &str) -> PathBuf {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/sbin",
        "/bin",
    ] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

fn have(name: &str) -> bool {
    which(name).is_absolute()
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// What every path starts from: the run's directory, the backend and the TLS material.
pub struct Setup {
    dir: PathBuf,
    backend: Backend,
    tls: TlsFiles,
    /// BENCH_GATEWAY_WRAPPER.
    wrapper: Option<String>,
}

impl Setup {
    /// Also makes the directories nginx wants under its prefix (`dir`).
    pub fn new(dir: &Path, backend: Backend, tls: TlsFiles, set: &Settings) -> Setup {
        for d in [
            "nginx-body",
            "nginx-proxy",
            "nginx-fastcgi",
            "nginx-uwsgi",
            "nginx-scgi",
            "logs",
        ] {
            let _ = std::fs::create_dir_all(dir.join(d));
        }
        Setup {
            dir: dir.to_path_buf(),
            backend,
            tls,
            wrapper: set.wrapper.clone(),
        }
    }

    /// Writes `file` in the run's directory: bench/`template` with every `{{NAME}}` filled in.
    fn write_config(&self, file: &str, template: &str, vars: &[(&str, String)]) -> PathBuf {
        let mut s = std::fs::read_to_string(Path::new(MANIFEST_DIR).join("bench").join(template))
            .unwrap_or_else(|e| panic!("bench/{template}: {e}"));
        for (k, v) in vars {
            s = s.replace(&format!("{{{{{k}}}}}"), v);
        }
        let path = self.dir.join(file);
        std::fs::write(&path, s).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    fn backend_port(&self) -> String {
        self.backend.plain.port().to_string()
    }
}

/// A started path: its proxy (none for direct) and the addresses clients use.
pub struct RunningPath {
    pub kind: PathKind,
    proxy: Option<Proxy>,
    pub plain: SocketAddr,
    pub tls: SocketAddr,
    /// The gateway's TLS instance, when it serves TLS from a second process.
    tls_proxy: Option<Proxy>,
}

impl RunningPath {
    /// The pid of the path's (plain) proxy; none for direct.
    pub fn proxy_pid(&self) -> Option<u32> {
        self.proxy.as_ref().map(Proxy::pid)
    }

    /// Every process of the path's (plain) proxy; empty for direct.
    pub fn pids(&self) -> Vec<u32> {
        self.proxy_pid().map(process_tree).unwrap_or_default()
    }

    /// Every process of the gateway's TLS instance; none when TLS is served by [`Self::pids`].
    pub fn tls_pids(&self) -> Option<Vec<u32>> {
        self.tls_proxy.as_ref().map(|x| process_tree(x.pid()))
    }

    pub fn stop(self) {
        if let Some(p) = self.proxy {
            p.stop();
        }
        if let Some(p) = self.tls_proxy {
            p.stop();
        }
    }
}

/// Starts every path of `paths` for the load figures; `gateway_tls`: the gateway gets a
/// second instance with a TLS listener.
pub fn start_all(
    paths: &[PathKind],
    setup: &Setup,
    rt: &Runtime,
    gateway_tls: bool,
) -> Vec<RunningPath> {
    paths
        .iter()
        .map(|&p| {
            let mut s = start_path(p, setup, rt);
            if p.is_gateway() && gateway_tls {
                let t = start_gateway(setup, rt, true, p == PathKind::GatewayLimits);
                s.tls = t.addr;
                s.tls_proxy = Some(t);
            }
            s
        })
        .collect()
}

/// Starts one path; nginx and HAProxy listen for TLS too, the gateway plain only.
pub fn start_path(kind: PathKind, setup: &Setup, rt: &Runtime) -> RunningPath {
    let (proxy, plain, tls) = match kind {
        PathKind::Direct => (None, setup.backend.plain, setup.backend.tls),
        PathKind::Gateway | PathKind::GatewayLimits => {
            let g = start_gateway(setup, rt, false, kind == PathKind::GatewayLimits);
            let addr = g.addr;
            (Some(g), addr, addr)
        }
        PathKind::Nginx => {
            let (port, tls_port) = (free_port(), free_port());
            let conf = setup.write_config(
                "nginx.conf",
                "nginx.conf.template",
                &[
                    ("DIR", setup.dir.display().to_string()),
                    ("PORT", port.to_string()),
                    ("TLS_PORT", tls_port.to_string()),
                    ("BACKEND_PORT", setup.backend_port()),
                    ("CERT", setup.tls.cert.display().to_string()),
                    ("KEY", setup.tls.key.display().to_string()),
                ],
            );
            let mut cmd = Command::new(which("nginx"));
            cmd.arg("-p")
                .arg(&setup.dir)
                .arg("-e")
                .arg(setup.dir.join("nginx-error.log"))
                .arg("-c")
                .arg(&conf);
            let p = Proxy::spawn("nginx", cmd, local(port), setup, rt, false);
            (Some(p), local(port), local(tls_port))
        }
        PathKind::Haproxy => {
            let (port, tls_port) = (free_port(), free_port());
            let conf = setup.write_config(
                "haproxy.cfg",
                "haproxy.cfg.template",
                &[
                    ("PORT", port.to_string()),
                    ("TLS_PORT", tls_port.to_string()),
                    ("BACKEND_PORT", setup.backend_port()),
                    ("PEM", setup.tls.pem.display().to_string()),
                ],
            );
            let mut cmd = Command::new(which("haproxy"));
            cmd.arg("-db").arg("-f").arg(&conf);
            let p = Proxy::spawn("haproxy", cmd, local(port), setup, rt, false);
            (Some(p), local(port), local(tls_port))
        }
    };
    RunningPath {
        kind,
        proxy,
        plain,
        tls,
        tls_proxy: None,
    }
}

/// Every rate limit and an access list, set so that the benchmark's load never hits them:
/// the limiter's cost when it has nothing to limit.
const IDLE_LIMITS: &str = "rate_limits:
  connections_per_ip: { rate: 1000000000, per: 1s }
  messages_per_connection: { rate: 1000000000, per: 1s, action: throttle }
  bytes_per_connection: { rate: 1000000000000, per: 1s }
  mosaic_submissions: { rate: 1000000000, per: 1s, scope: connection }
  mosaic_open_queries: 32
access:
  deny: [192.0.2.0/24, \"2001:db8::/32\"]
";

/// Starts a gateway with a plain or a TLS listener, with the idle limits or none.
/// BENCH_GATEWAY_WRAPPER wraps the plain one only.
fn start_gateway(setup: &Setup, rt: &Runtime, tls: bool, limits: bool) -> Proxy {
    let port = free_port();
    let tls_block = if tls {
        format!(
            "tls:\n  certificates:\n    - cert_file: {}\n      key_file: {}\n  client_auth: none\n  min_version: \"1.3\"",
            setup.tls.cert.display(),
            setup.tls.key.display()
        )
    } else {
        String::new()
    };
    let name = match (tls, limits) {
        (false, false) => "gateway",
        (true, false) => "gateway-tls",
        (false, true) => "gateway-limits",
        (true, true) => "gateway-limits-tls",
    };
    let conf = setup.write_config(
        &format!("{name}.yaml"),
        "gateway.yaml.template",
        &[
            ("PORT", port.to_string()),
            ("ADMIN_PORT", free_port().to_string()),
            ("BACKEND_PORT", setup.backend_port()),
            ("TLS", tls_block),
            ("LIMITS", if limits { IDLE_LIMITS } else { "" }.to_string()),
        ],
    );
    let mut cmd = match (&setup.wrapper, !tls) {
        (Some(w), true) => {
            let mut parts = w.split_whitespace();
            let mut c = Command::new(parts.next().expect("wrapper command"));
            c.args(parts).arg(GATEWAY_BIN);
            c
        }
        _ => Command::new(GATEWAY_BIN),
    };
    cmd.arg("run").arg("--config").arg(&conf);
    Proxy::spawn(name, cmd, local(port), setup, rt, tls)
}

/// A proxy as a child process; stopped (SIGTERM, then SIGKILL) when dropped.
struct Proxy {
    name: String,
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Proxy {
    /// Starts `cmd` with its output in `name`.log; returns once a full upgrade and round
    /// trip (over TLS when `tls`) goes through `addr`.
    fn spawn(
        name: &str,
        mut cmd: Command,
        addr: SocketAddr,
        setup: &Setup,
        rt: &Runtime,
        tls: bool,
    ) -> Proxy {
        let log = setup.dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).expect("log file");
        cmd.stdin(Stdio::null())
            .stdout(f.try_clone().expect("log file"))
            .stderr(f);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let mut p = Proxy {
            name: name.to_string(),
            child,
            addr,
            log,
        };
        p.wait_ready(rt, tls);
        p
    }

    fn wait_ready(&mut self, rt: &Runtime, tls: bool) {
        let frame = submission_frame();
        let connector = tls.then(tls_connector);
        let t = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("{} exited at start ({st}):\n{}", self.name, self.log_text());
            }
            let ok = rt.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(2),
                    one_connection(self.addr, connector.as_ref(), &frame),
                )
                .await
                .map(|r| r.is_ok())
                .unwrap_or(false)
            });
            if ok {
                return;
            }
            if t.elapsed() > Duration::from_secs(30) {
                self.terminate();
                panic!(
                    "{} not ready on {}:\n{}",
                    self.name,
                    self.addr,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("    {} did not stop on SIGTERM; killed", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.terminate();
    }
}
