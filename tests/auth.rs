//! Authentication and scope policy against an attack corpus, over real HTTP, plus key rotation
//! against a local JWKS server.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{HttpClient, Reply, connector_path};
use connector_gateway::launch::{self, RunningGateway};
use connector_gateway::simulator::entra::{DEV_AUDIENCE, DEV_ROLE, DEV_TENANT, DevKey};
use connector_gateway::simulator::{Faults, Simulator};
use http::{Method, StatusCode};
use serde_json::{Value, json};

const WRITE: &str = "OnPremisesPublishingProfiles.ReadWrite.All";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

struct AuthHarness {
    simulator: Simulator,
    gateway: RunningGateway,
    client: HttpClient,
}

impl AuthHarness {
    async fn start(auth_extra: &str) -> Self {
        connector_gateway::install_crypto_provider();
        let simulator = Simulator::start("127.0.0.1:0".parse().unwrap(), Faults::default()).await.unwrap();
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
[upstream]
url = "{base}"
[auth]
jwks_url = "{jwks}"
audiences = ["{DEV_AUDIENCE}", "c0ffee00-0000-4000-8000-000000000001"]
leeway = "60s"
{auth_extra}
[rate_limit]
per_principal = {{ rate = "1000/s", burst = 1000 }}
per_connector = {{ rate = "1000/s", burst = 1000 }}
"#,
            base = simulator.base_url(),
            jwks = simulator.jwks_url(),
        );
        let text = if auth_extra.contains("issuers") {
            text
        } else {
            text.replace("leeway", &format!("issuers = [\"{}/{{tenantid}}/v2.0\"]\nleeway", simulator.base_url()))
        };
        let config = connector_gateway::Config::from_toml(&text, &common::scratch_dir()).unwrap();
        let gateway = launch::start(config).await.unwrap();
        Self { simulator, gateway, client: HttpClient::default() }
    }

    fn issuer(&self) -> String {
        self.simulator.issuer()
    }

    /// Claims of a valid application token with the write role.
    fn claims(&self) -> Value {
        json!({
            "aud": DEV_AUDIENCE, "iss": self.issuer(), "tid": DEV_TENANT,
            "iat": now(), "nbf": now() - 10, "exp": now() + 3600,
            "oid": "0a1b2c3d-0000-4000-8000-0000000000a1", "azp": "c0ffee00-0000-4000-8000-000000000001",
            "roles": [WRITE], "ver": "2.0",
        })
    }

    fn sign(&self, claims: &Value) -> String {
        self.simulator.key().sign(&json!({}), claims)
    }

    fn with(&self, changes: Value) -> String {
        let mut claims = self.claims();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        self.sign(&claims)
    }

    async fn patch_with(&self, authorization: Option<&str>) -> Reply {
        let mut headers = vec![("content-type", "application/json")];
        if let Some(value) = authorization {
            headers.push(("authorization", value));
        }
        let url = format!("http://{}{}", self.gateway.addr, connector_path());
        self.client.send(Method::PATCH, &url, &headers, r#"{"status":"inactive"}"#).await
    }

    async fn patch(&self, token: &str) -> Reply {
        self.patch_with(Some(&format!("Bearer {token}"))).await
    }
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

fn hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64(header), b64(claims));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

fn expect(reply: &Reply, status: StatusCode, case: &str) {
    assert_eq!(reply.status, status, "{case}: {}", String::from_utf8_lossy(&reply.body));
}

