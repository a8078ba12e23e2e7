//! The real server, as a child process: the `parley` binary of the profile being built
//! (release under `cargo bench`), a temp data dir, the built-in model at pace 0 and the bench
//! assistants of `benches/assistants/`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};

pub fn assistants_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/assistants")
}

/// The server binary: this build's `parley`, or `LOAD_SERVER_BIN` (to compare two builds).
pub fn binary() -> PathBuf {
    std::env::var_os("LOAD_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_parley")))
}

/// A Parley process.
pub struct Parley {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _dir: Arc<tempfile::TempDir>,
}

/// The PostgreSQL URL when the bench runs with `--backend postgres` (set once, at start).
static POSTGRES: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Makes every server of this run use PostgreSQL at `url` (each in a schema of its own).
pub fn use_postgres(url: String) {
    let _ = POSTGRES.set(url);
}

/// `"postgres"` or `"redb"`: the backend of this run.
pub fn backend_name() -> &'static str {
    if POSTGRES.get().is_some() {
        "postgres"
    } else {
        "redb"
    }
}

/// Config beyond the defaults of [`Home::start`].
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// Lines added to `[storage]` (e.g. retention).
    pub storage: String,
    /// Whole sections added at the end (e.g. another `[llm.x]` provider).
    pub sections: String,
    /// The assistants directory instead of `benches/assistants/`.
    pub assistants: Option<PathBuf>,
}

/// A temp directory holding a server's config and data (and, on PostgreSQL, a fresh schema).
pub struct Home {
    dir: Arc<tempfile::TempDir>,
    schema: String,
}

impl Home {
    pub fn new() -> anyhow::Result<Home> {
        Ok(Home {
            dir: Arc::new(tempfile::tempdir()?),
            schema: format!("bench_{}", uuid::Uuid::now_v7().simple()),
        })
    }

    /// Another home (its own directory) on this home's PostgreSQL schema: the nodes of a
    /// cluster share one database (scenario 12).
    pub fn sharing_schema(&self) -> anyhow::Result<Home> {
        Ok(Home {
            dir: Arc::new(tempfile::tempdir()?),
            schema: self.schema.clone(),
        })
    }

    /// The `[storage]` lines of this home's backend.
    fn storage_lines(&self) -> String {
        match POSTGRES.get() {
            Some(url) => {
                let mut lines = format!(
                    "backend = \"postgres\"\nurl = {url:?}\nschema = {:?}\npool_size = 32\n",
                    self.schema
                );
                // Before/after comparisons of the writer's overlap (docs/postgres.md).
                if let Ok(n) = std::env::var("PARLEY_BENCH_WRITER_CONNECTIONS") {
                    if let Ok(n) = n.parse::<usize>() {
                        lines.push_str(&format!("writer_connections = {n}\n"));
                    }
                }
                lines
            }
            None => String::new(),
        }
    }

    /// Opens this home's store directly, from blocking code (to prepare data before the server
    /// starts).
    pub fn open_store(
        &self,
        rt: &tokio::runtime::Runtime,
    ) -> anyhow::Result<Arc<dyn parley::store::Store>> {
        rt.block_on(self.open_store_async())
    }

    /// Opens this home's store directly, in process (the durable-write scenario).
    pub async fn open_store_async(&self) -> anyhow::Result<Arc<dyn parley::store::Store>> {
        Ok(match POSTGRES.get() {
            Some(url) => {
                let mut options = parley::store::postgres::PgOptions::new(url.clone());
                options.schema = Some(self.schema.clone());
                Arc::new(parley::store::postgres::PgStore::open(&options).await?)
            }
            None => Arc::new(parley::store::redb::RedbStore::open(&self.db_file())?),
        })
    }

