//! Operator checks on `deploy/`: the Kubernetes manifests, the systemd unit and the
//! Dockerfile agree with each other and with the gateway config they ship.
//!
//! Nothing here talks to a cluster or a container engine; the files are parsed and
//! cross-checked the way a reviewer would before `kubectl apply -k deploy/kubernetes`.

use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

const GATEWAY_CONFIGMAP: &str = "mosaic-gateway-config";
const GATEWAY_CONFIG_KEY: &str = "proxy.yaml";
const RELAY_CONFIGMAP: &str = "nostr-relay-config";
const GATEWAY_CONTAINER: &str = "mosaic-gateway";
const APP_LABEL: &str = "app.kubernetes.io/name";
const APP_NAME: &str = "mosaic-gateway";
/// Never applied by kustomize: it only documents the shape of the key Secret.
const PLACEHOLDER_SECRET_FILE: &str = "secret.yaml";

// ---------------------------------------------------------------------------
// Reading the files

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn kubernetes_dir() -> PathBuf {
    deploy_dir().join("kubernetes")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// One YAML document from a file under deploy/kubernetes.
struct Manifest {
    file: String,
    doc: Value,
}

impl Manifest {
    fn kind(&self) -> &str {
        self.doc["kind"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.doc["metadata"]["name"].as_str().unwrap_or_default()
    }
}

fn yaml_files() -> Vec<String> {
    let dir = kubernetes_dir();
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML files in {}", dir.display());
    files
}

fn manifests() -> Vec<Manifest> {
    let mut out = Vec::new();
    for file in yaml_files() {
        let text = read(&kubernetes_dir().join(&file));
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
            .unwrap_or_else(|e| panic!("{file}: not valid YAML: {e}"));
        assert!(!docs.is_empty(), "{file}: no YAML documents");
        out.extend(docs.into_iter().map(|doc| Manifest {
            file: file.clone(),
            doc,
        }));
    }
    out
}

fn find<'a>(all: &'a [Manifest], kind: &str, name: &str) -> &'a Value {
    let hits: Vec<&Manifest> = all
        .iter()
        .filter(|m| m.kind() == kind && m.name() == name)
        .collect();
    assert_eq!(hits.len(), 1, "expected exactly one {kind} named {name}");
    &hits[0].doc
}

fn only<'a>(all: &'a [Manifest], kind: &str) -> &'a Value {
    let hits: Vec<&Manifest> = all.iter().filter(|m| m.kind() == kind).collect();
    assert_eq!(hits.len(), 1, "expected exactly one {kind}");
    &hits[0].doc
}

fn array<'a>(value: &'a Value, what: &str) -> &'a [Value] {
    value
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_else(|| panic!("{what} must be a list, found {value}"))
}

fn string<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| panic!("{what} must be a non-empty string, found {value}"))
}

fn number(value: &Value, what: &str) -> u64 {
    value
        .as_u64()
        .unwrap_or_else(|| panic!("{what} must be a non-negative integer, found {value}"))
}

fn pod_spec(all: &[Manifest]) -> &Value {
    &only(all, "Deployment")["spec"]["template"]["spec"]
}

fn named<'a>(list: &'a Value, name: &str, what: &str) -> Option<&'a Value> {
    array(list, what).iter().find(|c| c["name"] == name)
}

fn sidecar(all: &[Manifest]) -> &Value {
    named(
        &pod_spec(all)["initContainers"],
        GATEWAY_CONTAINER,
        "initContainers",
    )
    .unwrap_or_else(|| panic!("no initContainer named {GATEWAY_CONTAINER}"))
}

fn regular_containers(all: &[Manifest]) -> &[Value] {
    array(&pod_spec(all)["containers"], "containers")
}

