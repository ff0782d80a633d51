//! The `redloom` command line.
//!
//! Every failure is printed as one `error:` line plus, where useful, a
//! `hint:` line, and mapped to a documented exit code ([`exit`]).

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{self, Config};
use crate::engine::{Runtime, RuntimeOptions};
use crate::handler::HandlerKind;
use crate::host::{Host, HostInvokeError, HostOptions, StartupError};
use crate::logging::LogFormat;
use crate::namespace::PluginName;
use crate::plugin::{InvokeError, LoadError, Plugin, PluginSpec};
use crate::redis::RedisTarget;
use crate::serve::{ServeError, Server};
use std::sync::Arc;

/// Exit codes, as documented in the README.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// The plugin returned an error, trapped or broke a quota.
    pub const PLUGIN_FAILED: u8 = 1;
    /// Bad command line or configuration file.
    pub const USAGE: u8 = 2;
    /// A plugin could not be loaded (not a component, missing handler, ...).
    pub const LOAD: u8 = 3;
    /// Redis could not be reached or started.
    pub const REDIS: u8 = 4;
    /// Anything else (I/O errors, runtime set-up).
    pub const OTHER: u8 = 5;
}

/// Run sandboxed WebAssembly plugins that compose Redis-backed patterns.
#[derive(Debug, Parser)]
#[command(name = "redloom", version)]
pub struct Cli {
    /// Configuration file [default: ./redloom.toml if it exists].
    #[arg(
        long,
        short,
        global = true,
        env = "REDLOOM_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,

    /// Redis to use (redis://, rediss:// or unix://). Without one, redloom
    /// starts a private redis-server with its data in the data folder.
    #[arg(long, global = true, env = "REDIS_URL", value_name = "URL")]
    redis_url: Option<String>,

    /// Seed nodes of a Redis Cluster, comma-separated (redis:// or
    /// rediss:// URLs); instead of --redis-url.
    #[arg(
        long,
        global = true,
        env = "REDIS_CLUSTER",
        value_name = "URL,URL",
        value_delimiter = ','
    )]
    redis_cluster: Vec<String>,

    /// PEM file of the CA that signed a rediss:// server's certificate, when
    /// it is not a public CA ([redis] tls-ca-file).
    #[arg(long, global = true, env = "REDIS_TLS_CA_FILE", value_name = "FILE")]
    redis_tls_ca_file: Option<PathBuf>,

    /// PEM client certificate for a server that requires mutual TLS, with
    /// --redis-tls-key-file ([redis] tls-cert-file).
    #[arg(
        long,
        global = true,
        env = "REDIS_TLS_CERT_FILE",
        value_name = "FILE",
        requires = "redis_tls_key_file"
    )]
    redis_tls_cert_file: Option<PathBuf>,

    /// PEM private key of --redis-tls-cert-file ([redis] tls-key-file).
    #[arg(
        long,
        global = true,
        env = "REDIS_TLS_KEY_FILE",
        value_name = "FILE",
        requires = "redis_tls_cert_file"
    )]
    redis_tls_key_file: Option<PathBuf>,

    /// Folder for the private Redis's data and the compiled-plugin cache
    /// [default: .redloom next to the configuration file].
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Do not read or write the compiled-plugin cache.
    #[arg(long, global = true)]
    no_cache: bool,

    /// Log more (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    /// How `plugin list`, `queue stats` and `queue dead-letters` print:
    /// `table` for people, `json` for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,

    /// How log records are written on standard error: `text` (one line
    /// for people) or `json` (one JSON object per line, for collectors).
    #[arg(long, global = true, value_name = "FORMAT", default_value = "text",
          value_parser = LogFormat::parse)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

/// Which handler `invoke` calls: `invoke` unless one of these is given.
/// The input (`--input`, `--input-file`) is the request body, the message
/// or the job's payload.
#[derive(Debug, Default, clap::Args)]
struct HandlerArgs {
    /// Call the HTTP handler with a request `METHOD PATH` (`'POST
    /// /orders?x=1'`); prints the status and headers on stderr, the body
    /// on stdout.
    #[arg(long, value_name = "METHOD PATH", conflicts_with_all = ["message", "job", "tick"])]
    http: Option<String>,
    /// A header of the request (`--http`) or job (`--job`), `NAME:VALUE`
    /// (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME:VALUE")]
    headers: Vec<String>,
    /// A route parameter of the request, `NAME=VALUE` (repeatable); those of
    /// the configuration's matching `[[routes]]` entry are filled in.
    #[arg(long = "param", value_name = "NAME=VALUE", requires = "http")]
    params: Vec<String>,
    /// Call the message handler with a message on CHANNEL.
    #[arg(long, value_name = "CHANNEL", conflicts_with_all = ["job", "tick"])]
    message: Option<String>,
    /// Call the queue handler with a job of QUEUE (its id made up).
    #[arg(long, value_name = "QUEUE", conflicts_with = "tick")]
    job: Option<String>,
    /// The job's attempt number.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "job")]
    attempt: u32,
    /// Call the timer handler with a tick of TIMER, scheduled now.
    #[arg(long, value_name = "TIMER")]
    tick: Option<String>,
}

/// What `invoke` sends, owning its input.
#[derive(Debug)]
enum CliCall {
    Invoke(Vec<u8>),
    Http(crate::bindings::http_types::Request),
    Message(crate::plugin::Message),
    Job(crate::plugin::Job),
    Tick(crate::plugin::Tick),
}

impl CliCall {
    fn as_call(&self) -> crate::plugin::Call<'_> {
        use crate::plugin::Call;
        match self {
            CliCall::Invoke(i) => Call::Invoke(i),
            CliCall::Http(r) => Call::Http(r),
            CliCall::Message(m) => Call::Message(m),
            CliCall::Job(j) => Call::Job(j),
            CliCall::Tick(t) => Call::Tick(t),
        }
    }
}

