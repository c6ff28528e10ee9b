//! Operator checks on `deploy/`: the Kubernetes manifests, the systemd unit and the
//! Dockerfile agree with each other and with the gateway config they ship.
//!
//! Nothing here talks to a cluster or a container engine; the files are parsed and
//! cross-checked the way a reviewer would before `kubectl apply -k
//! deploy/kubernetes/overlays/<layout>`. Each layout is read as kustomize renders it (its
//! resources, followed into `../../base`); `.ci/run` also renders both with `kubectl
//! kustomize` and validates every manifest with `kubernetes-validate --strict`, which has
//! no schema for the Prometheus Operator's kinds: their shape is checked here.

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
/// The layouts, each a kustomize overlay under deploy/kubernetes/overlays.
const LAYOUTS: [&str; 2] = ["sidecar", "edge"];

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

/// Every YAML file under deploy/kubernetes, as paths relative to it.
fn yaml_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }
    let dir = kubernetes_dir();
    let mut paths = Vec::new();
    walk(&dir, &mut paths);
    let mut files: Vec<String> = paths.iter().map(|p| relative(p)).collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML files in {}", dir.display());
    files
}

/// `path` relative to deploy/kubernetes, with `..` resolved.
fn relative(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    for c in path
        .strip_prefix(kubernetes_dir())
        .unwrap_or(path)
        .components()
    {
        match c {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            _ => {}
        }
    }
    parts.join("/")
}

fn documents(file: &str) -> Vec<Manifest> {
    let text = read(&kubernetes_dir().join(file));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("{file}: not valid YAML: {e}"));
    assert!(!docs.is_empty(), "{file}: no YAML documents");
    docs.into_iter()
        .map(|doc| Manifest {
            file: file.to_owned(),
            doc,
        })
        .collect()
}

/// Every document of every YAML file under deploy/kubernetes.
fn all_files() -> Vec<Manifest> {
    yaml_files().iter().flat_map(|f| documents(f)).collect()
}

/// The resources a kustomization directory (relative to deploy/kubernetes) renders, read
/// as kustomize does: files in order, directories through their own kustomization.
fn kustomize(dir: &str) -> Vec<Manifest> {
    let file = format!("{dir}/kustomization.yaml");
    let k = documents(&file).remove(0).doc;
    assert_eq!(k["kind"], "Kustomization", "{file}");
    let mut out = Vec::new();
    for r in array(&k["resources"], &format!("{file}: resources")) {
        let r = string(r, "resources[]");
        let target = relative(&kubernetes_dir().join(dir).join(r));
        let path = kubernetes_dir().join(&target);
        if path.is_dir() {
            out.extend(kustomize(&target));
        } else {
            assert!(path.is_file(), "{file} lists {r}, which does not exist");
            out.extend(documents(&target));
        }
    }
    out
}

/// What `kubectl kustomize deploy/kubernetes/overlays/<name>` applies, plus the placeholder
/// key Secret (created by hand, see secret.yaml).
fn layout(name: &str) -> Vec<Manifest> {
    let mut all = kustomize(&format!("overlays/{name}"));
    all.extend(documents(PLACEHOLDER_SECRET_FILE));
    all
}

