//! The `log-processor` binary: parses the command line, sets up logging, runs a subcommand.

use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use futures_util::StreamExt;
use log_processor::admin::audit::AuditArgs;
use log_processor::admin::dead_letters::DeadLettersCommand;
use log_processor::admin::parked::ParkedCommand;
use log_processor::admin::status::StatusArgs;
use log_processor::admin::topics::TopicsCommand;
use log_processor::config::{
    CheckConfigArgs, LogFormat, Settings, Sources, View, apply_config_file,
};
use log_processor::loadgen::{self, LoadgenArgs};
use log_processor::reindex::ReindexArgs;
use log_processor::{admin, app};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_tokio::Signals;

#[derive(Parser)]
#[command(
    name = "log-processor",
    version,
    about = "Moves log records from Kafka into PostgreSQL and Elasticsearch"
)]
struct Cli {
    /// File of LP_*=value lines; variables already set in the environment win.
    #[arg(long, env = "LP_CONFIG", global = true)]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run(Settings),
    /// Apply the PostgreSQL schema and exit.
    Migrate(Settings),
    /// Validate the configuration and print each setting with its source, secrets masked.
    CheckConfig(CheckConfigArgs),
    /// Produce generated log records to a topic.
    Loadgen(LoadgenArgs),
    /// Where each partition stands: Kafka's end and committed offsets, PostgreSQL's watermark,
    /// lag and dead letters (reads Kafka and PostgreSQL; the daemon need not run).
    Status(StatusArgs),
    /// Compare every offset below each partition's watermark across Kafka, PostgreSQL and the
    /// search store; report divergences by kind (exit 3), `--repair` what needs no guess.
    Audit(AuditArgs),
    /// List dead letters, or replay them with today's settings.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
    /// Topic identities: which incarnation of each topic the stored names hold; adopt a
    /// recreated topic (or another cluster's) under a name of its own.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Records their destination index would not take while the store took others: list them,
    /// drop them into the dead letters, or send them to another index.
    #[command(subcommand)]
    Parked(ParkedCommand),
    /// Read a time window of the topics again from Kafka (offsets-for-times) into a new index
    /// and/or table, with the daemon's decoding and document ids; resumable after a kill, ends
    /// with a per-partition reconciliation and an alias switched to the new index.
    Reindex(ReindexArgs),
    /// Print a completion script for a shell, e.g. `log-processor completions bash >
    /// /etc/bash_completion.d/log-processor`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `log-processor man | man -l -`; with --out-dir, write one
    /// page per command there (log-processor.1, log-processor-run.1, ...).
    Man {
        #[arg(long, value_name = "DIR")]
        out_dir: Option<std::path::PathBuf>,
    },
}

