//! The binary's command line: check-config, serve (ready line, SIGTERM drain, exit 0), demo --once.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn write_config(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    path
}

const VALID: &str = r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[upstream]
url = "http://127.0.0.1:9"
[auth]
jwks_file = "keys.json"
audiences = ["api://connector-gateway"]
"#;

#[test]
fn check_config_accepts_the_shipped_configs() {
    for file in ["config/gateway.toml", "config/local.toml"] {
        let out = Command::new(common::binary())
            .args(["check-config", "--config", file])
            .env("CONNECTOR_GATEWAY_CLIENT_SECRET", "from-the-environment")
            .output()
            .unwrap();
        assert!(out.status.success(), "{file}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn a_bad_config_fails_with_the_keys_name() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            format!("{VALID}\n[rate_limit]\nper_principal = {{ rate = \"10/fortnight\", burst = 1 }}\n"),
            "rate_limit.per_principal.rate",
        ),
        (VALID.replace("[admin]", "[admin]\nlisten_on = \"x\""), "admin.listen_on"),
        (VALID.replace("jwks_file = \"keys.json\"\n", ""), "auth: exactly one of"),
        (VALID.replace("[server]", "[server]\ntls_cert = \"nope.pem\"\ntls_key = \"nope-key.pem\""), "server.tls_cert"),
        (
            VALID.replace("request_timeout", "x").replace("[server]", "[server]\nrequest_timeout = \"fast\""),
            "server.request_timeout",
        ),
    ];
    for (text, key) in cases {
        let path = write_config(dir.path(), &text);
        for command in ["check-config", "serve"] {
            let out = Command::new(common::binary()).args([command, "--config"]).arg(&path).output().unwrap();
            assert_eq!(out.status.code(), Some(1), "{command} with {key}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(key), "{command}: expected {key} in {stderr}");
        }
    }
}

#[test]
fn serve_logs_ready_and_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), VALID);
    let child = Command::new(common::binary())
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let lines = BufReader::new(child.0.stderr.take().unwrap()).lines();
    // Earlier lines may warn (here: the JWKS file does not exist); the ready line follows.
    let ready = lines.map_while(Result::ok).take(20).find(|l| l.contains("\"ready: ")).expect("a ready line");
    let line: serde_json::Value = serde_json::from_str(&ready).expect("JSON logs when stderr is not a TTY");
    assert_eq!(line["level"], "INFO");
    let status = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the child if the test fails before it exits.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn demo_once_runs_the_tour_and_exits_zero() {
    let out = Command::new(common::binary()).args(["demo", "--once"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("steps behaved as expected"), "{stdout}");
    assert!(!stdout.contains("UNEXPECTED"), "{stdout}");
}

#[test]
fn unknown_commands_print_usage_and_fail() {
    let out = Command::new(common::binary()).arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
}

#[test]
fn check_config_reads_the_client_secret_from_the_environment_and_never_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let text = VALID.replace("[upstream]\n", "[upstream]\ncredential = \"client_credentials\"\n")
        + "[upstream.entra]\ntenant_id = \"contoso.onmicrosoft.com\"\nclient_id = \"c0ffee00-0000-4000-8000-000000000001\"\nclient_secret_env = \"CG_TEST_CLIENT_SECRET\"\n";
    let path = write_config(dir.path(), &text);
    let check = |secret: Option<&str>| {
        let mut command = Command::new(common::binary());
        command.args(["check-config", "--config"]).arg(&path).env_remove("CG_TEST_CLIENT_SECRET");
        if let Some(secret) = secret {
            command.env("CG_TEST_CLIENT_SECRET", secret);
        }
        command.output().unwrap()
    };
    let missing = check(None);
    assert_eq!(missing.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("upstream.entra.client_secret_env") && stderr.contains("CG_TEST_CLIENT_SECRET"),
        "{stderr}"
    );
    let present = check(Some("very-secret-value-42"));
    assert!(present.status.success(), "{}", String::from_utf8_lossy(&present.stderr));
    let all = format!("{}{}", String::from_utf8_lossy(&present.stdout), String::from_utf8_lossy(&present.stderr));
    assert!(!all.contains("very-secret-value-42"), "{all}");
}