fn layouts() -> Vec<(&'static str, Vec<Manifest>)> {
    LAYOUTS.iter().map(|l| (*l, layout(l))).collect()
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

/// The gateway's container: a native sidecar (an initContainer) or a regular container.
fn gateway_container(all: &[Manifest]) -> &Value {
    let spec = pod_spec(all);
    ["initContainers", "containers"]
        .iter()
        .find_map(|list| {
            spec[*list]
                .as_array()
                .and_then(|l| l.iter().find(|c| c["name"] == GATEWAY_CONTAINER))
        })
        .unwrap_or_else(|| panic!("no container named {GATEWAY_CONTAINER}"))
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
    dns_refresh: Option<Dur>,
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
    url: Option<String>,
    dns: Option<String>,
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

/// Runs a check on every layout (the layout's name goes to stderr first, so a failure
/// says which one).
fn for_each_layout(check: fn(&[Manifest])) {
    for (name, all) in layouts() {
        eprintln!("layout {name}");
        check(&all);
    }
}

#[test]
fn every_manifest_has_api_version_kind_and_name() {
    for m in all_files() {
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
fn every_manifest_is_in_a_layout_but_never_the_placeholder_key() {
    let mut used = BTreeSet::new();
    for layout in LAYOUTS {
        let rendered = kustomize(&format!("overlays/{layout}"));
        assert!(
            rendered.iter().any(|m| m.file.starts_with("base/")),
            "overlay {layout} should build on ../../base"
        );
        let mut seen = BTreeSet::new();
        for m in &rendered {
            assert!(
                seen.insert((m.kind().to_owned(), m.name().to_owned())),
                "{layout}: {} {} twice",
                m.kind(),
                m.name()
            );
            assert_ne!(m.kind(), "Secret", "{layout} must not apply a key Secret");
        }
        used.extend(rendered.into_iter().map(|m| m.file));
    }
    for file in yaml_files() {
        if file.ends_with("kustomization.yaml") || file == PLACEHOLDER_SECRET_FILE {
            continue;
        }
        assert!(used.contains(&file), "{file} is in no layout");
    }
    assert!(
        documents(PLACEHOLDER_SECRET_FILE)
            .iter()
            .any(|m| m.kind() == "Secret"),
        "{PLACEHOLDER_SECRET_FILE} should document the key Secret"
    );
}

#[test]
fn each_overlay_sets_the_image_of_the_gateway() {
    for layout in LAYOUTS {
        let k = documents(&format!("overlays/{layout}/kustomization.yaml")).remove(0);
        let images = array(&k.doc["images"], "images");
        let all = kustomize(&format!("overlays/{layout}"));
        let image = string(&gateway_container(&all)["image"], "image");
        let name = image.split(':').next().unwrap_or_default();
        assert!(
            images.iter().any(|i| i["name"] == name),
            "{layout}: kustomization images: does not set {name}"
        );
    }
}

#[test]
fn deployment_selector_matches_its_pod_labels() {
    for_each_layout(deployment_selector_matches_its_pod_labels_in);
}

fn deployment_selector_matches_its_pod_labels_in(all: &[Manifest]) {
    let deployment = only(all, "Deployment");
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
    for_each_layout(every_container_has_a_name_and_an_image_in);
}

fn every_container_has_a_name_and_an_image_in(all: &[Manifest]) {
    let spec = pod_spec(all);
    let mut names = BTreeSet::new();
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            let name = string(&c["name"], &format!("{list}[].name"));
            string(&c["image"], &format!("{list}[{name}].image"));
            assert!(names.insert(name.to_owned()), "container {name} twice");
        }
    }
    assert!(
        !regular_containers(all).is_empty(),
        "a pod needs a regular container"
    );
}

#[test]
fn gateway_config_uses_only_keys_the_gateway_knows() {
    for_each_layout(gateway_config_uses_only_keys_the_gateway_knows_in);
}

fn gateway_config_uses_only_keys_the_gateway_knows_in(all: &[Manifest]) {
    // The gateway's own parser and validator must accept the shipped config as it is.
    let text = configmap_entry(all, GATEWAY_CONFIGMAP, GATEWAY_CONFIG_KEY);
    if let Err(e) = mosaic_gateway::config::parse(text) {
        panic!("the gateway refuses the shipped config:\n{e}");
    }
    let config = gateway_config(all);
    let tls = config.tls.as_ref().expect("the shipped config serves TLS");
    assert!(
        tls.key_file.starts_with('/'),
        "tls.key_file should be absolute in a container"
    );
    let mosaic = config.mosaic.as_ref().expect("mosaic section");
    assert!(!mosaic.backends.is_empty(), "mosaic.backends is empty");
    for backend in &mosaic.backends {
        match (&backend.url, &backend.dns) {
            (Some(url), None) => {
                url_host_port(url);
            }
            (None, Some(dns)) => {
                socket_port(dns, "dns");
            }
            other => panic!("a backend is a url or a dns name: {other:?}"),
        }
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
    let all = layout("sidecar");
    let gateway = gateway_container(&all);
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
    for_each_layout(gateway_is_started_with_the_mounted_config_in);
}

fn gateway_is_started_with_the_mounted_config_in(all: &[Manifest]) {
    let gateway = gateway_container(all);
    let args: Vec<&str> = array(&gateway["args"], "args")
        .iter()
        .map(|a| string(a, "args[]"))
        .collect();
    let ["run", "--config", path] = args.as_slice() else {
        panic!("gateway args should be run --config FILE, found {args:?}");
    };
    let (volume_name, file) = mount_for(gateway, path)
        .unwrap_or_else(|| panic!("nothing is mounted at {path} in the gateway"));
    let source = &volume(all, &volume_name)["configMap"];
    assert_eq!(
        source["name"], GATEWAY_CONFIGMAP,
        "{path} should come from the gateway ConfigMap"
    );
    assert_eq!(source_key(source, &file), GATEWAY_CONFIG_KEY);
}

#[test]
fn probes_point_at_the_admin_listener() {
    for_each_layout(probes_point_at_the_admin_listener_in);
}

fn probes_point_at_the_admin_listener_in(all: &[Manifest]) {
    let config = gateway_config(all);
    let gateway = gateway_container(all);
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
    for_each_layout(websocket_port_matches_the_public_listener_in);
}

fn websocket_port_matches_the_public_listener_in(all: &[Manifest]) {
    let config = gateway_config(all);
    let gateway = gateway_container(all);
    assert_eq!(
        resolve_port(gateway, &Value::from("ws"), "ws port"),
        config.listen_port()
    );
}

#[test]
fn service_targets_ports_the_gateway_declares() {
    for_each_layout(service_targets_ports_the_gateway_declares_in);
}

fn service_targets_ports_the_gateway_declares_in(all: &[Manifest]) {
    let config = gateway_config(all);
    let service = find(all, "Service", APP_NAME);
    let deployment = only(all, "Deployment");
    assert!(
        labels_match(
            &service["spec"]["selector"],
            &deployment["spec"]["template"]["metadata"]["labels"]
        ),
        "the Service selector must select the gateway pods"
    );
    let gateway = gateway_container(all);
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
    for_each_layout(servicemonitor_scrapes_the_services_metrics_port_in);
}

fn servicemonitor_scrapes_the_services_metrics_port_in(all: &[Manifest]) {
    let config = gateway_config(all);
    let monitor = only(all, "ServiceMonitor");
    let service = find(all, "Service", APP_NAME);
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
        let target = resolve_port(gateway_container(all), &port["targetPort"], port_name);
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
    for_each_layout(pod_outlives_prestop_and_drain_in);
}

fn pod_outlives_prestop_and_drain_in(all: &[Manifest]) {
    let drain = gateway_config(all).drain_timeout();
    let grace = Duration::from_secs(number(
        &pod_spec(all)["terminationGracePeriodSeconds"],
        "terminationGracePeriodSeconds",
    ));
    // Regular containers stop first (their preStop runs in parallel), then the
    // sidecar runs its preStop and drains.
    let main_pre_stop = regular_containers(all)
        .iter()
        .filter(|c| c["name"] != GATEWAY_CONTAINER)
        .map(pre_stop_seconds)
        .max()
        .unwrap_or(0);
    let gateway_pre_stop = pre_stop_seconds(gateway_container(all));
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
    for_each_layout(key_is_mounted_where_the_config_expects_it_and_not_world_readable_in);
}

fn key_is_mounted_where_the_config_expects_it_and_not_world_readable_in(all: &[Manifest]) {
    let config = gateway_config(all);
    let key_file = &config.tls.as_ref().expect("tls configured").key_file;
    let (volume_name, file) = mount_for(gateway_container(all), key_file)
        .unwrap_or_else(|| panic!("nothing is mounted at {key_file} in the gateway"));
    let source = &volume(all, &volume_name)["secret"];
    let secret_name = string(&source["secretName"], "secret.secretName");
    let secret = find(all, "Secret", secret_name);
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
        pod_spec(all)["securityContext"]["fsGroup"].is_u64(),
        "without fsGroup the non-root gateway cannot read the key"
    );
}

#[test]
fn gateway_container_is_locked_down() {
    for_each_layout(gateway_container_is_locked_down_in);
}

fn gateway_container_is_locked_down_in(all: &[Manifest]) {
    let pod = &pod_spec(all)["securityContext"];
    let gateway = gateway_container(all);
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
    let all = layout("sidecar");
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
    let drain = gateway_config(&layout("sidecar")).drain_timeout();
    assert!(Duration::from_secs(stop) > drain);
    let dynamic = unit_values(&unit, "DynamicUser").contains(&"yes".to_owned());
    let user = unit_values(&unit, "User");
    assert!(
        dynamic || user.iter().any(|u| u != "root" && u != "0"),
        "the unit must not run as root"
    );
}

#[test]
fn every_hadolint_ignore_in_the_dockerfile_says_why_beside_it() {
    let text = dockerfile();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut pragmas = 0;
    for (i, line) in lines.iter().enumerate() {
        if !line.contains("hadolint ignore") {
            continue;
        }
        pragmas += 1;
        let reason = lines[..i]
            .last()
            .and_then(|l| l.strip_prefix('#'))
            .map(str::trim)
            .unwrap_or_default();
        assert!(
            reason.len() > 20 && !reason.contains("hadolint"),
            "`{line}` needs a comment just above it saying why"
        );
    }
    eprintln!("{pragmas} hadolint ignore pragma(s), each with its reason");
}

#[test]
fn image_runs_as_a_non_root_user() {
    for_each_layout(image_runs_as_a_non_root_user_in);
}

fn image_runs_as_a_non_root_user_in(all: &[Manifest]) {
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
    if let Some(pod_uid) = pod_spec(all)["securityContext"]["runAsUser"].as_u64() {
        assert_eq!(
            uid,
            pod_uid.to_string(),
            "image USER and pod runAsUser differ"
        );
    }
}

#[test]
fn image_exposes_the_ports_and_config_the_manifests_use() {
    for_each_layout(image_exposes_the_ports_and_config_the_manifests_use_in);
}

fn image_exposes_the_ports_and_config_the_manifests_use_in(all: &[Manifest]) {
    let config = gateway_config(all);
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
    // With no arguments the image serves the `dev` stack (it needs no files) on every
    // interface; the manifests run their mounted config explicitly.
    let cmd = json_array(args("CMD").last().expect("CMD"), "CMD");
    assert_eq!(cmd.first().map(String::as_str), Some("dev"), "{cmd:?}");
    for flag in ["--listen", "--tls-listen", "--admin"] {
        let at = cmd.iter().position(|a| a == flag).expect(flag);
        let addr: std::net::SocketAddr = cmd[at + 1].parse().expect("an address");
        assert!(
            addr.ip().is_unspecified(),
            "{flag} {addr}: reachable from outside"
        );
        assert!(
            exposed.contains(&addr.port()),
            "{flag} {addr} is not EXPOSEd"
        );
    }
    let container_args: Vec<String> = array(&gateway_container(all)["args"], "args")
        .iter()
        .map(|a| string(a, "args[]").to_owned())
        .collect();
    assert_eq!(
        container_args[..2],
        ["run", "--config"],
        "{container_args:?}"
    );
    assert!(
        mount_for(gateway_container(all), &container_args[2]).is_some(),
        "the gateway container runs a config it mounts: {container_args:?}"
    );
    assert_eq!(args("STOPSIGNAL"), ["SIGTERM"]);
}

// ---------------------------------------------------------------------------
// The edge layout: a gateway tier in front of Services

#[test]
fn edge_gateway_is_a_regular_container_and_the_only_one() {
    let all = layout("edge");
    let spec = pod_spec(&all);
    assert!(spec["initContainers"].is_null(), "no sidecar at the edge");
    let names: Vec<&str> = regular_containers(&all)
        .iter()
        .map(|c| string(&c["name"], "name"))
        .collect();
    assert_eq!(names, [GATEWAY_CONTAINER]);
}

#[test]
fn edge_backends_are_found_through_a_headless_service_and_the_relay_is_a_service() {
    let all = layout("edge");
    let config = gateway_config(&all);
    let mosaic = config.mosaic.as_ref().expect("mosaic section");
    assert!(
        mosaic.dns_refresh.is_some(),
        "set mosaic.dns_refresh for dns: backends"
    );
    let service_for = |host: &str, port: u16, what: &str| -> &Value {
        let (name, rest) = host.split_once('.').unwrap_or((host, ""));
        assert!(
            rest.is_empty() || rest.ends_with(".svc.cluster.local"),
            "{what}: {host} is not a Service's name"
        );
        let service = find(&all, "Service", name);
        let ports = array(&service["spec"]["ports"], "ports");
        assert!(
            ports.iter().any(|p| p["port"] == port),
            "{what}: Service {name} has no port {port}"
        );
        service
    };
    let dns: Vec<&str> = mosaic
        .backends
        .iter()
        .filter_map(|b| b.dns.as_deref())
        .collect();
    assert!(
        !dns.is_empty(),
        "the edge discovers its Mosaic backends by DNS"
    );
    for entry in dns {
        let (host, port) = entry.rsplit_once(':').expect("dns: name:port");
        let service = service_for(host, port.parse().expect("port"), "mosaic.backends");
        assert_eq!(
            service["spec"]["clusterIP"], "None",
            "{host}: a headless Service resolves to every backend pod"
        );
        let pods = &pod_spec(&all);
        assert!(
            !labels_match(&service["spec"]["selector"], &pods["metadata"]["labels"]),
            "the backend Service must not select the gateway"
        );
    }
    let upstream = config
        .nostr
        .as_ref()
        .and_then(|n| n.upstream.as_deref())
        .expect("nostr.upstream");
    let (host, port) = url_host_port(upstream);
    service_for(&host, port, "nostr.upstream");
}

#[test]
fn edge_survives_disruptions_spreads_and_scales_on_cpu() {
    let all = layout("edge");
    let deployment = only(&all, "Deployment");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let pdb = only(&all, "PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert!(labels_match(
        &pdb["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    let hpa = only(&all, "HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    let target = &hpa["spec"]["scaleTargetRef"];
    assert_eq!(
        (&target["kind"], &target["name"]),
        (&Value::from("Deployment"), &deployment["metadata"]["name"])
    );
    let min = number(&hpa["spec"]["minReplicas"], "minReplicas");
    assert!(min >= 2, "one gateway is no tier");
    assert!(number(&hpa["spec"]["maxReplicas"], "maxReplicas") > min);
    // A PDB that allows no disruption blocks node drains; one that allows all is none.
    match (
        pdb["spec"]["maxUnavailable"].as_u64(),
        pdb["spec"]["minAvailable"].as_u64(),
    ) {
        (Some(n), None) => assert!(n >= 1 && n < min),
        (None, Some(n)) => assert!(n >= 1 && n < min),
        other => panic!("set one of maxUnavailable / minAvailable as a number: {other:?}"),
    }
    assert!(
        deployment["spec"]["replicas"].is_null(),
        "the HorizontalPodAutoscaler owns replicas; a replicas field fights it on every apply"
    );
    let metrics = array(&hpa["spec"]["metrics"], "metrics");
    assert!(metrics.iter().any(|m| m["type"] == "Resource"
        && m["resource"]["name"] == "cpu"
        && m["resource"]["target"]["type"] == "Utilization"));
    let gateway = gateway_container(&all);
    string(
        &gateway["resources"]["requests"]["cpu"],
        "utilization is relative to the CPU request",
    );
    let spread = array(
        &pod_spec(&all)["topologySpreadConstraints"],
        "topologySpreadConstraints",
    );
    let keys: BTreeSet<&str> = spread
        .iter()
        .map(|c| {
            assert!(
                labels_match(&c["labelSelector"]["matchLabels"], pod_labels),
                "a spread constraint must select the gateway pods"
            );
            string(&c["topologyKey"], "topologyKey")
        })
        .collect();
    assert!(
        keys.contains("kubernetes.io/hostname") && keys.contains("topology.kubernetes.io/zone")
    );
}

#[test]
fn edge_public_service_carries_only_the_websocket_port() {
    let all = layout("edge");
    let public = all
        .iter()
        .find(|m| m.kind() == "Service" && m.doc["spec"]["type"] == "LoadBalancer")
        .expect("a LoadBalancer Service")
        .doc
        .clone();
    let ports = array(&public["spec"]["ports"], "ports");
    assert_eq!(ports.len(), 1, "only the WebSocket port is public");
    assert_eq!(ports[0]["targetPort"], "ws");
    assert_eq!(public["spec"]["externalTrafficPolicy"], "Local");
    let pod_labels = &only(&all, "Deployment")["spec"]["template"]["metadata"]["labels"];
    assert!(labels_match(&public["spec"]["selector"], pod_labels));
    let monitor = only(&all, "ServiceMonitor");
    assert!(
        !labels_match(
            &monitor["spec"]["selector"]["matchLabels"],
            &public["metadata"]["labels"]
        ),
        "the ServiceMonitor should select the in-cluster Service only"
    );
}

// ---------------------------------------------------------------------------
// The Prometheus Operator's kinds (no schema in kubernetes-validate)

/// A Prometheus duration as the CRDs' pattern allows (`30s`, `1m30s`, `2h`): numbers
/// with units in the order y w d h m s ms, each at most once, or `0`.
fn prometheus_duration(text: &str) -> bool {
    const ORDER: [&str; 7] = ["y", "w", "d", "h", "m", "s", "ms"];
    if text == "0" {
        return true;
    }
    let (mut rest, mut next) = (text, 0);
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let after = &rest[digits..];
        let unit = if after.starts_with("ms") {
            "ms"
        } else {
            after.get(..1).unwrap_or_default()
        };
        match ORDER.iter().position(|u| *u == unit) {
            Some(pos) if digits > 0 && pos >= next => {
                next = pos + 1;
                rest = &after[unit.len()..];
            }
            _ => return false,
        }
    }
    next > 0
}

fn keys_within(value: &Value, allowed: &[&str], what: &str) {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("{what} must be a mapping"));
    for key in object.keys() {
        assert!(
            allowed.contains(&key.as_str()),
            "{what}.{key} is not a field of the monitoring.coreos.com/v1 schema"
        );
    }
}

#[test]
fn servicemonitor_and_prometheusrule_have_the_crds_shape() {
    let all = kustomize("base");
    let monitor = only(&all, "ServiceMonitor");
    keys_within(
        monitor,
        &["apiVersion", "kind", "metadata", "spec"],
        "ServiceMonitor",
    );
    keys_within(
        &monitor["spec"],
        &[
            "selector",
            "endpoints",
            "namespaceSelector",
            "jobLabel",
            "targetLabels",
            "podTargetLabels",
            "sampleLimit",
        ],
        "ServiceMonitor.spec",
    );
    for e in array(&monitor["spec"]["endpoints"], "endpoints") {
        keys_within(
            e,
            &[
                "port",
                "targetPort",
                "path",
                "scheme",
                "interval",
                "scrapeTimeout",
                "honorLabels",
                "relabelings",
                "metricRelabelings",
            ],
            "ServiceMonitor.spec.endpoints[]",
        );
        for d in ["interval", "scrapeTimeout"] {
            if let Some(text) = e[d].as_str() {
                assert!(prometheus_duration(text), "{d}: {text:?} is not a duration");
            }
        }
    }
    let rule = only(&all, "PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    keys_within(
        rule,
        &["apiVersion", "kind", "metadata", "spec"],
        "PrometheusRule",
    );
    keys_within(&rule["spec"], &["groups"], "PrometheusRule.spec");
    for g in array(&rule["spec"]["groups"], "groups") {
        keys_within(
            g,
            &[
                "name",
                "interval",
                "rules",
                "limit",
                "partial_response_strategy",
                "query_offset",
                "labels",
            ],
            "groups[]",
        );
        string(&g["name"], "groups[].name");
        for r in array(&g["rules"], "rules") {
            keys_within(
                r,
                &[
                    "alert",
                    "record",
                    "expr",
                    "for",
                    "keep_firing_for",
                    "labels",
                    "annotations",
                ],
                "rules[]",
            );
            string(&r["expr"], "rules[].expr");
            assert!(
                r["alert"].is_string() != r["record"].is_string(),
                "alert or record"
            );
            if let Some(f) = r["for"].as_str() {
                assert!(prometheus_duration(f), "for: {f:?}");
            }
            for map in ["labels", "annotations"] {
                for (k, v) in r[map].as_object().into_iter().flatten() {
                    assert!(v.is_string(), "{map}.{k} must be a string");
                }
            }
        }
    }
}

#[test]
fn prometheusrule_carries_exactly_the_rules_of_alerts_yaml() {
    let rule = only(&kustomize("base"), "PrometheusRule").clone();
    let file = read(&deploy_dir().join("prometheus/alerts.yaml"));
    let plain: Value = serde_saphyr::from_str(&file).expect("alerts.yaml");
    assert_eq!(rule["spec"]["groups"], plain["groups"]);
}

#[test]
fn durations_follow_the_prometheus_pattern() {
    for ok in ["15s", "1m30s", "2h", "10ms", "0"] {
        assert!(prometheus_duration(ok), "{ok}");
    }
    for bad in ["", "15", "s", "1.5m", "15 s", "m1"] {
        assert!(!prometheus_duration(bad), "{bad}");
    }
}

/// The files the tests read must be what kustomize itself renders (when kubectl is here;
/// `.ci/run` installs it and renders both layouts itself too).
#[test]
fn kubectl_kustomize_renders_the_resources_these_tests_read() {
    let probe = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output();
    if probe.map(|o| !o.status.success()).unwrap_or(true) {
        assert!(
            std::env::var_os("CI").is_none(),
            "kubectl is missing in CI (.ci/run installs it)"
        );
        eprintln!("skipped: kubectl not installed");
        return;
    }
    for name in LAYOUTS {
        let out = std::process::Command::new("kubectl")
            .arg("kustomize")
            .arg(kubernetes_dir().join("overlays").join(name))
            .output()
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "kubectl kustomize overlays/{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let docs: Vec<Value> = serde_saphyr::from_multiple(&String::from_utf8_lossy(&out.stdout))
            .expect("kustomize output is YAML");
        let rendered: BTreeSet<(String, String)> = docs
            .iter()
            .map(|d| {
                (
                    d["kind"].as_str().unwrap_or_default().to_owned(),
                    d["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect();
        let read: BTreeSet<(String, String)> = kustomize(&format!("overlays/{name}"))
            .iter()
            .map(|m| (m.kind().to_owned(), m.name().to_owned()))
            .collect();
        assert_eq!(rendered, read, "overlays/{name}");
        for d in &docs {
            if d["kind"] == "Deployment" {
                let spec = &d["spec"]["template"]["spec"];
                let images: Vec<&Value> = ["initContainers", "containers"]
                    .iter()
                    .flat_map(|l| spec[*l].as_array().into_iter().flatten())
                    .filter(|c| c["name"] == GATEWAY_CONTAINER)
                    .map(|c| &c["image"])
                    .collect();
                assert_eq!(images, [&Value::from("mosaic-gateway:0.1.0")], "{name}");
            }
        }
    }
}