/// The containerPort a probe or Service port refers to, by name or by number.
fn resolve_port(container: &Value, port: &Value, what: &str) -> u16 {
    let ports = array(&container["ports"], "ports");
    let found = match port {
        Value::String(name) => ports.iter().find(|p| p["name"] == name.as_str()),
        Value::Number(_) => ports.iter().find(|p| p["containerPort"] == *port),
        other => panic!("{what}: port must be a name or a number, found {other}"),
    };
    let found = found.unwrap_or_else(|| {
        panic!(
            "{what}: port {port} is not declared by container {}",
            container["name"]
        )
    });
    let n = number(&found["containerPort"], "containerPort");
    u16::try_from(n).unwrap_or_else(|_| panic!("containerPort {n} out of range"))
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().filter(|s| !s.is_empty());
    match (selector, labels.as_object()) {
        (Some(selector), Some(labels)) => selector.iter().all(|(k, v)| labels.get(k) == Some(v)),
        _ => false,
    }
}

// ---------------------------------------------------------------------------
// The gateway config shipped in the ConfigMap, mirrored from CONTRACT.md.
// Unknown keys are errors in the gateway, so they are errors here too.

#[derive(Debug)]
struct Dur(Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(Dur)
            .ok_or_else(|| serde::de::Error::custom(format!("not a duration: {text:?}")))
    }
}

/// `500ms`, `10s`, `5m`, `1h`.
fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n * 60)),
        "h" => Some(Duration::from_secs(n * 3600)),
        _ => None,
    }
}

