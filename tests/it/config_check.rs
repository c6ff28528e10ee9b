//! An operator validating config files with `mosaic-gateway check-config`: every mistake
//! gives exit 1 and a line that names the key.

use std::process::Command;

fn check(yaml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mosaic-gateway"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = "mosaic:\n  backends:\n    - url: ws://127.0.0.1:8081\n";

#[test]
fn the_shipped_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/proxy.yaml.example");
    let text = std::fs::read_to_string(path).unwrap();
    // The example points at a key file operators create; check it without the key part.
    let without_tls: String = {
        let mut out = Vec::new();
        let mut skipping = false;
        for line in text.lines() {
            if line.starts_with("tls:") {
                skipping = true;
                continue;
            }
            if skipping && (line.starts_with(' ') || line.starts_with('#') || line.is_empty()) {
                continue;
            }
            skipping = false;
            out.push(line);
        }
        out.join("\n")
    };
    let (code, stdout, stderr) = check(&without_tls);
    assert_eq!(code, 0, "{stdout}{stderr}");
    // And the full example parses with its TLS section (the key file is checked separately).
    mosaic_gateway::config::parse(&text).unwrap();
}

#[test]
fn a_minimal_config_is_valid() {
    let (code, stdout, stderr) = check(GOOD);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("ok"));
}

#[test]
fn each_mistake_names_its_key() {
    let cases: &[(&str, &str)] = &[
        (
            "listen: \"nowhere\"\nmosaic:\n  backends:\n    - url: ws://a:1\n",
            "listen:",
        ),
        (
            "mosaic:\n  backends:\n    - url: http://a:1\n",
            "mosaic.backends[0].url:",
        ),
        ("mosaic:\n  backends: []\n", "mosaic.backends:"),
        ("mosaic:\n  backends:\n    - {}\n", "mosaic.backends[0]:"),
        (
            "mosaic:\n  backends:\n    - url: ws://a:1\n      weight: 0\n",
            "mosaic.backends[0].weight:",
        ),
        (
            "mosaic:\n  backends:\n    - url: ws://a:1\n      pin: mosrv0nope\n",
            "mosaic.backends[0].pin:",
        ),
        (
            "mosaic:\n  backends:\n    - dns: nameonly\n",
            "mosaic.backends[0].dns:",
        ),
        (
            "mosaic:\n  subprotocols: [\"bad token\"]\n  backends:\n    - url: ws://a:1\n",
            "mosaic.subprotocols[0]:",
        ),
        (
            "mosaic:\n  features: [\"a;b\"]\n  backends:\n    - url: ws://a:1\n",
            "mosaic.features[0]:",
        ),
        (
            "mosaic:\n  features: [\"a,b\"]\n  backends:\n    - url: ws://a:1\n",
            "mosaic.features[0]:",
        ),
        (
            "mosaic:\n  subprotocols: [mosaic2026]\n  backends:\n    - url: ws://a:1\n",
            "mosaic.subprotocols[0]: `mosaic2026` is not a Mosaic version token",
        ),
        (
            "mosaic:\n  validate: { mosaic2026: direction }\n  backends:\n    - url: ws://a:1\n",
            "mosaic.validate.mosaic2026: not a Mosaic version token",
        ),
        (
            "mosaic:\n  validate: { mosaic2025: \"0.9\" }\n  backends:\n    - url: ws://a:1\n",
            "mosaic.validate.mosaic2025: `0.9` is not a level of mosaic2025",
        ),
        (
            "mosaic:\n  validate: { mosaic2024: \"0.8\" }\n  backends:\n    - url: ws://a:1\n",
            "mosaic.validate.mosaic2024: `0.8` is not a level of mosaic2024",
        ),
        (
            "mosaic:\n  validate: loose\n  backends:\n    - url: ws://a:1\n",
            "mosaic.validate: `loose` is not a level",
        ),
        (
            "mosaic:\n  server_authentication: gateway\n  backends:\n    - url: ws://a:1\n",
            "mosaic.server_key_file:",
        ),
        (
            "mosaic:\n  max_message_bytes: 3\n  backends:\n    - url: ws://a:1\n",
            "mosaic.max_message_bytes:",
        ),
        (
            "mosaic:\n  health_check: { interval: 0s }\n  backends:\n    - url: ws://a:1\n",
            "mosaic.health_check.interval:",
        ),
        (
            &format!("{GOOD}limits:\n  handshake_timeout: 10\n"),
            "handshake_timeout",
        ),
        (
            &format!("{GOOD}limits:\n  max_connections: 0\n"),
            "limits.max_connections:",
        ),
        (
            &format!("{GOOD}limits:\n  write_timeout: 0s\n"),
            "limits.write_timeout:",
        ),
        (
            &format!("{GOOD}limits:\n  write_timeout: 25h\n"),
            "limits.write_timeout:",
        ),
        (
            &format!("{GOOD}forwarded:\n  trusted_proxies: [\"10.0.0.0/33\"]\n"),
            "forwarded.trusted_proxies[0]:",
        ),
        (
            &format!("{GOOD}nostr:\n  upstream: relay:7777\n"),
            "nostr.upstream:",
        ),
        (
            &format!("{GOOD}log:\n  level: \"nonsense=[\"\n"),
            "log.level:",
        ),
        (
            &format!("{GOOD}tls:\n  key_file: k.pem\n  certificate: raw-public-key\n"),
            "tls.min_version:",
        ),
    ];
    for (yaml, key) in cases {
        let (code, _, stderr) = check(yaml);
        assert_eq!(code, 1, "expected failure for:\n{yaml}");
        assert!(
            stderr.contains(key),
            "error should name `{key}`:\n{stderr}\nfor:\n{yaml}"
        );
    }
}