#[tokio::test]
async fn the_attack_corpus_is_refused_and_nothing_reaches_graph() {
    let h = AuthHarness::start("").await;
    let attacker = DevKey::generate("sim-key-1").unwrap(); // same kid, different key
    let stranger = DevKey::generate("attacker-kid").unwrap();
    let claims = h.claims();
    let public_n = URL_SAFE_NO_PAD.decode(h.simulator.key().jwk()["n"].as_str().unwrap()).unwrap();
    let valid = h.sign(&claims);
    let mut tampered_parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
    let mut elevated = claims.clone();
    elevated["tid"] = json!("11111111-1111-4111-8111-111111111111");
    tampered_parts[1] = b64(&elevated);
    let tampered = tampered_parts.join(".");
    let jku = h.simulator.key().sign(&json!({"jku": "https://attacker.example/keys", "kid": "attacker-kid"}), &claims);
    let jku_signed_by_attacker = stranger.sign(&json!({"jku": "https://attacker.example/keys"}), &claims);
    let x5u = stranger.sign(&json!({"x5u": "https://attacker.example/cert.pem"}), &claims);
    let embedded_jwk = stranger.sign(&json!({"jwk": stranger.jwk()}), &claims);
    let alg_none = format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT", "kid": "sim-key-1"})), b64(&claims));
    let alg_none_upper = format!("{}.{}.", b64(&json!({"alg": "None", "kid": "sim-key-1"})), b64(&claims));
    let hmac_with_public_key = hs256(&public_n, &json!({"alg": "HS256", "typ": "JWT", "kid": "sim-key-1"}), &claims);
    let rs384_header = {
        let t = h.sign(&claims);
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        parts[0] = b64(&json!({"alg": "RS384", "typ": "JWT", "kid": "sim-key-1"}));
        parts.join(".")
    };
    let no_kid = {
        let mut parts: Vec<String> = valid.split('.').map(str::to_owned).collect();
        parts[0] = b64(&json!({"alg": "RS256", "typ": "JWT"}));
        parts.join(".")
    };
    let oversized = h.with(json!({"padding": "x".repeat(17 * 1024)}));
    let nonce_token = h.simulator.key().sign(&json!({"nonce": "abc"}), &claims);

    let unauthorized: Vec<(&str, Option<String>)> = vec![
        ("no Authorization header", None),
        ("empty bearer", Some("Bearer ".into())),
        ("other scheme", Some(format!("Basic {}", URL_SAFE_NO_PAD.encode("user:pass")))),
        ("bearer without space", Some(format!("Bearer{valid}"))),
        ("garbage", Some("Bearer not-a-jwt".into())),
        ("two parts", Some("Bearer a.b".into())),
        ("four parts", Some(format!("Bearer {valid}.x"))),
        ("header not JSON", Some(format!("Bearer {}.{}.x", URL_SAFE_NO_PAD.encode("nope"), b64(&claims)))),
        ("alg none", Some(format!("Bearer {alg_none}"))),
        ("alg None", Some(format!("Bearer {alg_none_upper}"))),
        ("HS256 signed with the public key", Some(format!("Bearer {hmac_with_public_key}"))),
        ("RS384 not in the allowlist", Some(format!("Bearer {rs384_header}"))),
        ("no kid", Some(format!("Bearer {no_kid}"))),
        ("expired", Some(format!("Bearer {}", h.with(json!({"exp": now() - 3600}))))),
        ("expired just past leeway", Some(format!("Bearer {}", h.with(json!({"exp": now() - 120}))))),
        ("nbf ahead", Some(format!("Bearer {}", h.with(json!({"nbf": now() + 3600}))))),
        ("no exp", Some(format!("Bearer {}", h.with(json!({"exp": null}))))),
        ("exp not a number", Some(format!("Bearer {}", h.with(json!({"exp": "tomorrow"}))))),
        ("wrong aud", Some(format!("Bearer {}", h.with(json!({"aud": "https://graph.microsoft.com"}))))),
        ("no aud", Some(format!("Bearer {}", h.with(json!({"aud": null}))))),
        ("wrong iss", Some(format!("Bearer {}", h.with(json!({"iss": "https://evil.example/v2.0"}))))),
        (
            "iss of another tenant than tid",
            Some(format!(
                "Bearer {}",
                h.with(json!({"iss": format!("{}/11111111-1111-4111-8111-111111111111/v2.0", h.simulator.base_url())}))
            )),
        ),
        (
            "tid not a GUID",
            Some(format!(
                "Bearer {}",
                h.with(json!({"tid": "contoso", "iss": format!("{}/contoso/v2.0", h.simulator.base_url())}))
            )),
        ),
        ("unknown kid", Some(format!("Bearer {}", stranger.sign(&json!({}), &claims)))),
        ("known kid, other key", Some(format!("Bearer {}", attacker.sign(&json!({}), &claims)))),
        ("tampered payload", Some(format!("Bearer {tampered}"))),
        ("jku header naming an unknown kid", Some(format!("Bearer {jku}"))),
        ("jku header signed by the attacker", Some(format!("Bearer {jku_signed_by_attacker}"))),
        ("x5u header", Some(format!("Bearer {x5u}"))),
        ("embedded jwk header", Some(format!("Bearer {embedded_jwk}"))),
        ("oversized token", Some(format!("Bearer {oversized}"))),
        ("Graph nonce token, option off", Some(format!("Bearer {nonce_token}"))),
    ];
    for (case, authorization) in &unauthorized {
        let reply = h.patch_with(authorization.as_deref()).await;
        expect(&reply, StatusCode::UNAUTHORIZED, case);
        assert!(reply.header("www-authenticate").starts_with("Bearer error=\"invalid_token\""), "{case}");
        assert_eq!(reply.json()["error"]["code"], "InvalidAuthenticationToken", "{case}");
        if let Some(token) =
            authorization.as_deref().and_then(|a| a.split_once(' ')).map(|(_, t)| t).filter(|t| t.len() > 20)
        {
            assert!(!String::from_utf8_lossy(&reply.body).contains(token), "{case}: token echoed");
        }
    }
    let forbidden = [
        ("delegated without the scope", h.with(json!({"roles": null, "scp": "User.Read Directory.Read.All"}))),
        ("scope prefix", h.with(json!({"roles": null, "scp": "OnPremisesPublishingProfiles.ReadWrite"}))),
        (
            "scope longer word",
            h.with(json!({"roles": null, "scp": "OnPremisesPublishingProfiles.ReadWrite.AllOfThem"})),
        ),
        ("scope case", h.with(json!({"roles": null, "scp": "onpremisespublishingprofiles.readwrite.all"}))),
        ("app token without the role", h.with(json!({"roles": ["Application.Read.All"]}))),
        ("app token with no roles", h.with(json!({"roles": null}))),
        ("role given as a scope to an app token", h.with(json!({"roles": [format!("{WRITE} extra")]}))),
    ];
    for (case, token) in &forbidden {
        let reply = h.patch(token).await;
        expect(&reply, StatusCode::FORBIDDEN, case);
        let challenge = reply.header("www-authenticate");
        assert!(challenge.starts_with("Bearer error=\"insufficient_scope\""), "{case}: {challenge}");
        assert!(challenge.contains(WRITE), "{case}: {challenge}");
    }
    assert!(h.simulator.received().is_empty(), "a refused request reached Graph");
    assert!(unauthorized.len() + forbidden.len() >= 30);
}

