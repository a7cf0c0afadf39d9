//! The `connector-gateway` command: serve, check-config, audit verify, simulate, demo.

use std::path::PathBuf;
use std::process::ExitCode;

use connector_gateway::{Config, install_crypto_provider, launch};

const USAGE: &str = "usage:
  connector-gateway serve --config FILE
  connector-gateway check-config --config FILE
  connector-gateway audit verify FILE...
  connector-gateway simulate [--listen ADDR] [--throttle SHARE] [--unavailable SHARE] [--latency DURATION]
  connector-gateway demo [--once]";

fn init_logging(default_level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default_level.into());
    // A closed stderr must not take the gateway down: tracing-subscriber would report its own
    // write failure with eprintln!, which panics when stderr is gone.
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).log_internal_errors(false);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init();
    }
}

fn config_arg(args: &[String]) -> Result<PathBuf, String> {
    match args {
        [flag, path] if flag == "--config" => Ok(PathBuf::from(path)),
        _ => Err(format!("expected --config FILE\n{USAGE}")),
    }
}

fn load(args: &[String]) -> Result<Config, String> {
    let path = config_arg(args)?;
    Config::load(&path).map_err(|e| format!("{}: {e}", path.display()))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, so call it
/// before announcing readiness: a supervisor may signal as soon as it reads the ready line.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

fn serve(args: &[String]) -> Result<(), String> {
    let config = load(args)?;
    runtime()?.block_on(async {
        let signal = shutdown_signal()?;
        let gateway = launch::start(config).await.map_err(|e| e.to_string())?;
        signal.await;
        tracing::info!("shutting down: draining in-flight requests");
        gateway.shutdown().await;
        Ok(())
    })
}

fn run(args: &[String]) -> Result<(), String> {
    match args {
        [command, rest @ ..] if command == "serve" => serve(rest),
        [command, rest @ ..] if command == "check-config" => {
            load(rest)?;
            println!("configuration is valid");
            Ok(())
        }
        [command, rest @ ..] if command == "simulate" => simulate(rest),
        [command, sub, files @ ..] if command == "audit" && sub == "verify" && !files.is_empty() => {
            use connector_gateway::audit::verify;
            let files: Vec<PathBuf> = files.iter().map(PathBuf::from).collect();
            match verify::verify_files(&files) {
                Ok(summary) => {
                    println!("{}", verify::describe(&summary, &files));
                    Ok(())
                }
                Err(broken) => Err(format!("audit chain broken at {broken}")),
            }
        }
        [command, rest @ ..] if command == "demo" => {
            let once = match rest {
                [] => false,
                [flag] if flag == "--once" => true,
                _ => return Err(USAGE.to_owned()),
            };
            let ok = runtime()?.block_on(connector_gateway::demo::run(once))?;
            if ok { Ok(()) } else { Err("some demo steps did not behave as expected".into()) }
        }
        _ => Err(USAGE.to_owned()),
    }
}

fn simulate(args: &[String]) -> Result<(), String> {
    use connector_gateway::simulator::{Faults, Simulator, entra};
    let mut listen = "127.0.0.1:8081".to_owned();
    let mut faults = Faults::default();
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let ratio = |v: &str| {
            v.parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| format!("{flag}: `{v}` is not a share from 0.0 to 1.0"))
        };
        match flag.as_str() {
            "--listen" => listen = value.clone(),
            "--throttle" => faults.throttle = ratio(value)?,
            "--unavailable" => faults.unavailable = ratio(value)?,
            "--latency" => faults.latency = humantime::parse_duration(value).map_err(|e| format!("--latency: {e}"))?,
            _ => return Err(USAGE.to_owned()),
        }
    }
    let addr = listen.parse().map_err(|_| format!("--listen: `{listen}` is not an address like 127.0.0.1:8081"))?;
    runtime()?.block_on(async {
        let signal = shutdown_signal()?;
        let simulator = Simulator::start(addr, faults).await.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        tracing::info!(addr = %simulator.addr(), "simulator ready");
        println!("simulator ready on {}", simulator.base_url());
        println!("  OpenID configuration: {}", simulator.openid_configuration_url());
        println!(
            "  token endpoint:       {} (client_id {}, client_secret {})",
            simulator.token_url(),
            entra::DEV_CLIENT_ID,
            entra::DEV_CLIENT_SECRET
        );
        println!(
            "  connectors:           {}/beta/onPremisesPublishingProfiles/applicationProxy/connectors",
            simulator.base_url()
        );
        signal.await;
        simulator.shutdown().await;
        Ok(())
    })
}

fn main() -> ExitCode {
    install_crypto_provider();
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The demo prints its own tour; the gateway's access log would drown it (RUST_LOG overrides).
    init_logging(if args.first().is_some_and(|c| c == "demo") { "warn" } else { "info" });
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
