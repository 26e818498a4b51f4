//! `backend [PORT] [--bind ADDR] [--id NAME]`: the test backend of the `lb` load balancer.
//!
//! Prints `backend <id> listening on <ip:port>` once it accepts connections, then
//! `<id>: served <N> requests` every 10 s while the count changes. SIGTERM or SIGINT stops
//! it gracefully (in-flight requests get up to 5 s) with exit status 0.

use std::{
    io::{IsTerminal, Write},
    net::{Ipv4Addr, SocketAddr},
    process::ExitCode,
    time::Duration,
};

use clap::Parser;
use lb_backend::TestBackend;
use tokio::signal::unix::{SignalKind, signal};
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// How often the "served N requests" line may be printed.
const REPORT_EVERY: Duration = Duration::from_secs(10);
/// How long in-flight requests get to finish after SIGTERM/SIGINT.
const GRACE: Duration = Duration::from_secs(5);

/// The test backend of the lb load balancer.
#[derive(Debug, Parser)]
#[command(name = "backend", version)]
struct Args {
    /// Port to listen on, on all interfaces (0.0.0.0).
    #[arg(value_name = "PORT", default_value_t = 8080)]
    port: u16,
    /// Address to listen on instead of 0.0.0.0:PORT, e.g. 127.0.0.1:0 for a free port.
    #[arg(long, value_name = "ADDR")]
    bind: Option<SocketAddr>,
    /// Name sent in x-backend-id and in replies [default: the bound address].
    #[arg(long, value_name = "NAME", value_parser = parse_id)]
    id: Option<String>,
}

fn parse_id(id: &str) -> Result<String, String> {
    match http::HeaderValue::from_str(id) {
        Ok(_) if !id.is_empty() => Ok(id.to_owned()),
        _ => Err(format!("{id:?} is not a usable header value")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|spec| spec.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(Level::WARN));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .with(filter)
        .init();

    // Handlers first, so a signal right after the listening line still stops us cleanly.
    let (mut terminate, mut interrupt) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(terminate), Ok(interrupt)) => (terminate, interrupt),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("backend: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };

    let addr = args
        .bind
        .unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, args.port)));
    let backend = match TestBackend::start(addr, args.id).await {
        Ok(backend) => backend,
        Err(e) => {
            eprintln!("backend: {e}");
            return ExitCode::FAILURE;
        }
    };

    let mut stdout = std::io::stdout().lock();
    let line = writeln!(
        stdout,
        "backend {} listening on {}",
        backend.id(),
        backend.local_addr()
    );
    if let Err(e) = line.and_then(|()| stdout.flush()) {
        eprintln!("backend: cannot write to stdout: {e}");
    }
    drop(stdout);
    backend.spawn_reporter(REPORT_EVERY);

    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
    backend.shutdown(GRACE).await;
    ExitCode::SUCCESS
}