fn main() -> ExitCode {
    log_processor::allocator::bound_heap_growth();
    // SAFETY: first thing in main, before any thread exists.
    let from_config_file = match unsafe { apply_config_file() } {
        Ok(names) => names,
        Err(e) => {
            eprintln!("log-processor: {e}");
            return ExitCode::from(2);
        }
    };
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // Where each setting came from, for the views of `check-config` and `run`.
    let sources = match matches.subcommand() {
        Some(("run" | "check-config", m)) => Sources::from_matches(m, &from_config_file),
        _ => Sources::default(),
    };
    // Secrets given as files are read before anything validates or prints the settings.
    if let Command::Run(s)
    | Command::Migrate(s)
    | Command::CheckConfig(CheckConfigArgs { settings: s, .. }) = &mut cli.command
        && let Err(e) = s.load_secret_files()
    {
        eprintln!("log-processor: {e}");
        return ExitCode::from(2);
    }
    let format = match &cli.command {
        Command::Run(s) | Command::Migrate(s) => s.log_format,
        Command::CheckConfig(a) => a.settings.log_format,
        Command::Loadgen(_) | Command::Completions { .. } | Command::Man { .. } => LogFormat::Human,
        Command::Status(a) => a.settings.log_format,
        Command::Audit(a) => a.settings.log_format,
        Command::DeadLetters(DeadLettersCommand::List(a)) => a.settings.log_format,
        Command::DeadLetters(DeadLettersCommand::Replay(a)) => a.settings.log_format,
        Command::Topics(TopicsCommand::List(a)) => a.settings.log_format,
        Command::Topics(TopicsCommand::Adopt(a)) => a.settings.log_format,
        Command::Parked(ParkedCommand::List(a)) => a.settings.log_format,
        Command::Parked(ParkedCommand::Drop(a)) => a.settings.log_format,
        Command::Parked(ParkedCommand::Reroute(a)) => a.settings.log_format,
        Command::Reindex(a) => a.settings.log_format,
    };
    init_tracing(format);
    match cli.command {
        Command::Completions { shell } => {
            // Generated into memory: clap_complete panics on a failed write (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "log-processor", &mut script);
            let written = std::io::Write::write_all(&mut std::io::stdout(), &script);
            report(written.context("writing the completions"))
        }
        Command::Man { out_dir } => report(man(out_dir).context("man")),
        Command::CheckConfig(a) => match a.settings.validate() {
            Ok(()) => {
                let view = View::new(&a.settings, &sources);
                match a.json {
                    true => println!("{}", view.to_json()),
                    false => print!("{view}"),
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("log-processor: {e}");
                ExitCode::from(2)
            }
        },
        Command::Run(s) => {
            if let Err(e) = s.validate() {
                eprintln!("log-processor: {e}");
                return ExitCode::from(2);
            }
            log_view(&View::new(&s, &sources), s.log_format);
            match runtime().and_then(|rt| rt.block_on(run(s))) {
                Ok(code) => {
                    // Leave at once: a consumer thread stuck on a dead broker must not hold us.
                    std::process::exit(code);
                }
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Migrate(s) if s.validate().is_err() => {
            eprintln!("log-processor: {}", s.validate().unwrap_err());
            ExitCode::from(2)
        }
        Command::Migrate(s) => report(
            runtime()
                .and_then(|rt| rt.block_on(async { app::migrate(&s).await.context("migrate") })),
        ),
        Command::Loadgen(a) => report(
            runtime()
                .and_then(|rt| rt.block_on(async { loadgen::run(a).await.context("loadgen") })),
        ),
        Command::Status(a) => admin_command(&a.settings, async {
            let status = admin::status::status(&a.settings).await?;
            match a.json {
                true => println!("{}", serde_json::to_string_pretty(&status)?),
                false => println!("{status}"),
            }
            Ok(())
        }),
        Command::Audit(a) => {
            let mut code = 0;
            let done = admin_command(&a.settings, async {
                let outcome = admin::audit::audit(&a).await?;
                match a.json {
                    true => println!("{}", serde_json::to_string_pretty(&outcome)?),
                    false => println!("{outcome}"),
                }
                code = outcome.exit_code();
                Ok(())
            });
            match code {
                0 => done,
                c => ExitCode::from(c),
            }
        }
        Command::DeadLetters(DeadLettersCommand::List(a)) => admin_command(&a.settings, async {
            let listing = admin::dead_letters::list(&a).await?;
            match a.json {
                true => println!("{}", serde_json::to_string_pretty(&listing)?),
                false => println!("{listing}"),
            }
            Ok(())
        }),
        Command::DeadLetters(DeadLettersCommand::Replay(a)) => admin_command(&a.settings, async {
            println!("{}", admin::replay::replay(&a).await?);
            Ok(())
        }),
        Command::Topics(TopicsCommand::List(a)) => admin_command(&a.settings, async {
            let listing = admin::topics::list(&a).await?;
            match a.json {
                true => println!("{}", serde_json::to_string_pretty(&listing)?),
                false => println!("{listing}"),
            }
            Ok(())
        }),
        Command::Topics(TopicsCommand::Adopt(a)) => admin_command(&a.settings, async {
            println!("{}", admin::topics::adopt(&a).await?);
            Ok(())
        }),
        Command::Parked(ParkedCommand::List(a)) => admin_command(&a.settings, async {
            let listing = admin::parked::list(&a).await?;
            match a.json {
                true => println!("{}", serde_json::to_string_pretty(&listing)?),
                false => println!("{listing}"),
            }
            Ok(())
        }),
        Command::Parked(ParkedCommand::Drop(a)) => admin_command(&a.settings, async {
            println!("{}", admin::parked::drop(&a).await?);
            Ok(())
        }),
        Command::Parked(ParkedCommand::Reroute(a)) => admin_command(&a.settings, async {
            println!("{}", admin::parked::reroute(&a).await?);
            Ok(())
        }),
        Command::Reindex(a) => {
            if let Err(e) = a.validate() {
                eprintln!("log-processor: {e}");
                return ExitCode::from(2);
            }
            let mut code = 0;
            let done = admin_command(&a.settings, async {
                match log_processor::reindex::reindex(&a).await {
                    Ok(summary) => {
                        println!("{summary}");
                        code = summary.exit_code();
                    }
                    // An argument found unusable against the stores (before anything was
                    // written): the same exit code as one refused up front.
                    Err(admin::AdminError::Config(e)) => {
                        eprintln!("log-processor: {e}");
                        code = 2;
                    }
                    Err(e) => return Err(e.into()),
                }
                Ok(())
            });
            match code {
                0 => done,
                c => ExitCode::from(c),
            }
        }
    }
}

/// The man pages, from the same definitions as `--help`: clap_mangen prints each option's
/// variable by name, never a value from the environment.
fn man(out_dir: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    match out_dir {
        Some(dir) => Ok(clap_mangen::generate_to(Cli::command(), dir)?),
        None => Ok(clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?),
    }
}

/// Runs an operator command: exit 2 on bad settings, 1 on any other error.
fn admin_command(
    settings: &Settings,
    command: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    if let Err(e) = settings.validate() {
        eprintln!("log-processor: {e}");
        return ExitCode::from(2);
    }
    report(runtime().and_then(|rt| rt.block_on(command)))
}

async fn run(settings: Settings) -> anyhow::Result<i32> {
    let signals = Signals::new([SIGTERM, SIGINT]).context("installing signal handlers")?;
    let triggers = signals.map(|s| if s == SIGTERM { "SIGTERM" } else { "SIGINT" });
    Ok(app::run(settings, triggers).await? as i32)
}

fn report(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("log-processor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// One runtime thread per CPU the process may use: tokio's default is
/// `std::thread::available_parallelism`, which honours the cgroup's CPU quota (`cpu.max`), so
/// a pod limited to one CPU runs one thread, not one per core of the node all contending for
/// that CPU's time (`TOKIO_WORKER_THREADS` overrides it). `run` logs the number.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The effective configuration, once at start-up: what `check-config` prints, so a log shows
/// what a run was started with.
fn log_view(view: &View, format: LogFormat) {
    match format {
        LogFormat::Json => tracing::info!(config = %view.to_json_line(), "effective configuration"),
        LogFormat::Human => tracing::info!("effective configuration\n{view}"),
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LP_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: files, journald and log collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().with_current_span(true).init(),
        LogFormat::Human => builder.init(),
    }
}