/// `NAME:VALUE` or `NAME=VALUE` pairs from the command line.
fn pairs(flag: &str, sep: char, items: &[String]) -> Result<Vec<(String, String)>, Failure> {
    items
        .iter()
        .map(|item| {
            item.split_once(sep)
                .map(|(k, v)| (k.trim().to_string(), v.trim_start().to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| {
                    let form = if sep == ':' {
                        "NAME:VALUE"
                    } else {
                        "NAME=VALUE"
                    };
                    Failure::new(exit::USAGE, format!("{flag} `{item}`: expected {form}"))
                })
        })
        .collect()
}

impl HandlerArgs {
    /// The call these flags ask for, carrying `input`; `plugin` and the
    /// configuration's routes fill in an HTTP request's route parameters.
    fn call(
        self,
        config: &Config,
        plugin: &PluginName,
        input: Vec<u8>,
    ) -> Result<CliCall, Failure> {
        if !self.headers.is_empty() && self.http.is_none() && self.job.is_none() {
            return Err(Failure::new(
                exit::USAGE,
                "--header is for --http requests and --job messages",
            ));
        }
        let headers = pairs("--header", ':', &self.headers)?;
        if let Some(request) = self.http {
            let (method, target) = request
                .trim()
                .split_once(' ')
                .map(|(m, t)| (m.trim().to_ascii_uppercase(), t.trim().to_string()))
                .filter(|(m, t)| !m.is_empty() && t.starts_with('/'))
                .ok_or_else(|| {
                    Failure::new(
                        exit::USAGE,
                        format!("--http `{request}`: expected METHOD PATH, e.g. 'GET /users/7'"),
                    )
                })?;
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p.to_string(), crate::serve::form_urlencoded(q)),
                None => (target, Vec::new()),
            };
            let mut params = match crate::serve::RouteTable::new(&config.routes)
                .map(|t| t.lookup(&method, &path))
            {
                Ok(crate::serve::Match::Found { plugin: p, params }) if &p == plugin => params,
                _ => Vec::new(),
            };
            for (k, v) in pairs("--param", '=', &self.params)? {
                match params.iter_mut().find(|(name, _)| *name == k) {
                    Some(p) => p.1 = v,
                    None => params.push((k, v)),
                }
            }
            return Ok(CliCall::Http(crate::bindings::http_types::Request {
                method,
                path,
                params,
                query,
                headers: headers
                    .into_iter()
                    .map(|(k, v)| (k.to_ascii_lowercase(), v))
                    .collect(),
                body: input,
                client_addr: "127.0.0.1:0".to_string(),
            }));
        }
        if let Some(channel) = self.message {
            return Ok(CliCall::Message(crate::plugin::Message {
                channel,
                pattern: None,
                payload: input,
            }));
        }
        if let Some(queue) = self.job {
            let now = crate::units::unix_ms();
            return Ok(CliCall::Job(crate::plugin::Job {
                queue,
                id: format!("{now}-0"),
                payload: input,
                headers,
                attempt: self.attempt,
                enqueued_ms: now,
            }));
        }
        if let Some(timer) = self.tick {
            return Ok(CliCall::Tick(crate::plugin::Tick {
                timer,
                scheduled_ms: crate::units::unix_ms(),
            }));
        }
        Ok(CliCall::Invoke(input))
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one invocation of a plugin and print its output.
    Invoke {
        /// A plugin name from the configuration file, or a path to a .wasm component.
        plugin: String,
        /// The input, as text.
        #[arg(long, short, conflicts_with = "input_file")]
        input: Option<String>,
        /// Read the input from a file (`-` for standard input).
        #[arg(long, value_name = "FILE")]
        input_file: Option<PathBuf>,
        /// A setting for a plugin given by path (repeatable).
        #[arg(long = "setting", value_name = "KEY=VALUE")]
        settings: Vec<String>,
        /// Print the plugin's counters for this run on stderr.
        #[arg(long)]
        stats: bool,
        #[command(flatten)]
        handler: HandlerArgs,
    },
    /// Check that a file is a plugin this host can run, and show what it
    /// exports and imports. Needs no Redis.
    Check {
        /// Path to the .wasm component.
        wasm: PathBuf,
    },
    /// Load every configured plugin, serve the HTTP routes and the admin API,
    /// and run until Ctrl-C or SIGTERM.
    Serve {
        /// Listen for HTTP requests here [default: [http] listen, 127.0.0.1:8080].
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// Listen for the admin API here [default: [admin] listen, 127.0.0.1:9090].
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<std::net::SocketAddr>,
    },
    /// Inspect and repair work queues: stats, dead letters, replay.
    Queue {
        #[command(subcommand)]
        action: QueueAction,
    },
    /// Manage the plugins of a running `redloom serve` through its admin API.
    Plugin {
        /// The admin API [default: http://<[admin] listen>].
        #[arg(long, global = true, env = "REDLOOM_ADMIN_URL", value_name = "URL")]
        admin: Option<String>,
        /// Bearer token for the admin API.
        #[arg(
            long,
            global = true,
            env = "REDLOOM_ADMIN_TOKEN",
            value_name = "TOKEN",
            hide_env_values = true
        )]
        token: Option<String>,
        #[command(subcommand)]
        action: PluginAction,
    },
    /// Create a plugin project: the WIT, the plugin, a build script, a test
    /// that runs it in redloom, and its redloom.toml. Needs no Redis.
    New {
        /// The plugin's name (a-z, 0-9, '-', '_'; starting with a letter).
        name: String,
        /// The plugin's language.
        #[arg(long, value_enum)]
        lang: crate::scaffold::Lang,
        /// Where to create it [default: ./NAME]; must not exist or be empty.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// For Rust: the redloom-sdk folder to depend on [default: the
        /// guest-sdk of the checkout this redloom was built from].
        #[arg(long, value_name = "PATH")]
        sdk: Option<PathBuf>,
    },
    /// Print a shell completion script: `redloom completions bash >
    /// /etc/bash_completion.d/redloom` (zsh: into a folder of `$fpath` as
    /// `_redloom`; fish: `~/.config/fish/completions/redloom.fish`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// How table commands print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Json,
}