// Fields that no test reads are still parsed: their presence, names and values
// are what `gateway_config_uses_only_keys_the_gateway_knows` checks.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayConfig {
    listen: String,
    tls: Option<Tls>,
    admin: Option<Admin>,
    mosaic: Option<Mosaic>,
    nostr: Option<Nostr>,
    limits: Option<Limits>,
    forwarded: Option<Forwarded>,
    shutdown: Option<Shutdown>,
    log: Option<Log>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tls {
    key_file: String,
    certificate: Option<Certificate>,
    client_auth: Option<ClientAuth>,
    min_version: Option<TlsVersion>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Certificate {
    Auto,
    RawPublicKey,
    SelfSigned,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum ClientAuth {
    None,
    Optional,
    Required,
}

#[derive(Debug, Deserialize)]
enum TlsVersion {
    #[serde(rename = "1.2")]
    V12,
    #[serde(rename = "1.3")]
    V13,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Admin {
    listen: String,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Mosaic {
    subprotocols: Option<Vec<String>>,
    features: Option<Vec<String>>,
    validate: Option<Validate>,
    max_message_bytes: Option<u64>,
    backends: Vec<Backend>,
    authenticated_backends: Option<Vec<Backend>>,
    balance: Option<Balance>,
    health_check: Option<HealthCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Validate {
    Strict,
    Direction,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Balance {
    RoundRobin,
    LeastConnections,
    ClientKeyHash,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Backend {
    url: String,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthCheck {
    interval: Option<Dur>,
    timeout: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Nostr {
    upstream: Option<String>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Limits {
    max_connections: Option<u64>,
    max_connections_per_ip: Option<u64>,
    handshake_timeout: Option<Dur>,
    idle_timeout: Option<Dur>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Forwarded {
    trusted_proxies: Option<Vec<String>>,
    proxy_protocol: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Shutdown {
    drain_timeout: Option<Dur>,
}

#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Log {
    format: Option<LogFormat>,
    level: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum LogFormat {
    Text,
    Json,
}

impl GatewayConfig {
    fn listen_port(&self) -> u16 {
        socket_port(&self.listen, "listen")
    }

    fn admin_port(&self) -> u16 {
        let admin = self.admin.as_ref().expect("admin listener configured");
        socket_port(&admin.listen, "admin.listen")
    }

    fn drain_timeout(&self) -> Duration {
        self.shutdown
            .as_ref()
            .and_then(|s| s.drain_timeout.as_ref())
            .map_or(Duration::from_secs(25), |d| d.0)
    }
}

fn socket_port(addr: &str, what: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("{what}: no port in {addr:?}"))
}

/// Host and port of a `ws://host:port/...` URL.
fn url_host_port(url: &str) -> (String, u16) {
    let rest = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("{url:?} has no scheme"));
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{url:?} has no explicit port"));
    let port = port.parse().unwrap_or_else(|_| panic!("{url:?}: bad port"));
    (host.to_owned(), port)
}

fn configmap_entry<'a>(all: &'a [Manifest], name: &str, key: &str) -> &'a str {
    string(
        &find(all, "ConfigMap", name)["data"][key],
        &format!("ConfigMap {name} data.{key}"),
    )
}

fn gateway_config(all: &[Manifest]) -> GatewayConfig {
    let text = configmap_entry(all, GATEWAY_CONFIGMAP, GATEWAY_CONFIG_KEY);
    serde_saphyr::from_str(text).unwrap_or_else(|e| {
        panic!(
            "ConfigMap {GATEWAY_CONFIGMAP} {GATEWAY_CONFIG_KEY} is not a valid gateway config: {e}"
        )
    })
}

/// `key = value` pairs per `[section]` of a flat TOML file (enough for the relay config).
fn toml_sections(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut sections: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = section.trim().to_owned();
        } else if let Some((key, value)) = line.split_once('=') {
            sections.entry(current.clone()).or_default().insert(
                key.trim().to_owned(),
                value.trim().trim_matches('"').to_owned(),
            );
        }
    }
    sections
}

/// Seconds a preStop hook sleeps: `exec: ["/bin/sleep", "N"]` or `sleep: {seconds: N}`.
fn pre_stop_seconds(container: &Value) -> u64 {
    let hook = &container["lifecycle"]["preStop"];
    if let Some(seconds) = hook["sleep"]["seconds"].as_u64() {
        return seconds;
    }
    match hook["exec"]["command"].as_array() {
        Some(cmd) => {
            let argv: Vec<&str> = cmd.iter().filter_map(Value::as_str).collect();
            match argv.as_slice() {
                [prog, secs] if prog.ends_with("sleep") => secs
                    .parse()
                    .unwrap_or_else(|_| panic!("preStop sleeps for {secs:?} seconds?")),
                _ => panic!(
                    "{}: cannot tell how long preStop {argv:?} takes",
                    container["name"]
                ),
            }
        }
        None => 0,
    }
}

/// Path a container's volumeMount puts a file at: (volume name, file name within the volume).
fn mount_for(container: &Value, path: &str) -> Option<(String, String)> {
    let mounts = container["volumeMounts"].as_array()?;
    mounts.iter().find_map(|m| {
        let mount_path = m["mountPath"].as_str()?.trim_end_matches('/');
        let volume = m["name"].as_str()?.to_owned();
        if let Some(sub) = m["subPath"].as_str() {
            (mount_path == path).then(|| (volume, sub.to_owned()))
        } else {
            let rest = path.strip_prefix(mount_path)?.strip_prefix('/')?;
            Some((volume, rest.to_owned()))
        }
    })
}

fn volume<'a>(all: &'a [Manifest], name: &str) -> &'a Value {
    named(&pod_spec(all)["volumes"], name, "volumes")
        .unwrap_or_else(|| panic!("no volume named {name}"))
}

/// The key in a ConfigMap/Secret volume source that appears as `file` in the volume.
fn source_key(source: &Value, file: &str) -> String {
    match source["items"].as_array() {
        Some(items) => items
            .iter()
            .find(|i| i["path"] == file)
            .map(|i| string(&i["key"], "items[].key").to_owned())
            .unwrap_or_else(|| panic!("no item of the volume is projected to {file}")),
        None => file.to_owned(),
    }
}

fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim().to_owned())
        .collect()
}

fn dockerfile() -> String {
    read(&deploy_dir().join("Dockerfile"))
}

/// Instructions of the final stage: (INSTRUCTION, arguments), continuation lines joined.
fn runtime_stage(dockerfile: &str) -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut pending = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => pending.push_str(part),
            None => {
                pending.push_str(line);
                let (op, args) = pending
                    .split_once(char::is_whitespace)
                    .unwrap_or((&pending, ""));
                instructions.push((op.to_ascii_uppercase(), args.trim().to_owned()));
                pending.clear();
            }
        }
    }
    let last_from = instructions
        .iter()
        .rposition(|(op, _)| op == "FROM")
        .expect("Dockerfile has a FROM");
    instructions.split_off(last_from)
}

