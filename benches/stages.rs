//! Per-stage costs, so a regression can be located: route classification, body validation, token
//! verification (first sight and cached), the rate-limit decision, the audit append (enqueue and
//! durable ack), and the whole in-process stack around an in-memory upstream.
//! Run: `cargo bench --bench stages` (`cargo bench --bench stages -- stack` for one group).

use std::hint::black_box;

use connector_gateway::body::parse_patch;
use connector_gateway::config::WritableProperty;
use connector_gateway::route::classify;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method, Uri};

const ID: &str = "b4ad1e2c-5c8f-4f1a-9f3e-4a6f2a6c7a01";

fn route(c: &mut Criterion) {
    let plain: Uri = format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors/{ID}").parse().unwrap();
    let odata: Uri =
        format!("/BETA/onPremisesPublishingProfiles('applicationProxy')/%63onnectors('{ID}')?x=1").parse().unwrap();
    let other: Uri = "/v1.0/users/adele@contoso.example/memberOf".parse().unwrap();
    let headers = HeaderMap::new();
    let mut group = c.benchmark_group("route");
    group.bench_function("connector_write_plain", |b| b.iter(|| classify(&Method::PATCH, black_box(&plain), &headers)));
    group.bench_function("connector_write_odata_escaped", |b| {
        b.iter(|| classify(&Method::PATCH, black_box(&odata), &headers))
    });
    group.bench_function("other", |b| b.iter(|| classify(&Method::GET, black_box(&other), &headers)));
    group.finish();
}