    /// On PostgreSQL: the KiB this home's schema takes (tables, indexes, TOAST); `None` on redb.
    pub async fn postgres_kib(&self) -> anyhow::Result<Option<u64>> {
        let Some(url) = POSTGRES.get() else {
            return Ok(None);
        };
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        let task = tokio::spawn(conn);
        let row = client
            .query_one(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relkind IN ('r', 'm')",
                &[&self.schema],
            )
            .await?;
        drop(client);
        let _ = task.await;
        let bytes: i64 = row.get(0);
        Ok(Some(u64::try_from(bytes).unwrap_or(0) / 1024))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The redb file the server will open.
    pub fn db_file(&self) -> PathBuf {
        self.data_dir().join("parley.redb")
    }

    /// This home's directory (for files a scenario writes beside the server's).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Write the config and start the server; waits until it listens.
    pub fn start(&self) -> anyhow::Result<Parley> {
        self.start_with(&Extra::default())
    }

    /// [`Home::start`] with more config (see [`Extra`]).
    pub fn start_with(&self, extra: &Extra) -> anyhow::Result<Parley> {
        let config = self.dir.path().join("config.toml");
        let assistants = extra.assistants.clone().unwrap_or_else(assistants_dir);
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_concurrent_runs = 100000\nmax_concurrent_invokes = 4096\n\n\
             [storage]\ndata_dir = {:?}\n{}{}\n[assistants]\ndir = {:?}\n\n\
             [llm.default]\nprovider = \"builtin\"\npace_ms = 0\n\n{}",
            self.data_dir(),
            self.storage_lines(),
            extra.storage,
            assistants,
            extra.sections
        );
        std::fs::write(&config, text)?;
        // Debug aid: `LOAD_SERVER_WRAPPER="strace -f -o /tmp/x"` runs the server under a tool.
        let wrapper = std::env::var("LOAD_SERVER_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut cmd = match words.next() {
            Some(tool) => {
                let mut c = Command::new(tool);
                c.args(words).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        let mut child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info,actix_server=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", binary().display()))?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        // Debug aid: `LOAD_SERVER_LOG=/path` appends every server log line to that file.
        let mut copy = std::env::var_os("LOAD_SERVER_LOG").and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        });
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = copy.as_mut() {
                    use std::io::Write as _;
                    let _ = writeln!(f, "{line}");
                }
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    if let Some(t) = tx.take() {
                        let _ = t.send(addr);
                    }
                }
                let mut l = log2.lock().unwrap();
                if l.len() < 1000 {
                    l.push(line);
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(anyhow!(
                    "the server did not start: {:?}",
                    log.lock().unwrap()
                ));
            }
        };
        Ok(Parley {
            child,
            addr: addr.parse().with_context(|| format!("address {addr:?}"))?,
            log,
            _dir: self.dir.clone(),
        })
    }
}

impl Parley {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the server process, in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(self.pid())
    }

    /// Lines the server logged at warn or error level.
    pub fn warnings(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .cloned()
            .collect()
    }

    /// If the process has exited: its status and the last lines it logged.
    pub fn exited(&mut self) -> Option<String> {
        let status = self.child.try_wait().ok()??;
        let log = self.log.lock().unwrap();
        let tail: Vec<&String> = log.iter().rev().take(20).rev().collect();
        Some(format!(
            "the server exited ({status}); last log lines: {tail:#?}"
        ))
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) with a pid we own.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(anyhow!("the server exited with {status}"))
                };
            }
            if Instant::now() > until {
                return Err(anyhow!("the server did not stop in 30 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Parley {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// Raise this process's soft open-files limit to the hard one; returns the limit in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return want.rlim_cur;
            }
        }
    }
    lim.rlim_cur
}

/// CPU seconds (user + system) of a process, or of one of its threads.
fn cpu_seconds(stat_path: &str) -> Option<f64> {
    let s = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz.max(1.0))
}

/// CPU used by the server, its store writer thread and this process since `start`.
#[derive(Debug, Clone, Copy)]
pub struct CpuProbe {
    pid: u32,
    at: Instant,
    server: f64,
    writer: f64,
    me: f64,
}

fn writer_seconds(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0.0;
    };
    for t in tasks.flatten() {
        let dir = t.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == "parley-store-wr" {
            return cpu_seconds(&dir.join("stat").to_string_lossy()).unwrap_or(0.0);
        }
    }
    0.0
}

impl CpuProbe {
    pub fn start(server: &Parley) -> CpuProbe {
        let pid = server.pid();
        CpuProbe {
            pid,
            at: Instant::now(),
            server: cpu_seconds(&format!("/proc/{pid}/stat")).unwrap_or(0.0),
            writer: writer_seconds(pid),
            me: cpu_seconds("/proc/self/stat").unwrap_or(0.0),
        }
    }

    /// Cores the server used since `start` (CPU seconds ÷ wall seconds).
    pub fn server_cores(&self) -> f64 {
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        (cpu_seconds(&format!("/proc/{}/stat", self.pid)).unwrap_or(0.0) - self.server) / wall
    }

    /// "server X cores (store writer Y), load generator Z" since `start`.
    pub fn report(&self) -> String {
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        let server = cpu_seconds(&format!("/proc/{}/stat", self.pid)).unwrap_or(0.0) - self.server;
        let writer = writer_seconds(self.pid) - self.writer;
        let me = cpu_seconds("/proc/self/stat").unwrap_or(0.0) - self.me;
        format!(
            "CPU: server {:.2} cores (of which the store writer thread {:.2}), load generator {:.2} cores, of 2",
            server / wall,
            writer / wall,
            me / wall
        )
    }
}