fn json_array(args: &str, what: &str) -> Vec<String> {
    serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("{what} should be in exec (JSON array) form: {args}: {e}"))
}

// ---------------------------------------------------------------------------
// Kubernetes

#[test]
fn every_manifest_has_api_version_kind_and_name() {
    for m in manifests() {
        let file = &m.file;
        string(&m.doc["apiVersion"], &format!("{file}: apiVersion"));
        let kind = string(&m.doc["kind"], &format!("{file}: kind"));
        if kind == "Kustomization" {
            continue;
        }
        string(
            &m.doc["metadata"]["name"],
            &format!("{file}: metadata.name"),
        );
        assert_eq!(
            m.doc["metadata"]["labels"][APP_LABEL],
            APP_NAME,
            "{file}: {kind} {} should carry {APP_LABEL}: {APP_NAME}",
            m.name()
        );
    }
}

#[test]
fn kustomization_applies_every_manifest_but_never_the_placeholder_key() {
    let all = manifests();
    let kustomization = only(&all, "Kustomization");
    let listed: BTreeSet<String> = array(&kustomization["resources"], "resources")
        .iter()
        .map(|r| string(r, "resources[]").to_owned())
        .collect();
    for resource in &listed {
        assert!(
            kubernetes_dir().join(resource).is_file(),
            "kustomization lists {resource}, which does not exist"
        );
    }
    let expected: BTreeSet<String> = all
        .iter()
        .filter(|m| m.kind() != "Kustomization" && m.file != PLACEHOLDER_SECRET_FILE)
        .map(|m| m.file.clone())
        .collect();
    assert_eq!(listed, expected, "kustomization resources");
    assert!(
        all.iter()
            .any(|m| m.file == PLACEHOLDER_SECRET_FILE && m.kind() == "Secret"),
        "{PLACEHOLDER_SECRET_FILE} should document the key Secret"
    );
}

#[test]
fn deployment_selector_matches_its_pod_labels() {
    let all = manifests();
    let deployment = only(&all, "Deployment");
    assert_eq!(deployment["apiVersion"], "apps/v1");
    assert!(
        labels_match(
            &deployment["spec"]["selector"]["matchLabels"],
            &deployment["spec"]["template"]["metadata"]["labels"],
        ),
        "spec.selector.matchLabels must be non-empty and a subset of the pod template labels"
    );
}

#[test]
fn every_container_has_a_name_and_an_image() {
    let all = manifests();
    let spec = pod_spec(&all);
    let mut names = BTreeSet::new();
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            let name = string(&c["name"], &format!("{list}[].name"));
            string(&c["image"], &format!("{list}[{name}].image"));
            assert!(names.insert(name.to_owned()), "container {name} twice");
        }
    }
    assert!(
        !regular_containers(&all).is_empty(),
        "a pod needs a regular container"
    );
}

#[test]
fn gateway_config_uses_only_keys_the_gateway_knows() {
    let all = manifests();
    // The gateway's own parser and validator must accept the shipped config as it is.
    let text = configmap_entry(&all, GATEWAY_CONFIGMAP, GATEWAY_CONFIG_KEY);
    if let Err(e) = mosaic_gateway::config::parse(text) {
        panic!("the gateway refuses the shipped config:\n{e}");
    }
    let config = gateway_config(&all);
    let tls = config.tls.as_ref().expect("the shipped config serves TLS");
    assert!(
        tls.key_file.starts_with('/'),
        "tls.key_file should be absolute in a container"
    );
    let mosaic = config.mosaic.as_ref().expect("mosaic section");
    assert!(!mosaic.backends.is_empty(), "mosaic.backends is empty");
    for backend in &mosaic.backends {
        url_host_port(&backend.url);
    }
    assert!(matches!(
        config.log.as_ref().and_then(|l| l.format.as_ref()),
        Some(LogFormat::Json)
    ));
    assert_eq!(config.admin_port(), 9090);
    assert_eq!(config.listen_port(), 8443);
}

