//! A real Graph SDK (the npm package `@microsoft/microsoft-graph-client`, driven by
//! `tests/graph_sdk/retry.mjs`) recovers from a gateway 429 by honouring `Retry-After`. The JS SDK
//! sends its Authorization header only over https, so the gateway listens with TLS here.

mod common;

use std::path::Path;
use std::process::Command;

use connector_gateway::simulator::entra::{DEV_AUDIENCE, DEV_ROLE, Grant};
use connector_gateway::simulator::{Faults, Simulator};

fn sdk_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/graph_sdk"))
}

/// Installs the SDK from the npm registry when it is not there yet.
fn install_sdk() {
    if sdk_dir().join("node_modules/@microsoft/microsoft-graph-client").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--no-package-lock", "--loglevel=error"])
        .current_dir(sdk_dir())
        .status()
        .expect("npm is installed (Node.js ships with the machine image)");
    assert!(status.success(), "npm install of the Graph SDK failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_js_sdk_honours_retry_after_from_the_gateway() {
    install_sdk();
    connector_gateway::install_crypto_provider();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = common::scratch_dir();
    std::fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    let simulator = Simulator::start("127.0.0.1:0".parse().unwrap(), Faults::default()).await.unwrap();
    let extra = "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n#rest\n[rate_limit]\nper_principal = { rate = \"100/s\", burst = 100 }\nper_connector = { rate = \"60/min\", burst = 1 }\n";
    let config =
        connector_gateway::Config::from_toml(&common::config_text(&simulator, simulator.base_url(), extra), &dir)
            .unwrap();
    let gateway = connector_gateway::launch::start(config.clone()).await.unwrap();
    let token = simulator.mint(DEV_AUDIENCE, &Grant::Application { roles: vec![DEV_ROLE.into()] });
    let path = format!("/onPremisesPublishingProfiles/applicationProxy/connectors/{}", common::CONNECTOR);
    let base = format!("https://localhost:{}/", gateway.addr.port());

    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg("retry.mjs")
            .args([&base, &token, &path])
            .current_dir(sdk_dir())
            .env("NODE_EXTRA_CA_CERTS", dir.join("cert.pem"))
            .output()
            .expect("node runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout.matches("patched").count(), 2, "{stdout}");
    // The second PATCH was throttled once, then retried by the SDK after Retry-After.
    assert_eq!(
        gateway.metrics.requests(
            connector_gateway::route::RouteClass::ConnectorWrite,
            connector_gateway::error::Decision::Denied,
            429
        ),
        1
    );
    assert_eq!(simulator.received().len(), 2);
    let denied = common::audit_lines(&config).into_iter().filter(|r| r["phase"] == "denied").count();
    assert_eq!(denied, 1);
    assert_eq!(simulator.connector(common::CONNECTOR).unwrap().status, "active");
}
