use super::*;

const MINIMAL: &str = r#"
[upstream]
url = "http://127.0.0.1:9"
[auth]
jwks_file = "keys.json"
audiences = ["api://connector-gateway"]
"#;

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("/etc/gateway"))
}

fn key_of(text: &str) -> String {
    load(text).unwrap_err().key
}

#[test]
fn a_minimal_file_gets_the_documented_defaults() {
    let config = load(MINIMAL).unwrap();
    assert_eq!(config.server.listen, "127.0.0.1:8443".parse().unwrap());
    assert_eq!(config.server.max_body_bytes, 65536);
    assert_eq!(config.server.request_timeout, Duration::from_secs(30));
    assert_eq!(config.auth.key_source, KeySource::JwksFile("/etc/gateway/keys.json".into()));
    assert_eq!(config.auth.algorithms, vec![jsonwebtoken::Algorithm::RS256]);
    assert_eq!(config.auth.unknown_kid_cooldown, Duration::from_secs(300));
    assert_eq!(config.policy.other_requests, OtherRequests::Forward);
    assert_eq!(config.rate_limit.per_principal.burst.get(), 10);
    assert_eq!(config.rate_limit.redis_timeout, Duration::from_millis(50));
    assert_eq!(config.audit.fsync, FsyncMode::Batch);
    assert_eq!(config.audit.path, PathBuf::from("/etc/gateway/audit/connector-changes.jsonl"));
}

#[test]
fn the_shipped_configs_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let env = |name: &str| (name == "CONNECTOR_GATEWAY_CLIENT_SECRET").then(|| "from-the-environment".to_owned());
    let text = std::fs::read_to_string(dir.join("gateway.toml")).unwrap();
    let production = Config::from_toml_with_env(&text, &dir, &env).unwrap();
    assert_eq!(production.upstream.credential.mode(), "client_credentials");
    assert_eq!(production.upstream.url, "https://graph.microsoft.com");
    assert!(matches!(production.auth.key_source, KeySource::OpenIdConfiguration(_)));
    let local = Config::from_toml(&std::fs::read_to_string(dir.join("local.toml")).unwrap(), &dir).unwrap();
    assert_eq!(local.upstream.url.scheme_str(), Some("http"));
}

#[test]
fn an_unknown_key_names_its_table_and_key() {
    let err = load(&format!("{MINIMAL}\n[server]\nlisten_addr = \"127.0.0.1:1\"\n")).unwrap_err();
    assert_eq!(err.key, "server.listen_addr");
    assert!(err.message.contains("unknown field"), "{err}");
}

#[test]
fn bad_values_name_their_key() {
    let cases = [
        ("[server]\nlisten = \"nowhere\"\n", "server.listen"),
        ("[server]\nrequest_timeout = \"soon\"\n", "server.request_timeout"),
        ("[server]\nmax_body_bytes = 0\n", "server.max_body_bytes"),
        ("[server]\ntls_cert = \"c.pem\"\n", "server.tls_key"),
        ("[server]\ntls_cert = \"/nonexistent/c.pem\"\ntls_key = \"/nonexistent/k.pem\"\n", "server.tls_cert"),
        ("[rate_limit]\nper_principal = { rate = \"5/day\", burst = 1 }\n", "rate_limit.per_principal.rate"),
        ("[rate_limit]\nper_connector = { rate = \"5/s\", burst = 0 }\n", "rate_limit.per_connector.burst"),
        ("[rate_limit]\nbackend = \"memcached\"\n", "rate_limit.backend"),
        ("[rate_limit]\nredis_timeout = \"0ms\"\n", "rate_limit.redis_timeout"),
        ("[audit]\nfsync = \"sometimes\"\n", "audit.fsync"),
        ("[policy]\nwritable_properties = [\"version\"]\n", "policy.writable_properties"),
        ("[policy]\nother_requests = \"maybe\"\n", "policy.other_requests"),
    ];
    for (extra, key) in cases {
        assert_eq!(key_of(&format!("{MINIMAL}\n{extra}")), key, "for {extra}");
    }
}

#[test]
fn auth_needs_exactly_one_key_source_and_no_symmetric_algorithms() {
    let base = "[upstream]\nurl = \"http://127.0.0.1:9\"\n[auth]\naudiences = [\"a\"]\n";
    assert!(load(base).unwrap_err().message.contains("none is set"));
    let two = format!("{base}jwks_file = \"k.json\"\njwks_url = \"https://example.test/keys\"\n");
    assert!(load(&two).unwrap_err().message.contains("several are set"));
    assert_eq!(key_of(&format!("{base}jwks_file = \"k\"\nalgorithms = [\"HS256\"]\n")), "auth.algorithms");
    assert_eq!(key_of(&format!("{base}jwks_file = \"k\"\nalgorithms = [\"none\"]\n")), "auth.algorithms");
    assert_eq!(key_of(&format!("{base}jwks_url = \"keys.json\"\n")), "auth.jwks_url");
}

#[test]
fn the_upstream_must_be_an_origin() {
    let with_url = |url: &str| format!("[upstream]\nurl = \"{url}\"\n[auth]\njwks_file = \"k\"\naudiences = [\"a\"]\n");
    assert_eq!(key_of(&with_url("ftp://graph")), "upstream.url");
    assert_eq!(key_of(&with_url("https://graph.microsoft.com/v1.0")), "upstream.url");
    assert!(load(&with_url("https://graph.microsoft.com")).is_ok());
    assert_eq!(key_of(&format!("{}\n[upstream]\n", with_url("http://x"))), "upstream");
}