#[test]
fn unknown_keys_and_wrong_types_are_refused_with_their_key() {
    for (yaml, key) in [
        (
            format!("{GOOD}limits:\n  max_conections: 5\n"),
            "max_conections",
        ),
        (
            format!("{GOOD}shutdown:\n  drain_timeout: [1]\n"),
            "drain_timeout",
        ),
        (format!("{GOOD}mosaic2:\n  x: 1\n"), "mosaic2"),
        (format!("{GOOD}log:\n  format: xml\n"), "format"),
    ] {
        let (code, _, stderr) = check(&yaml);
        assert_eq!(code, 1, "{yaml}");
        assert!(stderr.contains(key), "error should name `{key}`:\n{stderr}");
    }
}

#[test]
fn several_problems_are_all_listed() {
    let (code, _, stderr) = check("listen: x\nadmin:\n  listen: y\nmosaic:\n  backends: []\n");
    assert_eq!(code, 1);
    assert!(
        stderr.contains("listen:")
            && stderr.contains("admin.listen:")
            && stderr.contains("mosaic.backends:"),
        "{stderr}"
    );
}

#[test]
fn a_missing_group_or_world_readable_key_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.pem");
    let yaml = format!("{GOOD}tls:\n  key_file: {}\n", key.display());
    let (code, _, stderr) = check(&yaml);
    assert_eq!(code, 1);
    assert!(stderr.contains("tls.key_file"), "{stderr}");
    let out = Command::new(env!("CARGO_BIN_EXE_mosaic-gateway"))
        .args(["keygen", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("mosrv0"));
    let (code, _, stderr) = check(&yaml);
    assert_eq!(code, 0, "{stderr}");
    use std::os::unix::fs::PermissionsExt;
    for mode in [0o644, 0o640, 0o660, 0o604] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let (code, _, stderr) = check(&yaml);
        assert_eq!(code, 1, "mode {mode:o} passed");
        assert!(
            stderr.contains("tls.key_file:") && stderr.contains("chmod 600"),
            "{stderr}"
        );
    }
}