/// A table with columns as wide as their widest cell, two spaces apart, no
/// borders (`plugin list`, `queue dead-letters`).
fn table(header: &[&str]) -> comfy_table::Table {
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING)
        .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
        .set_header(header.to_vec());
    for c in t.column_iter_mut() {
        c.set_padding((0, 2));
    }
    t
}

/// `table` as text: one line per row, trailing spaces trimmed.
fn table_text(t: &comfy_table::Table) -> String {
    t.lines().map(|l| l.trim_end().to_string() + "\n").collect()
}

/// Which queue a `redloom queue` command works on.
#[derive(Debug, clap::Args)]
struct QueueArgs {
    /// The queue, as the plugin names it.
    queue: String,
    /// The plugin whose queue it is (its namespace).
    #[arg(long)]
    plugin: String,
    /// The queue is shared between plugins (`shared-queues`).
    #[arg(long)]
    shared: bool,
    /// The consumer group [default: workers].
    #[arg(long, default_value = "workers")]
    group: String,
}

#[derive(Debug, Subcommand)]
enum QueueAction {
    /// Length, pending, consumers, lag, oldest pending age, scheduled retries, dead letters.
    Stats(QueueArgs),
    /// List the dead letters with their errors.
    DeadLetters {
        #[command(flatten)]
        queue: QueueArgs,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Move dead letters back into the queue, attempts reset.
    Replay {
        #[command(flatten)]
        queue: QueueArgs,
        /// One dead letter (its stream entry id, as `dead-letters` shows).
        #[arg(long, conflicts_with = "all")]
        id: Option<String>,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
    /// Delete every dead letter of the queue.
    PurgeDeadLetters(QueueArgs),
}

#[derive(Debug, Subcommand)]
enum PluginAction {
    /// List loaded plugins with their handlers and counters.
    List,
    /// Load a plugin (from the server's configuration, or from --wasm).
    Load {
        name: String,
        #[arg(long, value_name = "FILE")]
        wasm: Option<PathBuf>,
    },
    /// Stop routing to a plugin; running calls finish.
    Unload { name: String },
    /// Load a plugin again (optionally from a new file) and swap it in
    /// without failing any request.
    Reload {
        name: String,
        #[arg(long, value_name = "FILE")]
        wasm: Option<PathBuf>,
    },
    /// Push a component to an OCI registry as a Wasm artifact
    /// (`oci://REGISTRY/REPOSITORY:TAG`); prints its digest. Needs no server.
    Push {
        file: PathBuf,
        #[arg(value_name = "REF")]
        reference: String,
    },
}

/// A failure on its way to the terminal.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
    pub hint: Option<String>,
}

impl Failure {
    fn new(code: u8, message: impl ToString) -> Failure {
        Failure {
            code,
            message: message.to_string(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl ToString) -> Failure {
        self.hint = Some(hint.to_string());
        self
    }
}

impl From<StartupError> for Failure {
    fn from(e: StartupError) -> Failure {
        match e {
            StartupError::Runtime(_) => Failure::new(exit::OTHER, e),
            StartupError::Tls(_) => Failure::new(exit::USAGE, e),
            _ => Failure::new(exit::REDIS, e),
        }
    }
}

impl From<LoadError> for Failure {
    fn from(e: LoadError) -> Failure {
        let quota = matches!(
            &e,
            LoadError::Start {
                source: InvokeError::Quota { .. },
                ..
            }
        );
        let f = Failure::new(exit::LOAD, e);
        if quota { f.hint(QUOTA_HINT) } else { f }
    }
}

/// What to do when a plugin breaks a quota, starting or running.
const QUOTA_HINT: &str = "raise the quota under [plugins.NAME.quotas] in redloom.toml";

/// Parses the command line, runs the command, and returns the exit code.
pub fn main() -> u8 {
    let cli = Cli::parse();
    let fail = |f: Failure| {
        eprintln!("error: {}", f.message);
        if let Some(h) = f.hint {
            eprintln!("hint: {h}");
        }
        f.code
    };
    let config = match load_config(cli.config.as_deref()) {
        Ok(c) => c,
        Err(f) => return fail(f),
    };
    // Before the async runtime: the trace exporter's blocking HTTP client
    // must not be created or dropped on it.
    let telemetry = init_logging(
        cli.verbose,
        cli.log_format,
        matches!(cli.command, Command::Serve { .. }),
        &config.telemetry,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::OTHER;
        }
    };
    let code = match runtime.block_on(run(cli, config)) {
        Ok(()) => exit::OK,
        Err(f) => fail(f),
    };
    drop(runtime);
    drop(telemetry);
    code
}

fn init_logging(
    verbose: u8,
    format: LogFormat,
    serving: bool,
    telemetry: &config::TelemetrySection,
) -> crate::logging::TelemetryGuard {
    let default = match (verbose, serving) {
        (0, false) => "warn",
        (0, true) => "info",
        (1, _) => "debug",
        _ => "trace",
    };
    let telemetry = crate::logging::Telemetry {
        endpoint: telemetry.otlp_endpoint.clone(),
        service_name: telemetry.service_name.clone(),
    };
    crate::logging::init(format, default, &telemetry)
}

async fn run(cli: Cli, config: Config) -> Result<(), Failure> {
    let mut options = HostOptions::from_config(&config);
    if let Some(url) = &cli.redis_url {
        config::check_redis_url(url)
            .map_err(|m| Failure::new(exit::USAGE, format!("--redis-url: {m}")))?;
        options.redis_target = Some(RedisTarget::Single(url.clone()));
    }
    if !cli.redis_cluster.is_empty() {
        if cli.redis_url.is_some() {
            return Err(Failure::new(
                exit::USAGE,
                "--redis-cluster: give either --redis-url or --redis-cluster, not both",
            ));
        }
        config::check_cluster_seeds(&cli.redis_cluster)
            .map_err(|m| Failure::new(exit::USAGE, format!("--redis-cluster: {m}")))?;
        options.redis_target = Some(RedisTarget::Cluster(cli.redis_cluster.clone()));
    }
    if let Some(ca) = &cli.redis_tls_ca_file {
        options.redis.tls_ca_file = Some(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&cli.redis_tls_cert_file, &cli.redis_tls_key_file) {
        options.redis.tls_cert_file = Some(cert.clone());
        options.redis.tls_key_file = Some(key.clone());
    }
    if let Some(dir) = &cli.data_dir {
        options.data_dir = dir.clone();
        if config.source.is_none() {
            options.oci_lock = dir.join(crate::oci::LOCK_FILE);
        }
    }
    options.compile_cache = !cli.no_cache;

    match cli.command {
        Command::Check { wasm } => check(&wasm, &options).await,
        Command::Invoke {
            plugin,
            input,
            input_file,
            settings,
            stats,
            handler,
        } => {
            let spec = plugin_spec(&config, &plugin, &settings)?;
            let input = read_input(input, input_file, spec.quotas.max_input)?;
            let call = handler.call(&config, &spec.name, input)?;
            invoke(options, spec, call, stats).await
        }
        Command::Serve {
            listen,
            admin_listen,
        } => {
            let mut config = config;
            if let Some(a) = listen {
                config.http.listen = a;
            }
            if let Some(a) = admin_listen {
                config.admin.listen = a;
            }
            serve(options, config).await
        }
        Command::Queue { action } => queue_command(options, action, cli.output).await,
        Command::Completions { shell } => {
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "redloom", &mut text);
            emit(&String::from_utf8_lossy(&text))
        }
        Command::Plugin {
            admin,
            token,
            action,
        } => {
            let admin = admin.unwrap_or_else(|| format!("http://{}", config.admin.listen));
            // The token: --token / REDLOOM_ADMIN_TOKEN, the configuration's,
            // or the one a local `serve` generated in the data folder.
            let token = token
                .or_else(|| crate::serve::admin_token_from(&config))
                .or_else(|| {
                    crate::files::read_secret(&options.data_dir.join(config::ADMIN_TOKEN_FILE))
                });
            plugin_admin(&admin, token, action, cli.output).await
        }
        Command::New {
            name,
            lang,
            dir,
            sdk,
        } => match crate::scaffold::run(&name, lang, dir, sdk) {
            Ok(summary) => {
                print!("{summary}");
                Ok(())
            }
            Err(e) => Err(Failure {
                code: match e {
                    crate::scaffold::ScaffoldError::Io { .. } => exit::OTHER,
                    _ => exit::USAGE,
                },
                message: e.to_string(),
                hint: e.hint(),
            }),
        },
    }
}

fn load_config(path: Option<&Path>) -> Result<Config, Failure> {
    match path {
        Some(p) => Config::load(p).map_err(|e| Failure::new(exit::USAGE, e)),
        None => {
            let default = Path::new(config::DEFAULT_FILE);
            if default.exists() {
                Config::load(default).map_err(|e| Failure::new(exit::USAGE, e))
            } else {
                Ok(Config {
                    data_dir: PathBuf::from(".redloom"),
                    ..Config::default()
                })
            }
        }
    }
}

/// A plugin named in the configuration, or a `.wasm` path.
fn plugin_spec(config: &Config, plugin: &str, settings: &[String]) -> Result<PluginSpec, Failure> {
    let configured = PluginName::parse(plugin).ok().and_then(|name| {
        config
            .plugins
            .get(&name)
            .map(|c| PluginSpec::from_config(name, c))
    });
    let mut spec = match configured {
        Some(spec) => spec,
        None if crate::oci::is_reference(plugin) => {
            let reference = crate::oci::parse(plugin).map_err(|e| Failure::new(exit::USAGE, e))?;
            let mut spec = PluginSpec::from_path(Path::new(plugin));
            // Named after the repository's last segment (`…/team/probe:v1`: probe).
            let last = reference
                .repository()
                .rsplit('/')
                .next()
                .unwrap_or("plugin");
            spec.name = PluginName::from_file_stem(last);
            spec
        }
        None if Path::new(plugin).exists() || plugin.ends_with(".wasm") => {
            PluginSpec::from_path(Path::new(plugin))
        }
        None => {
            let known: Vec<String> = config.plugins.keys().map(|k| k.to_string()).collect();
            let hint = if known.is_empty() {
                "pass a path to a .wasm file, or configure plugins in redloom.toml".to_string()
            } else {
                format!("configured plugins: {}", known.join(", "))
            };
            return Err(Failure::new(
                exit::USAGE,
                format!("`{plugin}` is neither a configured plugin nor a .wasm file"),
            )
            .hint(hint));
        }
    };
    for s in settings {
        let (k, v) = s.split_once('=').ok_or_else(|| {
            Failure::new(exit::USAGE, format!("--setting `{s}`: expected KEY=VALUE"))
        })?;
        spec.settings.insert(k.to_string(), v.to_string());
    }
    Ok(spec)
}

/// The invocation's input: `--input`, or `--input-file` (`-` for stdin),
/// read only up to the plugin's `max-input` (a larger input would be
/// refused anyway; `/dev/zero` must not fill memory first).
fn read_input(input: Option<String>, file: Option<PathBuf>, max: u64) -> Result<Vec<u8>, Failure> {
    let too_large = |what: &str| {
        Failure::new(
            exit::USAGE,
            format!("{what} is larger than the plugin's max-input ({max} bytes)"),
        )
        .hint("raise max-input under [plugins.NAME.quotas] in redloom.toml")
    };
    match (input, file) {
        (Some(text), _) => Ok(text.into_bytes()),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::stdin()
                .take(max.saturating_add(1))
                .read_to_end(&mut buf)
                .map_err(|e| Failure::new(exit::OTHER, format!("reading standard input: {e}")))?;
            if buf.len() as u64 > max {
                return Err(too_large("standard input"));
            }
            Ok(buf)
        }
        (None, Some(path)) => match crate::files::read_bounded(&path, max) {
            Ok(bytes) => Ok(bytes),
            Err(crate::files::ReadError::TooLarge { .. }) => {
                Err(too_large(&format!("--input-file {}", path.display())))
            }
            Err(e) => Err(Failure::new(
                exit::USAGE,
                format!("--input-file {}: {e}", path.display()),
            )),
        },
        (None, None) => Ok(Vec::new()),
    }
}

async fn invoke(
    options: HostOptions,
    spec: PluginSpec,
    call: CliCall,
    stats: bool,
) -> Result<(), Failure> {
    let host = Host::start(options).await?;
    let result = async {
        let plugin = host.load(spec).await?;
        let result = host.call(plugin.name(), call.as_call()).await;
        if stats {
            print_stats(&plugin.stats());
        }
        result.map_err(|e| match e {
            HostInvokeError::Invoke(InvokeError::Quota { .. }) => {
                Failure::new(exit::PLUGIN_FAILED, &e).hint(QUOTA_HINT)
            }
            // Nothing ran: the component cannot serve this handler (a load
            // problem, as the README's exit codes say).
            HostInvokeError::Invoke(InvokeError::NoHandler { handler, .. }) => {
                Failure::new(exit::LOAD, &e).hint(format!(
                    "with redloom-sdk: `redloom_sdk::export!(YourPlugin => [{}]);`",
                    handler.name()
                ))
            }
            _ => Failure::new(exit::PLUGIN_FAILED, &e),
        })
    }
    .await;
    host.shutdown().await;
    let output = match result? {
        crate::plugin::Reply::Invoke(output) => output,
        crate::plugin::Reply::Http(response) => {
            eprintln!("HTTP {}", response.status);
            for (name, value) in &response.headers {
                eprintln!(
                    "{}: {}",
                    crate::caps::log::escape_controls(name),
                    crate::caps::log::escape_controls(value)
                );
            }
            response.body
        }
        crate::plugin::Reply::Done => return Ok(()),
    };
    let mut out = std::io::stdout().lock();
    let written = out.write_all(&output).and_then(|()| {
        if out.is_terminal() && !output.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
        out.flush()
    });
    written.map_err(|e| Failure::new(exit::OTHER, format!("writing the output: {e}")))
}

/// The counters of one plugin, one per line, as `name value`.
fn print_stats(s: &crate::stats::Snapshot) {
    eprintln!("invocations {}", s.invocations);
    for (kind, n) in &s.errors {
        eprintln!("errors{{kind=\"{kind}\"}} {n}");
    }
    for (quota, n) in &s.quota_rejections {
        eprintln!("quota_rejections{{quota=\"{quota}\"}} {n}");
    }
    eprintln!("guest_cpu_seconds {:.6}", s.guest_cpu.as_secs_f64());
    let wall: std::time::Duration = s.wall_time.iter().map(|(_, w)| w.sum).sum();
    eprintln!("wall_time_seconds {:.6}", wall.as_secs_f64());
    eprintln!("redis_commands {}", s.redis_commands);
    eprintln!("log_dropped {}", s.dropped_log);
    let n = &s.near_cache;
    eprintln!("near_cache_hits {}", n.hits);
    eprintln!("near_cache_misses {}", n.misses);
    eprintln!("near_cache_invalidations {}", n.invalidations);
    eprintln!("near_cache_evictions {}", n.evictions);
    eprintln!("near_cache_tracking_lost {}", n.tracking_lost);
    eprintln!("near_cache_bytes {}", n.bytes);
}

/// `writeln!` into a `String` report, which cannot fail.
macro_rules! outln {
    ($text:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($text, $($arg)*);
    }};
}

