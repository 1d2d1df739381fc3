//! The `sse-bridge` binary: flags → configuration → listeners → run until a signal → exit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sse_bridge::config::{ConfigFile, Overrides};
use sse_bridge::{App, logging, shutdown, startup};
use tokio::net::TcpListener;
use tracing::{error, info};

/// jemalloc: steadier fragmentation under many small, short-lived buffers than glibc malloc,
/// returns memory to the OS on a timer, and reports the live heap that the memory budget and
/// `sse_bridge_heap_allocated_bytes` use.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once when it starts (its documented `malloc_conf` symbol, under the
/// `_rjem_` prefix tikv-jemalloc-sys builds it with). `prof:true` makes the heap profiler
/// available; `prof_active:false` keeps it from sampling until `admin.profiling` turns it on
/// (`sse_bridge::admin::profile::activate`); `lg_prof_sample:19` samples one allocation per
/// 512 KiB allocated on average, cheap enough to leave on (docs/benchmarks.md). The
/// `_RJEM_MALLOC_CONF` environment variable overrides it (e.g. `prof:false`). A reference to an
/// array is a thin pointer: the symbol holds the address of the C string, as `const char *`.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8; 46] = b"prof:true,prof_active:false,lg_prof_sample:19\0";

/// Streams NATS subjects and Redis channels to browsers over Server-Sent Events.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file (default: ./bridge.toml if present, else built-in defaults).
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit (0 valid, 2 invalid).
    #[arg(long)]
    check_config: bool,
    /// Override server.listen.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Override admin.listen.
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<SocketAddr>,
    /// Override log.level (e.g. debug, sse_bridge=trace).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let file = match &args.config {
        Some(p) => ConfigFile::Explicit(p.clone()),
        None => ConfigFile::Default,
    };
    let overrides =
        Overrides { listen: args.listen, admin_listen: args.admin_listen, log_level: args.log_level.clone() };
    let (config, path) = match startup::load_config(&file, &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sse-bridge: {e}");
            return ExitCode::from(2);
        }
    };
    let source = path.as_ref().map_or("built-in defaults".to_string(), |p| p.display().to_string());
    if args.check_config {
        println!("configuration OK ({source})");
        return ExitCode::SUCCESS;
    }
    logging::init(&config.log);
    raise_open_file_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sse-bridge: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Before binding: a signal must never find the port open and the handlers missing.
        let stop = shutdown::signal();
        let listener = match bind_with_backlog(config.server.listen, config.server.listen_backlog) {
            Ok(l) => l,
            Err(e) => {
                error!(addr = %config.server.listen, error = %e, "Cannot bind server.listen.");
                return ExitCode::FAILURE;
            }
        };
        let admin = match TcpListener::bind(config.admin.listen).await {
            Ok(l) => l,
            Err(e) => {
                error!(addr = %config.admin.listen, error = %e, "Cannot bind admin.listen.");
                return ExitCode::FAILURE;
            }
        };
        info!(
            config = %source,
            listen = %listener.local_addr().map_or(config.server.listen, |a| a),
            admin = %admin.local_addr().map_or(config.admin.listen, |a| a),
            nats = config.nats.is_some(),
            redis = config.redis.is_some(),
            publish = config.publish.token.is_some(),
            "sse-bridge started."
        );
        App::new(config).run(listener, admin, stop).await;
        ExitCode::SUCCESS
    })
}

/// Every stream is a socket: raise the soft open-file limit to the hard limit, as Go's runtime
/// does, so the stream ceiling is the operator's hard limit rather than a default of 1024.
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => info!(from = soft, to = hard, "Raised the open-file limit."),
            Err(e) => tracing::warn!(soft, hard, error = %e, "Cannot raise the open-file limit."),
        },
        Ok((soft, _)) => info!(limit = soft, "Open-file limit."),
        Err(e) => tracing::warn!(error = %e, "Cannot read the open-file limit."),
    }
}

/// Binds the public listener with `server.listen_backlog` (tokio's `bind` uses 1024): a
/// reconnect herd after a rollout arrives within milliseconds, and every connect the kernel
/// drops for a full backlog costs that client a one-second SYN retry.
fn bind_with_backlog(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
