//! The latency the gateway adds on loopback: the same connector PATCH sent directly to the
//! simulator and through the gateway (full policy: JWT, scopes, body, rate limits, audit with
//! group commit), interleaved in rounds so both see the same machine noise. Prints the medians
//! of each round and their difference. Run: `cargo bench --bench latency` (`FSYNC=off` to see the cost of the audit syncs).

use std::time::{Duration, Instant};

use bytes::Bytes;
use connector_gateway::simulator::entra::{DEV_AUDIENCE, DEV_ROLE, Grant};
use connector_gateway::simulator::{Faults, Simulator};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const ROUNDS: usize = 5;
const PER_ROUND: usize = 400;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples.get(samples.len() / 2).copied().unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    connector_gateway::install_crypto_provider();
    let simulator = Simulator::start("127.0.0.1:0".parse().unwrap(), Faults::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"{base}\"\n[auth]\njwks_url = \"{jwks}\"\nissuers = [\"{base}/{{tenantid}}/v2.0\"]\naudiences = [\"{DEV_AUDIENCE}\"]\n[rate_limit]\nper_principal = {{ rate = \"100000/s\", burst = 100000 }}\nper_connector = {{ rate = \"100000/s\", burst = 100000 }}\n[audit]\nfsync = \"{fsync}\"\n",
        base = simulator.base_url(),
        jwks = simulator.jwks_url(),
        fsync = std::env::var("FSYNC").unwrap_or_else(|_| "batch".into()),
    );
    let config = connector_gateway::Config::from_toml(&text, dir.path()).unwrap();
    let gateway = connector_gateway::launch::start(config).await.unwrap();
    let token =
        format!("Bearer {}", simulator.mint(DEV_AUDIENCE, &Grant::Application { roles: vec![DEV_ROLE.into()] }));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let path = "/beta/onPremisesPublishingProfiles/applicationProxy/connectors/b4ad1e2c-5c8f-4f1a-9f3e-4a6f2a6c7a01";
    let targets =
        [("direct", format!("{}{path}", simulator.base_url())), ("gateway", format!("http://{}{path}", gateway.addr))];
    let send = |url: String| {
        let (client, token) = (client.clone(), token.clone());
        async move {
            let request = Request::patch(url)
                .header("authorization", token)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(br#"{"status":"active"}"#)))
                .unwrap();
            let started = Instant::now();
            let response = client.request(request).await.unwrap();
            assert!(response.status().is_success());
            response.into_body().collect().await.unwrap();
            started.elapsed()
        }
    };
    // Warm up connections and the token cache.
    for (_, url) in &targets {
        for _ in 0..50 {
            send(url.clone()).await;
        }
    }
    println!("round  direct p50   gateway p50   added");
    let mut added = Vec::new();
    for round in 1..=ROUNDS {
        let mut medians = Vec::new();
        for (_, url) in &targets {
            let mut samples = Vec::with_capacity(PER_ROUND);
            for _ in 0..PER_ROUND {
                samples.push(send(url.clone()).await);
            }
            medians.push(median(samples));
        }
        let (direct, through) = (medians[0], medians[1]);
        added.push(through.saturating_sub(direct));
        println!("{round:>5}  {:>10.1?}  {:>12.1?}  {:>6.1?}", direct, through, through.saturating_sub(direct));
    }
    println!("median added latency over {ROUNDS} rounds: {:.1?}", median(added));
    gateway.shutdown().await;
}
