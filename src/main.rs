//! `switchyard`: run the switch, check a configuration, manage API keys.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
        #[arg(long, value_parser = ["owner", "admin", "developer", "member"])]
        role: String,
        #[arg(long, env = "SWITCHYARD_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::CheckConfig { file } => match switchyard::config::Config::load(Some(&file)) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: invalid configuration", file.display());
                for line in e.to_string().lines() {
                    eprintln!("  {line}");
                }
                ExitCode::from(2)
            }
        },
        Command::Serve { config } => {
            run(async move { switchyard::app::serve(config.as_deref()).await })
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

fn run(fut: impl Future<Output = Result<(), switchyard::app::AppError>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
