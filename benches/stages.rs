//! Per-stage costs, so a regression can be located: route classification and body validation
//! (more stages join as they land). Run: `cargo bench --bench stages`.

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

criterion_group!(benches, route, body);
criterion_main!(benches);
