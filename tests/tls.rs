//! The public listener terminates TLS with rustls and offers h2 and http/1.1 through ALPN.

mod common;

use bytes::Bytes;
use connector_gateway::launch;
use connector_gateway::simulator::{Faults, Simulator};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

fn tls_client(
    cert_der: &[u8],
    http2: bool,
) -> Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Full<Bytes>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from(cert_der.to_vec())).unwrap();
    let tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls).https_only();
    let connector = if http2 { builder.enable_http2().build() } else { builder.enable_http1().build() };
    let mut client = Client::builder(TokioExecutor::new());
    if http2 {
        client.http2_only(true);
    }
    client.build(connector)
}

#[tokio::test]
async fn the_listener_speaks_tls_with_h2_and_http1() {
    connector_gateway::install_crypto_provider();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), certified.signing_key.serialize_pem()).unwrap();

    let simulator = Simulator::start("127.0.0.1:0".parse().unwrap(), Faults::default()).await.unwrap();
    let text = common::config_text(&simulator, simulator.base_url(), "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"");
    let config = connector_gateway::Config::from_toml(&text, dir.path()).unwrap();
    let gateway = launch::start(config).await.unwrap();
    let url = format!(
        "https://localhost:{}/v1.0/onPremisesPublishingProfiles/applicationProxy/connectors",
        gateway.addr.port()
    );
    let token = format!(
        "Bearer {}",
        simulator.mint(
            connector_gateway::simulator::entra::DEV_AUDIENCE,
            &connector_gateway::simulator::entra::Grant::Application { roles: vec![] }
        )
    );

    for (http2, version) in [(true, Version::HTTP_2), (false, Version::HTTP_11)] {
        let client = tls_client(certified.cert.der(), http2);
        let request = Request::get(&url).header("authorization", &token).body(Full::new(Bytes::new())).unwrap();
        let response = client.request(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.version(), version);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("connector-01.contoso.local"));
    }
    gateway.shutdown().await;
}