#[tokio::test]
async fn valid_shapes_are_accepted() {
    let h = AuthHarness::start("").await;
    let cases = [
        ("v2 app token with the role", h.sign(&h.claims())),
        ("within leeway after exp", h.with(json!({"exp": now() - 30}))),
        ("nbf within leeway", h.with(json!({"nbf": now() + 30}))),
        ("aud as an array", h.with(json!({"aud": ["other", DEV_AUDIENCE]}))),
        ("aud as the client id", h.with(json!({"aud": "c0ffee00-0000-4000-8000-000000000001"}))),
        ("delegated with the scope among others", h.with(json!({"roles": null, "scp": format!("User.Read {WRITE}"), "preferred_username": "adele@contoso.example"}))),
        ("delegated with Directory.ReadWrite.All", h.with(json!({"roles": null, "scp": "Directory.ReadWrite.All"}))),
        ("no nbf", h.with(json!({"nbf": null}))),
    ];
    for (case, token) in &cases {
        let reply = h.patch(token).await;
        expect(&reply, StatusCode::OK, case);
    }
    // Scheme is case-insensitive.
    let reply = h.patch_with(Some(&format!("bearer {}", h.sign(&h.claims())))).await;
    expect(&reply, StatusCode::OK, "lower-case scheme");
    assert_eq!(h.simulator.received().len(), cases.len() + 1);
}