fn with_credential(mode: &str, entra: &str) -> String {
    MINIMAL.replace("[upstream]\n", &format!("[upstream]\ncredential = \"{mode}\"\n"))
        + &format!("[upstream.entra]\n{entra}")
}

const APP: &str = "tenant_id = \"contoso.onmicrosoft.com\"\nclient_id = \"c0ffee00-0000-4000-8000-000000000001\"\n";

fn load_env(text: &str) -> Result<Config, ConfigError> {
    let env = |name: &str| (name == "GATEWAY_SECRET").then(|| "s3cr3t-value".to_owned());
    Config::from_toml_with_env(text, Path::new("/etc/gateway"), &env)
}

#[test]
fn client_credentials_with_a_secret_from_the_environment() {
    let config =
        load_env(&with_credential("client_credentials", &format!("{APP}client_secret_env = \"GATEWAY_SECRET\"\n")))
            .unwrap();
    let UpstreamCredential::ClientCredentials(app) = &config.upstream.credential else { panic!("mode") };
    assert_eq!(app.token_url, "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token");
    assert_eq!(app.scope, "https://graph.microsoft.com/.default");
    assert!(matches!(&app.client_auth, ClientAuth::Secret(s) if s == "s3cr3t-value"));
    // The secret is never printed, not even in a debug dump of the whole configuration.
    assert!(!format!("{config:?}").contains("s3cr3t-value"));
}

#[test]
fn a_certificate_credential_gets_its_sha256_thumbprint() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let text = with_credential(
        "on_behalf_of",
        &format!(
            "{APP}certificate_file = \"dev/simulator-client.crt\"\nprivate_key_file = \"dev/simulator-client.key\"\n"
        ),
    );
    let config = Config::from_toml_with_env(&text, &dir, &|_| None).unwrap();
    let Some(app) = config.upstream.credential.app() else { panic!("an app") };
    let ClientAuth::Certificate { thumbprint_s256, .. } = &app.client_auth else { panic!("a certificate") };
    let pem = std::fs::read(dir.join("dev/simulator-client.crt")).unwrap();
    let der = CertificateDer::from_pem_slice(&pem).unwrap();
    assert_eq!(thumbprint_s256, &thumbprint_s256_of(der.as_ref()));
    assert_eq!(thumbprint_s256.len(), 43, "base64url of 32 bytes, unpadded");
}

fn thumbprint_s256_of(der: &[u8]) -> String {
    super::thumbprint_s256(der)
}

#[test]
fn bad_credential_settings_name_their_key() {
    let secret = "client_secret_env = \"GATEWAY_SECRET\"\n";
    let cases = [
        (
            with_credential("client_credentials", &format!("{APP}client_secret_env = \"UNSET_VARIABLE\"\n")),
            "upstream.entra.client_secret_env",
        ),
        (with_credential("client_credentials", APP), "upstream.entra"),
        (
            with_credential(
                "client_credentials",
                &format!("{APP}{secret}certificate_file = \"c.pem\"\nprivate_key_file = \"k.pem\"\n"),
            ),
            "upstream.entra",
        ),
        (
            with_credential("client_credentials", &format!("{APP}certificate_file = \"c.pem\"\n")),
            "upstream.entra.private_key_file",
        ),
        (
            with_credential(
                "client_credentials",
                &format!("{APP}certificate_file = \"missing.pem\"\nprivate_key_file = \"k.pem\"\n"),
            ),
            "upstream.entra.certificate_file",
        ),
        (
            with_credential(
                "client_credentials",
                &format!("{}{secret}", APP.replace("contoso.onmicrosoft.com", "common")),
            ),
            "upstream.entra.tenant_id",
        ),
        (
            with_credential(
                "client_credentials",
                &format!("{}{secret}", APP.replace("c0ffee00-0000-4000-8000-000000000001", "gateway")),
            ),
            "upstream.entra.client_id",
        ),
        (
            with_credential(
                "client_credentials",
                &format!("{APP}{secret}scope = \"https://graph.microsoft.com/User.Read\"\n"),
            ),
            "upstream.entra.scope",
        ),
        (
            with_credential(
                "client_credentials",
                &format!("{APP}{secret}authority = \"https://login.example/tenant\"\n"),
            ),
            "upstream.entra.authority",
        ),
        (
            with_credential("client_credentials", &format!("{APP}{secret}client_secret = \"inline\"\n")),
            "upstream.entra.client_secret",
        ),
        (with_credential("passthrough", &format!("{APP}{secret}")), "upstream.entra"),
        (MINIMAL.replace("[upstream]\n", "[upstream]\ncredential = \"client_credentials\"\n"), "upstream.entra"),
        (MINIMAL.replace("[upstream]\n", "[upstream]\ncredential = \"managed_identity\"\n"), "upstream.credential"),
    ];
    for (text, key) in cases {
        let error = load_env(&text).expect_err(key);
        assert_eq!(error.key, key, "{error}");
        assert!(!error.to_string().contains("s3cr3t-value"));
    }
}

#[test]
fn an_ec_key_is_refused_for_client_assertions() {
    let dir = std::env::temp_dir().join(format!("cg-ec-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["ec.test".into()]).unwrap().self_signed(&key).unwrap();
    std::fs::write(dir.join("c.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("k.pem"), key.serialize_pem()).unwrap();
    let text = with_credential(
        "client_credentials",
        &format!("{APP}certificate_file = \"c.pem\"\nprivate_key_file = \"k.pem\"\n"),
    );
    let error = Config::from_toml_with_env(&text, &dir, &|_| None).unwrap_err();
    assert_eq!(error.key, "upstream.entra.private_key_file");
    assert!(error.message.contains("RSA"), "{error}");
}
