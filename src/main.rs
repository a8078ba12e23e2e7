//! The `parley` command: `serve` (the default), `validate`, `token new`, `migrate`, `export`,
//! `import`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// jemalloc instead of glibc's allocator: measured in BENCHMARKS.md ("Allocator").
#[cfg(unix)]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
use parley::config::{Config, Overrides};

#[derive(Parser)]
#[command(
    name = "parley",
    version,
    about = "Runs AI assistants as durable processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args, Clone, Default)]
struct ServeArgs {
    /// Config file merged over the embedded defaults.
    #[arg(long, env = "PARLEY_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long, env = "PARLEY_LISTEN", global = true)]
    listen: Option<String>,
    /// Where the redb file lives.
    #[arg(long, env = "PARLEY_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Where the assistant definitions are.
    #[arg(long, env = "PARLEY_ASSISTANTS_DIR", global = true)]
    assistants_dir: Option<PathBuf>,
    /// The storage backend: redb (embedded file) or postgres.
    #[arg(long, env = "PARLEY_STORAGE_BACKEND", global = true)]
    storage_backend: Option<parley::config::StorageBackend>,
    /// The PostgreSQL URL (storage.url).
    #[arg(long, env = "PARLEY_POSTGRES_URL", global = true)]
    postgres_url: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Check assistant definitions; exits non-zero on any error.
    Validate {
        /// The directory (default: the configured assistants dir).
        dir: Option<PathBuf>,
    },
    /// Apply the PostgreSQL schema migrations (also done at every start) and exit.
    Migrate,
    /// Write every conversation, message, event and checkpoint of the store to FILE (JSON lines).
    Export { file: PathBuf },
    /// Read an export FILE into the configured store, which must be empty.
    Import { file: PathBuf },
    /// Manage bearer tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a new token for USER and the config line that accepts it.
    New { user: String },
}

fn load_config(a: &ServeArgs) -> Result<Config, String> {
    let o = Overrides {
        listen: a.listen.clone(),
        data_dir: a.data_dir.clone(),
        assistants_dir: a.assistants_dir.clone(),
        storage_backend: a.storage_backend,
        postgres_url: a.postgres_url.clone(),
    };
    Config::load(a.config.as_deref(), &o).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,actix_server=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.serve),
        Command::Validate { dir } => validate(cli.serve, dir),
        Command::Migrate => store_command(cli.serve, StoreCommand::Migrate),
        Command::Export { file } => store_command(cli.serve, StoreCommand::Export(file)),
        Command::Import { file } => store_command(cli.serve, StoreCommand::Import(file)),
        Command::Token {
            command: TokenCommand::New { user },
        } => {
            let token = parley::gateway::auth::new_token();
            println!("token for {user}: {token}");
            println!(
                "add to config.toml:\n[[auth.tokens]]\nuser = \"{user}\"\nsha256 = \"{}\"",
                parley::gateway::auth::hash_token(&token)
            );
            ExitCode::SUCCESS
        }
    }
}

fn validate(args: ServeArgs, dir: Option<PathBuf>) -> ExitCode {
    let mut config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(d) = dir {
        config.assistants.dir = d;
    }
    match parley::server::load_catalog(&config) {
        Ok(catalog) => {
            for a in catalog.iter() {
                let kind = if a.automated {
                    "automated"
                } else {
                    "interactive"
                };
                println!("ok  {} ({kind}, {} nodes)", a.id, a.nodes.len());
            }
            println!(
                "{} assistant(s) valid in {}",
                catalog.len(),
                config.assistants.dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises this process's soft limit on open files to its hard limit.
///
/// Every WebSocket is one file descriptor, and the usual soft limit (often 1024) would refuse
/// connections long before memory runs out; the hard limit is what the administrator allows.
/// Failing to raise it is not fatal: the server starts with the limit it has and says so.
#[cfg(unix)]
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        if lim.rlim_cur >= lim.rlim_max {
            return;
        }
        let old = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
            tracing::debug!("open files limit raised from {old} to {}", lim.rlim_max);
        } else {
            tracing::warn!("could not raise the open files limit above {old}");
        }
    }
}

#[cfg(not(unix))]
fn raise_open_files_limit() {}

fn serve(args: ServeArgs) -> ExitCode {
    raise_open_files_limit();
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = actix_web::rt::System::new().block_on(async move {
        if config.auth.mode == parley::config::AuthMode::None {
            tracing::info!("auth.mode = \"none\": every caller is the user 'local'; listening on loopback only");
        }
        let services = parley::server::build(config).await?;
        if services.builtin_model() {
            tracing::info!("the default LLM is the built-in offline model");
        }
        let running = parley::server::start(services.clone())?;
        tracing::info!("Parley listening on http://{} (demo page at /)", running.addr);
        let server = running.server;
        server.await?;
        let _ = services.store.flush().await;
        parley::server::leave_cluster(&services).await;
        tracing::info!("stopped cleanly");
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum StoreCommand {
    Migrate,
    Export(PathBuf),
    Import(PathBuf),
}

/// `migrate`, `export FILE`, `import FILE`: one store operation, then exit.
fn store_command(args: ServeArgs, command: StoreCommand) -> ExitCode {
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        use anyhow::Context as _;
        match command {
            StoreCommand::Migrate => {
                let options = parley::server::postgres_options(&config)?;
                let applied = parley::store::postgres::migrate(&options).await?;
                println!(
                    "schema at version {} ({applied} migration(s) applied)",
                    parley::store::postgres::schema::SCHEMA_VERSION
                );
            }
            StoreCommand::Export(file) => {
                let out = std::fs::File::create(&file)
                    .with_context(|| format!("creating {}", file.display()))?;
                let mut out = std::io::BufWriter::new(out);
                let counts = if config.storage.backend == parley::config::StorageBackend::Postgres {
                    // One read-only transaction: a consistent snapshot beside serving nodes.
                    let options = parley::server::postgres_options(&config)?;
                    let snapshot = parley::store::postgres::PgSnapshot::begin(&options).await?;
                    parley::store::transfer::export_from(&snapshot, &mut out).await?
                } else {
                    let store = parley::server::open_store(&config).await?;
                    let counts = parley::store::transfer::export(store.as_ref(), &mut out).await?;
                    store.shutdown();
                    counts
                };
                println!("exported {counts:?} to {}", file.display());
            }
            StoreCommand::Import(file) => {
                let store = parley::server::open_store(&config).await?;
                let input = std::fs::File::open(&file)
                    .with_context(|| format!("opening {}", file.display()))?;
                let mut input = std::io::BufReader::new(input);
                let counts = parley::store::transfer::import(store.as_ref(), &mut input).await?;
                store.shutdown();
                println!("imported {counts:?} from {}", file.display());
            }
        }
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