#[tokio::test]
async fn v1_tokens_are_accepted_with_the_v1_issuer() {
    let h = AuthHarness::start("issuers = [\"https://sts.windows.net/{tenantid}/\"]").await;
    let token = h.with(json!({"iss": format!("https://sts.windows.net/{DEV_TENANT}/"), "ver": "1.0", "azp": null, "appid": "c0ffee00-0000-4000-8000-000000000001"}));
    expect(&h.patch(&token).await, StatusCode::OK, "v1 token");
    let v2 = h.sign(&h.claims());
    expect(&h.patch(&v2).await, StatusCode::UNAUTHORIZED, "v2 issuer not configured");
}

#[tokio::test]
async fn tenants_outside_allowed_tenants_are_403() {
    let h = AuthHarness::start("allowed_tenants = [\"22222222-2222-4222-8222-222222222222\"]").await;
    let reply = h.patch(&h.sign(&h.claims())).await;
    expect(&reply, StatusCode::FORBIDDEN, "tenant not allowed");
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains(DEV_TENANT));
    assert!(h.simulator.received().is_empty());
}

#[tokio::test]
async fn graph_nonce_tokens_verify_with_the_option_on() {
    let h = AuthHarness::start("graph_token_nonce = true").await;
    // Graph's issuer signs over the header whose nonce is replaced by base64url(SHA-256(nonce)).
    let nonce = "b3JpZ2luYWwtbm9uY2UtdmFsdWU";
    let hashed = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, nonce.as_bytes()));
    let signed_header = format!(r#"{{"typ":"JWT","nonce":"{hashed}","alg":"RS256","kid":"sim-key-1"}}"#);
    let sent_header = format!(r#"{{"typ":"JWT","nonce":"{nonce}","alg":"RS256","kid":"sim-key-1"}}"#);
    let claims = h.claims().to_string();
    let signed = h.simulator.key().sign_raw(signed_header.as_bytes(), claims.as_bytes());
    let signature = signed.rsplit('.').next().unwrap();
    let token = format!("{}.{}.{signature}", URL_SAFE_NO_PAD.encode(&sent_header), URL_SAFE_NO_PAD.encode(&claims));
    expect(&h.patch(&token).await, StatusCode::OK, "nonce token, option on");
    // Signed over the untransformed header: invalid under the transform.
    let plain = h.simulator.key().sign_raw(sent_header.as_bytes(), claims.as_bytes());
    expect(&h.patch(&plain).await, StatusCode::UNAUTHORIZED, "nonce token signed without the transform");
}

/// A JWKS server whose key set tests can change, counting fetches.
struct JwksServer {
    addr: std::net::SocketAddr,
    keys: Arc<std::sync::Mutex<Value>>,
    fetches: Arc<AtomicU64>,
}

impl JwksServer {
    async fn start(initial: Value) -> Self {
        let keys = Arc::new(std::sync::Mutex::new(initial));
        let fetches = Arc::new(AtomicU64::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (k, f) = (keys.clone(), fetches.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (k, f) = (k.clone(), f.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_req| {
                        f.fetch_add(1, Ordering::SeqCst);
                        let body = k.lock().unwrap().to_string();
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                                bytes::Bytes::from(body),
                            )))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, keys, fetches }
    }
}

#[tokio::test]
async fn rotated_keys_are_picked_up_and_random_kids_cause_no_fetch_storm() {
    connector_gateway::install_crypto_provider();
    let old = DevKey::generate("old").unwrap();
    let new = DevKey::generate("new").unwrap();
    let jwks = JwksServer::start(json!({"keys": [old.jwk()]})).await;
    let simulator = Simulator::start("127.0.0.1:0".parse().unwrap(), Faults::default()).await.unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[auth]\njwks_url = \"http://{}/keys\"\nissuers = [\"https://issuer.test/{{tenantid}}/v2.0\"]\naudiences = [\"{DEV_AUDIENCE}\"]\nunknown_kid_cooldown = \"5m\"\n",
        simulator.base_url(),
        jwks.addr
    );
    let gateway =
        launch::start(connector_gateway::Config::from_toml(&text, &common::scratch_dir()).unwrap()).await.unwrap();
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1, "loaded once at start");
    let claims = json!({"aud": DEV_AUDIENCE, "iss": format!("https://issuer.test/{DEV_TENANT}/v2.0"), "tid": DEV_TENANT, "exp": now() + 600, "roles": [DEV_ROLE]});
    let client = HttpClient::default();
    let url = format!("http://{}{}", gateway.addr, connector_path());
    let send = |token: String| {
        let (client, url) = (&client, url.clone());
        async move {
            client
                .send(
                    Method::PATCH,
                    &url,
                    &[("authorization", &format!("Bearer {token}")), ("content-type", "application/json")],
                    r#"{"status":"active"}"#,
                )
                .await
        }
    };
    assert_eq!(send(old.sign(&json!({}), &claims)).await.status, StatusCode::OK);

    // The issuer rotates: the new key is published after the gateway started.
    *jwks.keys.lock().unwrap() = json!({"keys": [old.jwk(), new.jwk()]});
    assert_eq!(send(new.sign(&json!({}), &claims)).await.status, StatusCode::OK, "new key accepted after one refresh");
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2);

    // 100 tokens with made-up kids, concurrently: at most one more fetch in this cooldown (none,
    // since the refresh for the new key just used it).
    let mut tasks = Vec::new();
    for i in 0..100 {
        let token = new.sign(&json!({"kid": format!("made-up-{i}")}), &claims);
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            HttpClient::default()
                .send(
                    Method::PATCH,
                    &url,
                    &[("authorization", &format!("Bearer {token}")), ("content-type", "application/json")],
                    r#"{"status":"active"}"#,
                )
                .await
                .status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2, "no fetch storm");

    // The JWKS endpoint breaks: a failed refresh keeps the last good keys.
    *jwks.keys.lock().unwrap() = json!("not a jwks");
    assert_eq!(send(new.sign(&json!({}), &claims)).await.status, StatusCode::OK);
    gateway.shutdown().await;
}