async fn check(wasm: &Path, options: &HostOptions) -> Result<(), Failure> {
    let mut runtime_options = RuntimeOptions {
        max_instances: 4,
        ..options.runtime.clone()
    };
    if options.compile_cache {
        runtime_options.cache_dir = Some(options.data_dir.join("cache"));
    }
    let runtime =
        Runtime::new(runtime_options).map_err(|e| Failure::new(exit::OTHER, format!("{e:#}")))?;
    let mut spec = PluginSpec::from_path(wasm);
    if let Some(reference) = wasm.to_str().filter(|w| crate::oci::is_reference(w)) {
        spec.wasm = crate::oci::fetch(reference, &options.data_dir, &options.oci_lock)
            .await
            .map_err(|e| Failure::new(exit::LOAD, e))?;
    }
    let plugin = Plugin::load(&runtime, spec)?;
    plugin
        .probe(None)
        .await
        .map_err(|source| LoadError::Start {
            path: wasm.to_path_buf(),
            source,
        })?;
    let r = plugin.report();
    let handlers = plugin.handlers().kinds();
    let names: Vec<&str> = handlers.iter().map(|h| h.name()).collect();
    let capabilities: Vec<&str> = r
        .imports
        .iter()
        .filter_map(|i| i.strip_prefix("redloom:plugin/"))
        .map(|i| i.split('@').next().unwrap_or(i))
        // `types` only carries shared type definitions.
        .filter(|i| *i != "types")
        .collect();
    let mut text = String::new();
    outln!(text, "{}: ok", wasm.display());
    outln!(
        text,
        "  size:         {}",
        bytesize::ByteSize(r.size as u64)
    );
    outln!(text, "  world:        {}", world_of(&handlers));
    outln!(text, "  handlers:     {}", list_or_none(&names));
    outln!(text, "  capabilities: {}", list_or_none(&capabilities));
    outln!(text, "  exports:      {}", list_or_none(&r.exports));
    outln!(text, "  imports:      {}", list_or_none(&r.imports));
    outln!(
        text,
        "  compiled:     {:?} in {} ms",
        r.cache,
        r.compile_time.as_millis()
    );
    emit(&text)
}