#[test]
fn gateway_runs_as_a_native_sidecar() {
    let all = manifests();
    let gateway = sidecar(&all);
    assert_eq!(
        gateway["restartPolicy"], "Always",
        "the gateway initContainer needs restartPolicy: Always to be a sidecar"
    );
    assert!(
        named(
            &pod_spec(&all)["containers"],
            GATEWAY_CONTAINER,
            "containers"
        )
        .is_none(),
        "the gateway must not also be a regular container"
    );
}

#[test]
fn gateway_is_started_with_the_mounted_config() {
    let all = manifests();
    let gateway = sidecar(&all);
    let args: Vec<&str> = array(&gateway["args"], "args")
        .iter()
        .map(|a| string(a, "args[]"))
        .collect();
    let ["run", "--config", path] = args.as_slice() else {
        panic!("gateway args should be run --config FILE, found {args:?}");
    };
    let (volume_name, file) = mount_for(gateway, path)
        .unwrap_or_else(|| panic!("nothing is mounted at {path} in the gateway"));
    let source = &volume(&all, &volume_name)["configMap"];
    assert_eq!(
        source["name"], GATEWAY_CONFIGMAP,
        "{path} should come from the gateway ConfigMap"
    );
    assert_eq!(source_key(source, &file), GATEWAY_CONFIG_KEY);
}

#[test]
fn probes_point_at_the_admin_listener() {
    let all = manifests();
    let config = gateway_config(&all);
    let gateway = sidecar(&all);
    for (probe, path) in [
        ("livenessProbe", Some("/livez")),
        ("readinessProbe", Some("/readyz")),
        ("startupProbe", None),
    ] {
        let http = &gateway[probe]["httpGet"];
        if probe == "startupProbe" && gateway[probe].is_null() {
            continue;
        }
        let port = resolve_port(gateway, &http["port"], probe);
        assert_eq!(
            port,
            config.admin_port(),
            "{probe} must hit admin.listen's port"
        );
        let actual = string(&http["path"], &format!("{probe}.httpGet.path"));
        match path {
            Some(expected) => assert_eq!(actual, expected, "{probe} path"),
            // The startup probe gates the relay's start; /readyz may wait for the relay.
            None => assert_eq!(actual, "/livez", "startupProbe must not wait on upstreams"),
        }
    }
}

#[test]
fn websocket_port_matches_the_public_listener() {
    let all = manifests();
    let config = gateway_config(&all);
    let gateway = sidecar(&all);
    assert_eq!(
        resolve_port(gateway, &Value::from("ws"), "ws port"),
        config.listen_port()
    );
}

#[test]
fn service_targets_ports_the_sidecar_declares() {
    let all = manifests();
    let config = gateway_config(&all);
    let service = only(&all, "Service");
    let deployment = only(&all, "Deployment");
    assert!(
        labels_match(
            &service["spec"]["selector"],
            &deployment["spec"]["template"]["metadata"]["labels"]
        ),
        "the Service selector must select the gateway pods"
    );
    let gateway = sidecar(&all);
    let mut targets = BTreeMap::new();
    for port in array(&service["spec"]["ports"], "Service ports") {
        let name = string(&port["name"], "Service port name");
        let target = resolve_port(
            gateway,
            &port["targetPort"],
            &format!("Service port {name}"),
        );
        targets.insert(name.to_owned(), (number(&port["port"], "port"), target));
    }
    assert_eq!(targets.get("wss"), Some(&(443, config.listen_port())));
    assert_eq!(
        targets.get("metrics"),
        Some(&(u64::from(config.admin_port()), config.admin_port()))
    );
}

#[test]
fn servicemonitor_scrapes_the_services_metrics_port() {
    let all = manifests();
    let config = gateway_config(&all);
    let monitor = only(&all, "ServiceMonitor");
    let service = only(&all, "Service");
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1");
    assert!(
        labels_match(
            &monitor["spec"]["selector"]["matchLabels"],
            &service["metadata"]["labels"]
        ),
        "the ServiceMonitor selector must match the Service labels"
    );
    let endpoints = array(&monitor["spec"]["endpoints"], "endpoints");
    assert!(!endpoints.is_empty(), "ServiceMonitor has no endpoints");
    for endpoint in endpoints {
        let port_name = string(&endpoint["port"], "endpoint port");
        let port = named(&service["spec"]["ports"], port_name, "Service ports")
            .unwrap_or_else(|| panic!("the Service has no port named {port_name}"));
        let target = resolve_port(sidecar(&all), &port["targetPort"], port_name);
        assert_eq!(
            target,
            config.admin_port(),
            "metrics are served on admin.listen"
        );
        assert_eq!(endpoint["path"], "/metrics");
        assert_eq!(endpoint["interval"], "15s");
    }
}