fn body(c: &mut Criterion) {
    let all = [WritableProperty::ExternalIp, WritableProperty::MachineName, WritableProperty::Status];
    // A typical 60-byte body.
    let typical = br#"{"status":"inactive","machineName":"edge-7.contoso.local"}"#;
    let mut group = c.benchmark_group("body");
    group.bench_function("validate_typical_60_bytes", |b| b.iter(|| parse_patch(black_box(typical), ID, &all)));
    group.bench_function("refuse_duplicate", |b| {
        b.iter(|| parse_patch(black_box(br#"{"status":"active","status":"inactive"}"#), ID, &all))
    });
    group.finish();
}

fn auth(c: &mut Criterion) {
    use connector_gateway::auth::keys::parse_jwks;
    use connector_gateway::auth::{KeyStore, Verdict, Verifier};
    use connector_gateway::simulator::entra::DevKey;
    use serde_json::json;

    connector_gateway::install_crypto_provider();
    let key = DevKey::generate("bench").unwrap();
    let jwks = json!({"keys": [key.jwk()]}).to_string();
    let config = connector_gateway::Config::from_toml(
        "[upstream]\nurl = \"http://127.0.0.1:9\"\n[auth]\njwks_file = \"k\"\nissuers = [\"https://issuer.test/{tenantid}/v2.0\"]\naudiences = [\"api://gw\"]\n",
        std::path::Path::new("."),
    )
    .unwrap();
    let tenant = "6b1d9e62-3c1a-4f7e-9a52-0c0ffee0c0de";
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let claims = json!({"aud": "api://gw", "iss": format!("https://issuer.test/{tenant}/v2.0"), "tid": tenant, "exp": exp,
        "roles": ["OnPremisesPublishingProfiles.ReadWrite.All"], "oid": "0a1b2c3d-0000-4000-8000-0000000000a1", "azp": "c0ffee00-0000-4000-8000-000000000001"});
    let token = key.sign(&json!({}), &claims);
    let store = KeyStore::fixed(parse_jwks(jwks.as_bytes(), 1).unwrap());
    let mut group = c.benchmark_group("auth");
    // First sight: a fresh verifier (empty cache) per iteration, built outside the timing.
    group.bench_function("verify_first_sight_rs256", |b| {
        b.iter_batched(
            || Verifier::new(&config.auth, store.clone()),
            |verifier| assert!(matches!(verifier.verify_now(black_box(&token)), Verdict::Done(Ok(_)))),
            criterion::BatchSize::SmallInput,
        )
    });
    let cached = Verifier::new(&config.auth, store.clone());
    let _ = cached.verify_now(&token);
    group.bench_function("verify_cached", |b| b.iter(|| cached.verify_now(black_box(&token))));
    group.finish();
}

fn audit(c: &mut Criterion) {
    use connector_gateway::audit::{AuditJournal, Phase, RecordBody};
    use connector_gateway::config::{AuditConfig, FsyncMode};

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let body = RecordBody {
        time: "2026-12-03T18:04:05.123Z".into(),
        phase: Phase::Intent,
        request_id: "6f1c1f4e-1b7a-4f7e-9f0e-2b1d3c4e5f60".into(),
        client_request_id: "0d3c2b1a-5f4e-4d3c-8b2a-1f0e9d8c7b6a".into(),
        principal: None,
        client_addr: Some("127.0.0.1:50123".into()),
        method: "PATCH".into(),
        api_version: Some("beta".into()),
        path: format!("/onPremisesPublishingProfiles/applicationProxy/connectors/{ID}"),
        connector_id: Some(ID.into()),
        changes: Some(serde_json::json!({"status": "inactive"})),
        reason: None,
        status: None,
        graph_request_id: None,
        duration_ms: None,
        upstream_credential: None,
    };
    let mut group = c.benchmark_group("audit");
    for (name, fsync) in [("batch", FsyncMode::Batch), ("off", FsyncMode::Off)] {
        let config = AuditConfig { path: dir.path().join(format!("{name}.jsonl")), fsync, rotate_bytes: None };
        let journal = runtime.block_on(async { AuditJournal::open(&config) }).unwrap();
        group.bench_function(format!("append_ack_one_fsync_{name}"), |b| {
            b.to_async(&runtime).iter(|| journal.append(body.clone()))
        });
        // 64 requests at once, as under load: group commit shares one write + one fdatasync.
        group.bench_function(format!("append_ack_64_concurrent_fsync_{name}"), |b| {
            b.to_async(&runtime).iter(|| async {
                let appends: Vec<_> = (0..64).map(|_| journal.submit(body.clone())).collect();
                for append in appends {
                    append.await.unwrap();
                }
            })
        });
        let (records, syncs) = journal.counters();
        eprintln!("audit fsync={name}: {records} records written with {syncs} syncs");
    }
    group.finish();
}

fn ratelimit(c: &mut Criterion) {
    use connector_gateway::metrics::Metrics;
    use connector_gateway::ratelimit::Limiter;

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let config = connector_gateway::Config::from_toml(
        "[upstream]\nurl = \"http://127.0.0.1:9\"\n[auth]\njwks_file = \"k\"\naudiences = [\"api://gw\"]\n[rate_limit]\nper_principal = { rate = \"1000000000/s\", burst = 1000000000 }\nper_connector = { rate = \"1000000000/s\", burst = 1000000000 }\n",
        std::path::Path::new("."),
    )
    .unwrap();
    let limiter = Limiter::new(&config.rate_limit, std::sync::Arc::new(Metrics::default())).unwrap();
    let one = [("tenant/0a1b2c3d-0000-4000-8000-0000000000a1".to_owned(), ID.to_owned())];
    let mut group = c.benchmark_group("ratelimit");
    // Two GCRA decisions (principal, connector) on warm keys, and the remaining-quota header.
    group.bench_function("decide_memory_warm_keys", |b| {
        b.to_async(&runtime).iter(|| async { assert!(limiter.decide_all(black_box(&one)).await.is_ok()) })
    });
    group.finish();
}

/// The whole gateway stack in process, around an upstream that answers at once: a regression in
/// any stage, or in how they are put together, shows here.
fn stack(c: &mut Criterion) {
    use bytes::Bytes;
    use connector_gateway::audit::AuditJournal;
    use connector_gateway::auth::KeyStore;
    use connector_gateway::auth::keys::parse_jwks;
    use connector_gateway::simulator::entra::{DEV_AUDIENCE, DEV_ROLE, DevKey, Grant, access_token_claims};
    use connector_gateway::{ForwardBody, GatewayLayer};
    use http_body_util::{BodyExt, Full};
    use serde_json::json;
    use tower::{Layer, ServiceExt};

    connector_gateway::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = DevKey::generate("bench").unwrap();
    let base = "https://issuer.test";
    let token = format!(
        "Bearer {}",
        key.sign(
            &json!({}),
            &access_token_claims(base, DEV_AUDIENCE, "app", &Grant::Application { roles: vec![DEV_ROLE.into()] })
        )
    );
    let path = format!("/beta/onPremisesPublishingProfiles/applicationProxy/connectors/{ID}");
    let mut group = c.benchmark_group("stack");
    for fsync in ["off", "batch"] {
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n[auth]\njwks_file = \"k\"\nissuers = [\"{base}/{{tenantid}}/v2.0\"]\naudiences = [\"{DEV_AUDIENCE}\"]\n[rate_limit]\nper_principal = {{ rate = \"1000000000/s\", burst = 1000000000 }}\nper_connector = {{ rate = \"1000000000/s\", burst = 1000000000 }}\n[audit]\npath = \"{fsync}.jsonl\"\nfsync = \"{fsync}\"\n"
        );
        let config = connector_gateway::Config::from_toml(&text, dir.path()).unwrap();
        let keys = KeyStore::fixed(parse_jwks(json!({"keys": [key.jwk()]}).to_string().as_bytes(), 1).unwrap());
        let journal = runtime.block_on(async { AuditJournal::open(&config.audit) }).unwrap();
        let layer = GatewayLayer::with_parts(&config, keys, journal).unwrap();
        let upstream = tower::service_fn(|_request: http::Request<ForwardBody<Full<Bytes>>>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(
                br#"{"status":"inactive"}"#,
            ))))
        });
        let service = layer.layer(upstream);
        group.bench_function(format!("connector_patch_fsync_{fsync}"), |b| {
            b.to_async(&runtime).iter(|| async {
                let request = http::Request::patch(path.as_str())
                    .header("authorization", token.as_str())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from_static(br#"{"status":"inactive"}"#)))
                    .unwrap();
                let response = service.clone().oneshot(request).await.unwrap();
                assert_eq!(response.status(), 200);
                black_box(response.into_body().collect().await.unwrap());
            })
        });
    }
    group.finish();
}

criterion_group!(benches, route, body, auth, ratelimit, audit, stack);
criterion_main!(benches);