/// The world in `wit/worlds.wit` that exports exactly these handlers; a
/// component that exports several handlers was built from a world of its own
/// (the SDK's `export!` makes one), so it is named by the worlds it combines.
fn world_of(handlers: &[HandlerKind]) -> String {
    let worlds: Vec<String> = handlers.iter().map(|h| h.world()).collect();
    match worlds.as_slice() {
        [] => "none (no handler export)".into(),
        [one] => one.clone(),
        several => format!("a combination of {}", several.join(" + ")),
    }
}

/// Writes a command's report to stdout. A reader that went away (`| head`)
/// is not an error: what it wanted has been written.
fn emit(text: &str) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Failure::new(
            exit::OTHER,
            format!("writing the output: {e}"),
        )),
        _ => Ok(()),
    }
}

fn list_or_none<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items
            .iter()
            .map(|s| s.as_ref())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

async fn serve(options: HostOptions, config: Config) -> Result<(), Failure> {
    let host = Arc::new(Host::start(options).await?);
    let server = match Server::bind(host.clone(), config).await {
        Ok(s) => s,
        Err(e) => {
            host.shutdown().await;
            let code = match e {
                ServeError::Load(_) => exit::LOAD,
                ServeError::Routes(_) => exit::USAGE,
                ServeError::Bind { .. }
                | ServeError::Triggers(_)
                | ServeError::AdminToken(_)
                | ServeError::OpenFiles(_) => exit::OTHER,
            };
            return Err(Failure::new(code, e));
        }
    };
    let names: Vec<String> = host.plugin_names().iter().map(|n| n.to_string()).collect();
    if names.is_empty() {
        tracing::warn!("no plugins configured; add [plugins.NAME] tables to redloom.toml");
    }
    tracing::info!(
        http = %server.http_addr(),
        admin = %server.admin_addr(),
        redis = %host.redis().url(),
        plugins = %names.join(","),
        "serving; Ctrl-C to stop"
    );
    server.run(shutdown_signal()).await;
    host.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// `redloom plugin ...`: one admin API request, its answer on stdout.
async fn plugin_admin(
    admin: &str,
    token: Option<String>,
    action: PluginAction,
    output: Output,
) -> Result<(), Failure> {
    let client = reqwest::Client::new();
    if let PluginAction::Push { file, reference } = &action {
        let digest = crate::oci::push(file, reference).await.map_err(|e| {
            let code = match e {
                crate::oci::OciError::Reference(..) => exit::USAGE,
                crate::oci::OciError::File { .. } => exit::LOAD,
                _ => exit::OTHER,
            };
            Failure::new(code, e)
        })?;
        println!("{reference}@{digest}");
        return Ok(());
    }
    let base = admin.trim_end_matches('/');
    let request = match &action {
        PluginAction::List => client.get(format!("{base}/plugins")),
        PluginAction::Load { name, wasm } => client
            .post(format!("{base}/plugins"))
            .json(&serde_json::json!({ "name": name, "wasm": absolute(wasm.as_deref()) })),
        PluginAction::Unload { name } => client.delete(format!("{base}/plugins/{name}")),
        PluginAction::Reload { name, wasm } => client
            .post(format!("{base}/plugins/{name}/reload"))
            .json(&serde_json::json!({ "wasm": absolute(wasm.as_deref()) })),
        PluginAction::Push { .. } => unreachable!("pushed above, without the admin API"),
    };
    let request = match token {
        Some(t) => request.bearer_auth(t),
        None => request,
    };
    let response = request
        .timeout(std::time::Duration::from_secs(120))
        .send()
        .await
        .map_err(|e| {
            Failure::new(
                exit::OTHER,
                format!("cannot reach the admin API at {base}: {e}"),
            )
            .hint("is `redloom serve` running? pass --admin URL or set REDLOOM_ADMIN_URL")
        })?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| Failure::new(exit::OTHER, format!("unexpected answer from {base}: {e}")))?;
    if !status.is_success() {
        let message = body["error"]
            .as_str()
            .unwrap_or("request failed")
            .to_string();
        let code = if status.as_u16() == 422 {
            exit::LOAD
        } else {
            exit::OTHER
        };
        return Err(Failure::new(code, format!("{message} ({status})")));
    }
    match action {
        PluginAction::List if output == Output::Json => {
            let text = serde_json::to_string_pretty(&body).expect("JSON");
            emit(&(text + "\n"))?;
        }
        PluginAction::List => {
            let plugins = body.as_array().cloned().unwrap_or_default();
            let mut t = table(&["NAME", "STATE", "HANDLERS", "INVOCATIONS", "ERRORS", "WASM"]);
            // An unloaded plugin has no handlers or counters: "-".
            let count = |v: Option<u64>| v.map_or("-".to_string(), |n| n.to_string());
            for p in plugins {
                let errors = p["errors"]
                    .as_object()
                    .map(|o| o.values().filter_map(|v| v.as_u64()).sum());
                let handlers = p["handlers"].as_array().map_or("-".to_string(), |a| {
                    a.iter()
                        .filter_map(|h| h.as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                });
                t.add_row(vec![
                    p["name"].as_str().unwrap_or("?").to_string(),
                    p["state"].as_str().unwrap_or("?").to_string(),
                    handlers,
                    count(p["invocations"].as_u64()),
                    count(errors),
                    p["wasm"].as_str().unwrap_or("?").to_string(),
                ]);
            }
            for c in [3, 4] {
                if let Some(col) = t.column_mut(c) {
                    col.set_cell_alignment(comfy_table::CellAlignment::Right);
                }
            }
            emit(&table_text(&t))?;
        }
        _ => println!("{body}"),
    }
    Ok(())
}

async fn queue_command(
    options: HostOptions,
    action: QueueAction,
    output: Output,
) -> Result<(), Failure> {
    let args = match &action {
        QueueAction::Stats(a) | QueueAction::PurgeDeadLetters(a) => a,
        QueueAction::DeadLetters { queue, .. } | QueueAction::Replay { queue, .. } => queue,
    };
    let plugin = PluginName::parse(&args.plugin).map_err(|e| Failure::new(exit::USAGE, e))?;
    let keys = crate::namespace::Namespace::new(&plugin)
        .queue(&args.queue, args.shared)
        .map_err(|e| Failure::new(exit::USAGE, e))?;
    let host = Host::start(options).await?;
    let redis = host.redis().clone();
    let failed = |e: crate::redis::CommandError| Failure::new(exit::REDIS, e);
    let result = async {
        let mut text = String::new();
        match &action {
            QueueAction::Stats(a) if output == Output::Json => {
                let s = redis.queue_stats(&keys, &a.group).await.map_err(failed)?;
                let json = serde_json::json!({
                    "queue": a.queue,
                    "stream": keys.stream,
                    "length": s.length,
                    "pending": s.pending,
                    "consumers": s.consumers,
                    "lag": s.lag,
                    "oldest_pending_ms": s.oldest_pending_ms,
                    "scheduled": s.scheduled,
                    "dead_letters": s.dead_letters,
                });
                outln!(
                    text,
                    "{}",
                    serde_json::to_string_pretty(&json).expect("JSON")
                );
            }
            QueueAction::Stats(a) => {
                let s = redis.queue_stats(&keys, &a.group).await.map_err(failed)?;
                outln!(text, "queue:              {} ({})", a.queue, keys.stream);
                outln!(text, "length:             {}", s.length);
                outln!(text, "pending:            {}", s.pending);
                outln!(text, "consumers:          {}", s.consumers);
                outln!(text, "lag:                {}", s.lag);
                outln!(text, "oldest pending:     {} ms", s.oldest_pending_ms);
                outln!(text, "scheduled:          {}", s.scheduled);
                outln!(text, "dead letters:       {}", s.dead_letters);
            }
            QueueAction::DeadLetters { limit, .. } => {
                let dead = redis
                    .queue_dead_letters(&keys, *limit)
                    .await
                    .map_err(failed)?;
                if output == Output::Json {
                    let json: Vec<serde_json::Value> = dead
                        .iter()
                        .map(|d| {
                            serde_json::json!({
                                "entry": d.entry_id,
                                "id": d.id,
                                "attempts": d.attempts,
                                "failed_ms": d.failed_ms,
                                "error": d.error,
                                "payload": String::from_utf8_lossy(&d.payload),
                            })
                        })
                        .collect();
                    outln!(
                        text,
                        "{}",
                        serde_json::to_string_pretty(&json).expect("JSON")
                    );
                } else {
                    let mut t = table(&["ENTRY", "ID", "ATTEMPTS", "FAILED (ms)", "ERROR"]);
                    for d in dead {
                        t.add_row(vec![
                            d.entry_id,
                            d.id,
                            d.attempts.to_string(),
                            d.failed_ms.to_string(),
                            crate::caps::log::escape_controls(&d.error).into_owned(),
                        ]);
                    }
                    text.push_str(&table_text(&t));
                }
            }
            QueueAction::Replay { id, all, .. } => {
                if id.is_none() && !all {
                    return Err(Failure::new(exit::USAGE, "give --id ENTRY or --all"));
                }
                let n = redis
                    .queue_replay(&keys, id.as_deref(), 100_000)
                    .await
                    .map_err(failed)?;
                outln!(text, "replayed {n} message(s)");
            }
            QueueAction::PurgeDeadLetters(_) => {
                let purged = redis
                    .queue_purge_dead_letters(&keys)
                    .await
                    .map_err(failed)?;
                outln!(
                    text,
                    "{}",
                    if purged { "purged" } else { "no dead letters" }
                );
            }
        }
        emit(&text)
    }
    .await;
    host.shutdown().await;
    result
}

/// The server resolves relative paths against its own folder, not ours.
fn absolute(path: Option<&Path>) -> Option<PathBuf> {
    path.map(|p| {
        if p.to_str().is_some_and(crate::oci::is_reference) {
            return p.to_path_buf();
        }
        std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
    })
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("redloom").chain(args.iter().copied()))
    }

    /// clap's own consistency checks on every command and argument.
    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// Global flags work after the subcommand; conflicting inputs and
    /// unknown subcommands are usage errors.
    #[test]
    fn invocations_parse() {
        let cli = parse(&["invoke", "x.wasm", "--input", "hi", "-v", "--no-cache"]).unwrap();
        assert_eq!(cli.verbose, 1);
        assert!(cli.no_cache);
        match cli.command {
            Command::Invoke { plugin, input, .. } => {
                assert_eq!(plugin, "x.wasm");
                assert_eq!(input.as_deref(), Some("hi"));
            }
            other => panic!("parsed as {other:?}"),
        }
        let both = parse(&["invoke", "p", "--input", "a", "--input-file", "f"]).unwrap_err();
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
        let unknown = parse(&["frobnicate"]).unwrap_err();
        assert_eq!(unknown.kind(), clap::error::ErrorKind::InvalidSubcommand);
    }

    /// `invoke` takes one handler flag at most; headers need a request or
    /// a job; a request line needs a method and a path.
    #[test]
    fn handler_flags_parse() {
        let config = Config::default();
        let name = PluginName::parse("p").unwrap();
        let call = |args: &[&str]| match parse(args).unwrap().command {
            Command::Invoke { handler, .. } => handler.call(&config, &name, b"in".to_vec()),
            other => panic!("parsed as {other:?}"),
        };
        match call(&["invoke", "p", "--http", "put /a?b=c", "-H", "X-A: 1"]).unwrap() {
            CliCall::Http(r) => {
                assert_eq!((r.method.as_str(), r.path.as_str()), ("PUT", "/a"));
                assert_eq!(r.query, [("b".to_string(), "c".to_string())]);
                assert_eq!(r.headers, [("x-a".to_string(), "1".to_string())]);
                assert_eq!(r.body, b"in");
            }
            other => panic!("{other:?}"),
        }
        match call(&["invoke", "p", "--job", "q", "--attempt", "4", "-H", "k:v"]).unwrap() {
            CliCall::Job(j) => {
                assert_eq!((j.queue.as_str(), j.attempt), ("q", 4));
                assert_eq!(j.headers, [("k".to_string(), "v".to_string())]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            call(&["invoke", "p"]).unwrap(),
            CliCall::Invoke(_)
        ));
        assert!(matches!(
            call(&["invoke", "p", "--tick", "t"]).unwrap(),
            CliCall::Tick(t) if t.timer == "t"
        ));
        for bad in [
            &["invoke", "p", "--http", "GET"][..],
            &["invoke", "p", "--http", "GET nope"],
            &["invoke", "p", "-H", "k:v"],
            &["invoke", "p", "--http", "GET /", "-H", "novalue"],
        ] {
            let e = call(bad).unwrap_err();
            assert_eq!(e.code, exit::USAGE, "{bad:?}: {}", e.message);
        }
        for conflicting in [
            &["invoke", "p", "--http", "GET /", "--job", "q"][..],
            &["invoke", "p", "--message", "c", "--tick", "t"],
            &["invoke", "p", "--param", "a=b"],
            &["invoke", "p", "--attempt", "2"],
        ] {
            assert!(parse(conflicting).is_err(), "{conflicting:?}");
        }
    }

    /// A table's columns are as wide as their widest cell, so a long name
    /// does not push the next column out of line.
    #[test]
    fn tables_line_up() {
        let mut t = table(&["NAME", "STATE"]);
        t.add_row(vec!["a-very-long-plugin-name-that-is-long", "loaded"]);
        t.add_row(vec!["p", "unloaded"]);
        let text = table_text(&t);
        let starts: Vec<usize> = text
            .lines()
            .map(|l| l.rfind("  ").map_or(0, |i| i + 2))
            .collect();
        assert!(starts.windows(2).all(|w| w[0] == w[1]), "{text}");
        assert!(text.starts_with("NAME"), "no left padding: {text:?}");
    }

    /// Completion scripts name the commands.
    #[test]
    fn completions_generate() {
        for shell in ["bash", "zsh", "fish"] {
            let cli = parse(&["completions", shell]).unwrap();
            let Command::Completions { shell } = cli.command else {
                panic!("parsed as {:?}", cli.command);
            };
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "redloom", &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.contains("invoke") && text.contains("dead-letters"),
                "{shell}"
            );
        }
        assert!(parse(&["completions", "tcsh"]).is_err());
    }

    /// `--log-format` is text unless asked, json after any subcommand, and
    /// anything else is a usage error naming the choices.
    #[test]
    fn log_format_parses() {
        assert_eq!(parse(&["serve"]).unwrap().log_format, LogFormat::Text);
        let cli = parse(&["serve", "--log-format", "json"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let bad = parse(&["--log-format", "xml", "serve"]).unwrap_err();
        assert!(bad.to_string().contains("`text` or `json`"), "{bad}");
    }

    /// `--admin` and `--token` may follow the plugin action, as the README
    /// writes them (`redloom plugin list --admin URL`), or precede it.
    #[test]
    fn plugin_admin_flags_go_before_or_after_the_action() {
        for args in [
            &["plugin", "list", "--admin", "http://h:1", "--token", "t"][..],
            &["plugin", "--admin", "http://h:1", "--token", "t", "list"][..],
        ] {
            match parse(args).unwrap().command {
                Command::Plugin {
                    admin,
                    token,
                    action: PluginAction::List,
                } => {
                    assert_eq!(admin.as_deref(), Some("http://h:1"), "{args:?}");
                    assert_eq!(token.as_deref(), Some("t"), "{args:?}");
                }
                other => panic!("{args:?} parsed as {other:?}"),
            }
        }
    }

    /// Queue commands take the queue, its plugin and the group (default
    /// `workers`); replay wants one id or `--all`, not both.
    #[test]
    fn queue_commands_parse() {
        let cli = parse(&["queue", "stats", "orders", "--plugin", "shop"]).unwrap();
        match cli.command {
            Command::Queue {
                action: QueueAction::Stats(q),
            } => {
                assert_eq!((q.queue.as_str(), q.plugin.as_str()), ("orders", "shop"));
                assert_eq!(q.group, "workers");
                assert!(!q.shared);
            }
            other => panic!("parsed as {other:?}"),
        }
        let both = parse(&[
            "queue", "replay", "orders", "--plugin", "shop", "--id", "1-0", "--all",
        ])
        .unwrap_err();
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
    }

    /// `redloom check` names the world a component was built from: one
    /// handler's own world, or the worlds several handlers combine.
    #[test]
    fn world_of_names_the_handlers_worlds() {
        assert_eq!(world_of(&[]), "none (no handler export)");
        assert_eq!(world_of(&[HandlerKind::Http]), "redloom:plugin/http-plugin");
        assert_eq!(
            world_of(&[HandlerKind::Invoke, HandlerKind::Queue]),
            "a combination of redloom:plugin/invoke-plugin + redloom:plugin/queue-plugin"
        );
    }
}