#[test]
fn pod_outlives_prestop_and_drain() {
    let all = manifests();
    let drain = gateway_config(&all).drain_timeout();
    let grace = Duration::from_secs(number(
        &pod_spec(&all)["terminationGracePeriodSeconds"],
        "terminationGracePeriodSeconds",
    ));
    // Regular containers stop first (their preStop runs in parallel), then the
    // sidecar runs its preStop and drains.
    let main_pre_stop = regular_containers(&all)
        .iter()
        .map(pre_stop_seconds)
        .max()
        .unwrap_or(0);
    let gateway_pre_stop = pre_stop_seconds(sidecar(&all));
    assert!(
        gateway_pre_stop > 0,
        "the gateway should wait for endpoints to update before draining"
    );
    let needed = Duration::from_secs(main_pre_stop + gateway_pre_stop) + drain;
    assert!(
        grace > needed,
        "terminationGracePeriodSeconds {grace:?} must exceed preStop sleeps + drain_timeout = {needed:?}"
    );
}

#[test]
fn key_is_mounted_where_the_config_expects_it_and_not_world_readable() {
    let all = manifests();
    let config = gateway_config(&all);
    let key_file = &config.tls.as_ref().expect("tls configured").key_file;
    let (volume_name, file) = mount_for(sidecar(&all), key_file)
        .unwrap_or_else(|| panic!("nothing is mounted at {key_file} in the gateway"));
    let source = &volume(&all, &volume_name)["secret"];
    let secret_name = string(&source["secretName"], "secret.secretName");
    let secret = find(&all, "Secret", secret_name);
    let key = source_key(source, &file);
    assert!(
        !secret["stringData"][&key].is_null() || !secret["data"][&key].is_null(),
        "Secret {secret_name} has no {key}"
    );
    let mode = source["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["key"] == key.as_str()))
        .and_then(|item| item["mode"].as_u64())
        .or_else(|| source["defaultMode"].as_u64())
        .expect("set defaultMode: the Kubernetes default 0644 is world-readable");
    assert_eq!(mode & 0o007, 0, "key mode {mode:#o} is world-accessible");
    // Secret files are owned by root; a non-root gateway reads them through fsGroup.
    assert_ne!(mode & 0o040, 0, "key mode {mode:#o} is not group-readable");
    assert!(
        pod_spec(&all)["securityContext"]["fsGroup"].is_u64(),
        "without fsGroup the non-root gateway cannot read the key"
    );
}

#[test]
fn gateway_container_is_locked_down() {
    let all = manifests();
    let pod = &pod_spec(&all)["securityContext"];
    let gateway = sidecar(&all);
    let ctx = &gateway["securityContext"];
    assert!(ctx["runAsNonRoot"] == true || pod["runAsNonRoot"] == true);
    assert_ne!(ctx["runAsUser"], 0);
    assert_ne!(pod["runAsUser"], 0);
    assert_eq!(ctx["readOnlyRootFilesystem"], true);
    assert_eq!(ctx["allowPrivilegeEscalation"], false);
    assert!(
        array(&ctx["capabilities"]["drop"], "capabilities.drop").contains(&Value::from("ALL")),
        "drop ALL capabilities"
    );
    assert!(
        gateway["resources"]["requests"].is_object() && gateway["resources"]["limits"].is_object(),
        "set resource requests and limits"
    );
}

#[test]
fn nostr_upstream_is_the_relay_in_the_same_pod() {
    let all = manifests();
    let config = gateway_config(&all);
    let upstream = config
        .nostr
        .as_ref()
        .and_then(|n| n.upstream.as_deref())
        .expect("nostr.upstream is set");
    let (host, port) = url_host_port(upstream);
    assert!(
        host == "127.0.0.1" || host == "localhost",
        "upstream {upstream} is not in the pod"
    );
    let relay = regular_containers(&all)
        .iter()
        .find(|c| {
            c["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["containerPort"] == port)
        })
        .unwrap_or_else(|| panic!("no container in the pod listens on {port}"));
    assert!(
        relay["readinessProbe"].is_object(),
        "the relay needs a readinessProbe"
    );
    let relay_config = toml_sections(configmap_entry(&all, RELAY_CONFIGMAP, "config.toml"));
    assert_eq!(
        relay_config
            .get("network")
            .and_then(|n| n.get("port"))
            .map(String::as_str),
        Some(port.to_string().as_str()),
        "the relay's config.toml [network] port"
    );
}

// ---------------------------------------------------------------------------
// systemd and the image

#[test]
fn systemd_unit_runs_the_gateway_and_outlasts_its_drain() {
    let unit = read(&deploy_dir().join("systemd/mosaic-gateway.service"));
    let exec_start = unit_values(&unit, "ExecStart");
    assert_eq!(exec_start.len(), 1, "one ExecStart");
    assert!(
        exec_start[0].contains("mosaic-gateway run --config "),
        "ExecStart should be `mosaic-gateway run --config FILE`: {}",
        exec_start[0]
    );
    assert_eq!(unit_values(&unit, "KillSignal"), ["SIGTERM"]);
    let stop = unit_values(&unit, "TimeoutStopSec");
    let stop: u64 = stop
        .first()
        .and_then(|s| s.trim_end_matches('s').parse().ok())
        .expect("TimeoutStopSec in seconds");
    let drain = gateway_config(&manifests()).drain_timeout();
    assert!(Duration::from_secs(stop) > drain);
    let dynamic = unit_values(&unit, "DynamicUser").contains(&"yes".to_owned());
    let user = unit_values(&unit, "User");
    assert!(
        dynamic || user.iter().any(|u| u != "root" && u != "0"),
        "the unit must not run as root"
    );
}

#[test]
fn image_runs_as_a_non_root_user() {
    let all = manifests();
    let stage = runtime_stage(&dockerfile());
    let user = stage
        .iter()
        .rev()
        .find(|(op, _)| op == "USER")
        .map(|(_, args)| args.clone())
        .expect("the runtime stage sets USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        !uid.is_empty() && uid != "root" && uid != "0",
        "USER {user} is root"
    );
    if let Some(pod_uid) = pod_spec(&all)["securityContext"]["runAsUser"].as_u64() {
        assert_eq!(
            uid,
            pod_uid.to_string(),
            "image USER and pod runAsUser differ"
        );
    }
}

#[test]
fn image_exposes_the_ports_and_config_the_manifests_use() {
    let all = manifests();
    let config = gateway_config(&all);
    let stage = runtime_stage(&dockerfile());
    let args = |op: &str| -> Vec<&str> {
        stage
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    let exposed: BTreeSet<u16> = args("EXPOSE")
        .iter()
        .flat_map(|a| a.split_whitespace())
        .map(|p| p.trim_end_matches("/tcp").parse().expect("EXPOSE port"))
        .collect();
    assert!(exposed.contains(&config.listen_port()));
    assert!(exposed.contains(&config.admin_port()));
    let entrypoint = args("ENTRYPOINT");
    let entrypoint = json_array(entrypoint.last().expect("ENTRYPOINT"), "ENTRYPOINT");
    assert_eq!(entrypoint, ["mosaic-gateway"]);
    let cmd = json_array(args("CMD").last().expect("CMD"), "CMD");
    let sidecar_args: Vec<String> = array(&sidecar(&all)["args"], "args")
        .iter()
        .map(|a| string(a, "args[]").to_owned())
        .collect();
    assert_eq!(
        cmd, sidecar_args,
        "the image's default command and the sidecar's args should agree"
    );
    assert_eq!(args("STOPSIGNAL"), ["SIGTERM"]);
}