#[tokio::test]
async fn readyz_fails_until_keys_are_loaded_and_governed_writes_get_503() {
    connector_gateway::install_crypto_provider();
    let simulator = Simulator::start("127.0.0.1:0".parse().unwrap(), Faults::default()).await.unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{}\"\n[auth]\njwks_url = \"http://{closed}/keys\"\naudiences = [\"{DEV_AUDIENCE}\"]\n",
        simulator.base_url()
    );
    let gateway =
        launch::start(connector_gateway::Config::from_toml(&text, &common::scratch_dir()).unwrap()).await.unwrap();
    let client = HttpClient::default();
    let ready = client.send(Method::GET, &format!("http://{}/readyz", gateway.admin_addr), &[], "").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["checks"]["keys"], "signing keys not loaded");
    let token = simulator
        .mint(DEV_AUDIENCE, &connector_gateway::simulator::entra::Grant::Application { roles: vec![DEV_ROLE.into()] });
    let url = format!("http://{}{}", gateway.addr, connector_path());
    let reply = client
        .send(
            Method::PATCH,
            &url,
            &[("authorization", &format!("Bearer {token}")), ("content-type", "application/json")],
            r#"{"status":"active"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(!reply.header("retry-after").is_empty());
    assert!(simulator.received().is_empty());
    gateway.shutdown().await;
}
