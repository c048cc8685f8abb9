//! `switchyard`: run the switch, check a configuration, manage API keys.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "switchyard",
    version,
    about = "SIP/RTP switch with an HTTP API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the switch (SIP on UDP+TCP, RTP, HTTP API, status callbacks).
    Serve {
        /// TOML configuration; every key has a default, so this is optional.
        #[arg(long, env = "SWITCHYARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and report each problem with its key and line.
    CheckConfig { file: PathBuf },
    /// Show which dialplan rule a call would match, and why each earlier rule did not.
    Route {
        /// Caller number (as the carrier sends it).
        #[arg(long)]
        from: String,
        /// Called number.
        #[arg(long)]
        to: String,
        /// The trunk the call arrives on.
        #[arg(long)]
        trunk: Option<String>,
        #[arg(long, env = "SWITCHYARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the HTTP API's OpenAPI 3.1 document (as `GET /api/v1/openapi.json` serves it).
    Openapi,
    /// Manage API keys.
    ApiKey {
        #[command(subcommand)]
        action: ApiKeyAction,
    },
}

#[derive(Subcommand, Debug)]
enum ApiKeyAction {
    /// Create a key for a tenant; the key is printed once and stored hashed.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_parser = ["owner", "admin", "developer", "member", "operator"])]
        role: String,
        #[arg(long, env = "SWITCHYARD_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Openapi => match switchyard::api::openapi::document().to_pretty_json() {
            Ok(json) => {
                // Not println!: a closed pipe (`| head`) is not worth a panic.
                use std::io::Write as _;
                let _ = writeln!(std::io::stdout().lock(), "{json}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("openapi document: {e}");
                ExitCode::FAILURE
            }
        },
        Command::CheckConfig { file } => match switchyard::config::Config::load(Some(&file)) {
            Ok(config) => match switchyard::app::load_dialplan(&config, Some(&file)) {
                Ok(plan) => {
                    match plan {
                        Some(p) => println!(
                            "{}: ok (dialplan: {} rules, {} numbers)",
                            file.display(),
                            p.rules().len(),
                            p.numbers().len()
                        ),
                        None => println!("{}: ok (no dialplan)", file.display()),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{}: invalid dialplan", file.display());
                    for line in e.to_string().split("; ") {
                        eprintln!("  {line}");
                    }
                    ExitCode::from(2)
                }
            },
            Err(e) => {
                eprintln!("{}: invalid configuration", file.display());
                for line in e.to_string().lines() {
                    eprintln!("  {line}");
                }
                ExitCode::from(2)
            }
        },
        Command::Route {
            from,
            to,
            trunk,
            config,
        } => route(config.as_deref(), &from, &to, trunk.as_deref()),
        Command::Serve { config } => {
            // No transparent huge pages: mimalloc asks for them, and then every page it
            // takes back after a purge costs the kernel zeroing 2 MiB at once. Measured
            // through `cargo bench --bench transit`: 7–10 % less CPU per call with RTP and
            // without. Best effort; a kernel without THP has nothing to turn off.
            #[cfg(target_os = "linux")]
            if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
                eprintln!("cannot turn transparent huge pages off: {e}");
            }
            // A configuration that does not load is reported by `serve` itself.
            let workers = switchyard::config::Config::load(config.as_deref())
                .ok()
                .and_then(|c| c.node.worker_threads);
            run_with(workers, async move {
                switchyard::app::serve(config.as_deref()).await
            })
        }
        Command::ApiKey {
            action:
                ApiKeyAction::Create {
                    tenant,
                    role,
                    config,
                },
        } => run(async move {
            let key = switchyard::app::create_api_key(config.as_deref(), &tenant, &role).await?;
            println!("{key}");
            Ok(())
        }),
    }
}

/// `switchyard route`: the decision, the rule, and the reasoning, one line each.
fn route(path: Option<&std::path::Path>, from: &str, to: &str, trunk: Option<&str>) -> ExitCode {
    let config = match switchyard::config::Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let plan = match switchyard::app::load_dialplan(&config, path) {
        Ok(Some(p)) => p,
        Ok(None) => {
            eprintln!("switchyard: no [dialplan] file configured");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("switchyard: dialplan: {e}");
            return ExitCode::from(2);
        }
    };
    let now = chrono::Utc::now();
    let decision = plan.route(&dialplan::plan::Attempt {
        from: from.to_owned(),
        to: to.to_owned(),
        source_trunk: trunk.map(str::to_owned),
        local_time: switchyard::core::inbound::local_time(now, config.dialplan.utc_offset_minutes),
    });
    let route = match &decision.route {
        dialplan::plan::Route::Agent(a) => format!("agent {a}"),
        dialplan::plan::Route::Stream(st) => format!("stream to {}", st.url),
        dialplan::plan::Route::Proxy { number } => format!("proxy session lookup on {number}"),
        dialplan::plan::Route::Trunks(t) => format!("trunks {}", t.join(" → ")),
        dialplan::plan::Route::Reject { sip_code, reason } => format!("reject {sip_code} {reason}"),
    };
    println!("route: {route}");
    println!("rule: {}", decision.rule.as_deref().unwrap_or("(none)"));
    if let Some(n) = &decision.to_e164 {
        println!("to: {n}");
    }
    if let Some(n) = &decision.from_e164 {
        println!("from: {n}");
    }
    for line in &decision.explanation {
        println!("  {line}");
    }
    ExitCode::SUCCESS
}

fn run(fut: impl Future<Output = Result<(), switchyard::app::AppError>>) -> ExitCode {
    run_with(None, fut)
}

/// Runs `fut` on a multi-threaded runtime of `workers` threads (default: tokio's, one
/// per core or `TOKIO_WORKER_THREADS`).
fn run_with(
    workers: Option<usize>,
    fut: impl Future<Output = Result<(), switchyard::app::AppError>>,
) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = workers {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchyard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard: {e}");
            ExitCode::FAILURE
        }
    }
}
