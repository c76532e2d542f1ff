//! `porchlight`: one binary for running the node and working with SIP.

mod admin;
mod check;
mod provision;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory, Parser, Subcommand};
use porchlight_policy::Modality;
use porchlight_server::{Config, Node, DEFAULT_CONFIG};

#[derive(Parser)]
#[command(
    name = "porchlight",
    version,
    about = "Presence-aware SIP federation edge"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node (embedded defaults unless --config is given).
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log as JSON lines.
        #[arg(long)]
        json_logs: bool,
        /// Once every listener is bound, write their addresses here as
        /// JSON (`udp`, `tcp`, `tls`, `admin`): for scripts that start the
        /// node on port 0.
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// Work with SIP messages.
    Sip {
        #[command(subcommand)]
        command: SipCommand,
    },
    /// Work with configuration files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Show where requests to a partner domain would go (pinned proxy,
    /// federation SRV, RFC 3263).
    Resolve {
        /// The partner's SIP domain.
        domain: String,
        /// Ask this DNS server (IP:PORT, repeatable) instead of the
        /// configuration's.
        #[arg(long)]
        nameserver: Vec<std::net::SocketAddr>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// The running node's counters, gauges and endpoints (admin API).
    Status {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Work with the nodes of a Redis Cluster ([cluster]).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// The edge access switches, on the running node or offline.
    Edge {
        #[command(subcommand)]
        command: provision::EdgeCommand,
    },
    /// Public IM providers, on the running node or offline.
    Provider {
        #[command(subcommand)]
        command: provision::ProviderCommand,
    },
    /// External access policies and their grants, on the running node or offline.
    Policy {
        #[command(subcommand)]
        command: provision::PolicyCommand,
    },
    /// Allowed and blocked partner domains, on the running node or offline
    /// in its store.
    Federation {
        #[command(subcommand)]
        command: FederationCommand,
    },
    /// Print the web console's address, with the token it opens with.
    Console {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// The running node's endpoints (admin API).
    Endpoint {
        #[command(subcommand)]
        command: EndpointCommand,
    },
    /// Show each step of the policy decision for a request from outside.
    Explain {
        /// The sender, e.g. sip:alice@fabrikam.com.
        #[arg(long)]
        from: String,
        /// The endpoint, e.g. sip:helpdesk@contoso.com.
        #[arg(long)]
        to: String,
        /// presence, im or audio.
        #[arg(long, default_value = "presence")]
        kind: String,
        /// A domain the peer's TLS certificate proves (repeat for several);
        /// without it the request is taken as not over mutual TLS.
        #[arg(long)]
        peer: Vec<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell), for
    /// packages and for `source <(porchlight completions bash)`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), for packages and `man -l -`.
    Manual,
}

/// Which node a command is about, found the same way from any directory:
/// its configuration file (`--config`, else `PORCHLIGHT_CONFIG`, else the
/// embedded defaults with paths from the current directory) names its
/// token file, beside which the running node leaves its admin address; the
/// command asks that node, or, when it is stopped, reads its store.
#[derive(clap::Args)]
struct AdminTarget {
    /// The node's configuration (for [admin] token_file and listen, and
    /// [store] path); embedded defaults otherwise.
    #[arg(long, short, env = "PORCHLIGHT_CONFIG")]
    config: Option<PathBuf>,
    /// The admin API's base URL, instead of the one the node left beside
    /// its token or the configuration's.
    #[arg(long, env = "PORCHLIGHT_ADMIN")]
    admin: Option<String>,
    /// The token file, instead of the configuration's.
    #[arg(long, env = "PORCHLIGHT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum EndpointCommand {
    /// Every endpoint with its live presence and watcher count (as
    /// configured, when the node is not running).
    List {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// One endpoint with its presence and who watches it.
    Show {
        /// The endpoint's SIP URI.
        uri: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Add an endpoint: `endpoint add sip:bot@contoso.com --name "Bot" health.url=http://…`.
    Add {
        /// Its SIP URI.
        uri: String,
        /// The name clients show.
        #[arg(long)]
        name: String,
        /// More fields as `key=value` (as in an [[endpoint]] entry).
        assignments: Vec<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Change an endpoint's fields: `availability=away`, `note="Back soon"`.
    Set {
        /// Its SIP URI.
        uri: String,
        /// `key=value` pairs.
        #[arg(required = true)]
        assignments: Vec<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Remove an endpoint.
    Remove {
        /// Its SIP URI.
        uri: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// An admin's presence for an endpoint, which outranks every source
    /// (restarts included) until cleared.
    Presence {
        #[command(subcommand)]
        command: PresenceCommand,
    },
}

#[derive(Subcommand)]
enum PresenceCommand {
    /// Set it: `endpoint presence set sip:helpdesk@contoso.com busy --note "In a meeting"`.
    Set {
        /// The endpoint's SIP URI.
        uri: String,
        /// online, busy, dnd, brb, away, offline, or a number on the Microsoft scale.
        availability: String,
        /// Free text shown under the name.
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Clear it: the endpoint's own sources decide again.
    Clear {
        /// The endpoint's SIP URI.
        uri: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Move a stopped node's state into the cluster without ending its
    /// dialogs: `cluster init --from-store porchlight-data --config node.toml`.
    /// The running members take its subscriptions over; a cluster without
    /// a configuration takes the store's.
    Init {
        /// The stopped node's store (its [store] path).
        #[arg(long)]
        from_store: PathBuf,
        /// The configuration with the [cluster] section the node joins with.
        #[arg(long, short, env = "PORCHLIGHT_CONFIG")]
        config: PathBuf,
    },
    /// Move a member's watchers to the other nodes, paced, for
    /// maintenance: `cluster drain 2`. Any member can be asked.
    Drain {
        /// The member's [cluster] node_id.
        node: u16,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(Subcommand)]
enum SipCommand {
    /// Parse each file as one SIP message; exit 0 only if all are valid.
    Check {
        /// Files holding one captured message each.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the embedded default configuration.
    Defaults,
    /// Validate a configuration file.
    Check {
        /// The file.
        file: PathBuf,
    },
    /// Print the policy and endpoints as one TOML document (from the
    /// running node, else from its store).
    Export {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Replace the policy and endpoints with a TOML document (as `export`
    /// writes it): checked first, then in force on the running node, else
    /// saved in its store. Importing the same document again changes nothing.
    Import {
        /// The document.
        file: PathBuf,
        /// Only list what would be added, changed and removed.
        #[arg(long)]
        dry_run: bool,
        /// Allow removing every endpoint, or every allowed and blocked
        /// domain and provider (refused otherwise, as a cut-short file
        /// would do it).
        #[arg(long)]
        remove_all: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(Subcommand)]
enum FederationCommand {
    /// The allowed and blocked domains.
    List {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Allow a partner domain.
    Allow {
        /// The partner's SIP domain.
        domain: String,
        /// Its edge, instead of finding it in DNS: a host, host:port, an
        /// address (with a port) or a sip:/sips: URI; "" goes back to DNS.
        /// Left out, an allowed domain keeps the proxy it has.
        #[arg(long)]
        proxy: Option<String>,
        /// Its edge does not vouch for its users: let them in marked
        /// verified=no. Left out (with --verified too), an allowed
        /// domain keeps its setting.
        #[arg(long, conflicts_with = "verified")]
        unverified: bool,
        /// Its edge vouches for its users (the default for a new domain).
        #[arg(long)]
        verified: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Block a domain and its subdomains.
    Block {
        /// The domain.
        domain: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Take a domain off the allowed or blocked list.
    Remove {
        /// The domain.
        domain: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

/// mimalloc hands freed memory back to the system: the transactions of a
/// subscription burst are short-lived, and with the system allocator their
/// memory stayed resident long after they ended (see bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("porchlight: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            config,
            json_logs,
            ready_file,
        } => {
            init_logging(json_logs);
            let config = match &config {
                Some(path) => porchlight_server::load_config(path)?,
                None => Config::embedded(),
            };
            raise_descriptor_limit(config.limits.max_connections);
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if config.node.worker_threads > 0 {
                builder.worker_threads(config.node.worker_threads);
            }
            let runtime = builder
                .enable_all()
                .build()
                .context("starting the runtime")?;
            runtime.block_on(async {
                // The admin listener is bound first, so a bad address stops
                // the start before any SIP traffic is taken.
                let admin = match config.admin.address() {
                    Some(addr) => {
                        let token_file = config.resolve(&config.admin.token_file);
                        let token = porchlight_admin::load_or_create_token(&token_file)?;
                        let listener = tokio::net::TcpListener::bind(addr)
                            .await
                            .with_context(|| {
                                format!("binding the admin API to {addr}: stop the program that holds it (another Porchlight?), or change [admin] listen")
                            })?;
                        let bound = listener.local_addr()?;
                        porchlight_admin::write_address(&token_file, bound)?;
                        tracing::info!("admin API at http://{bound}");
                        Some((listener, token))
                    }
                    None => None,
                };
                let node = Node::start(config).await?;
                let admin_addr = admin.as_ref().and_then(|(l, _)| l.local_addr().ok());
                if let Some((listener, token)) = admin {
                    let router = porchlight_admin::router(node.handle(), &token);
                    tokio::spawn(async move {
                        if let Err(e) = porchlight_admin::serve(listener, router).await {
                            tracing::error!("admin API stopped: {e}");
                        }
                    });
                }
                if let Some(path) = &ready_file {
                    node.listening(admin_addr).write(path).with_context(|| {
                        format!("writing the listening addresses to {}", path.display())
                    })?;
                }
                tokio::select! {
                    () = node.wait() => {}
                    _ = tokio::signal::ctrl_c() => tracing::info!("shutting down"),
                }
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sip {
            command: SipCommand::Check { files },
        } => {
            let mut all_valid = true;
            for file in &files {
                let (report, valid) = check::check_file(file);
                println!("{report}");
                all_valid &= valid;
            }
            Ok(if all_valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Config {
            command: ConfigCommand::Defaults,
        } => {
            print!("{DEFAULT_CONFIG}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Resolve {
            domain,
            nameserver,
            target,
        } => {
            let (config, judged) = provision::config_in_force(&target)?;
            let route = config.policy.route_to(&domain);
            match &route.pinned {
                Some(proxy) => println!("{domain}: pinned to {proxy} ({judged})"),
                None => println!("{domain}: no pinned proxy, looked up in DNS ({judged})"),
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            let hops = runtime.block_on(async {
                let resolver = if nameserver.is_empty() {
                    porchlight_server::resolver(&config)
                        .context("reading the system resolver configuration")?
                } else {
                    porchlight_resolve::Resolver::with_nameservers(&nameserver)
                };
                let pinned = route.pinned.as_ref().map(|p| {
                    (
                        p.host_text(),
                        p.port.unwrap_or(porchlight_resolve::SIPS_PORT),
                    )
                });
                let pinned = pinned.as_ref().map(|(host, port)| (host.as_str(), *port));
                anyhow::Ok(resolver.federation_hops(&route.verify, pinned).await?)
            })?;
            for hop in hops {
                println!(
                    "{} ({}) via {}; TLS identity checked: {}",
                    hop.addr, hop.host, hop.source, route.verify
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "porchlight", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Manual => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain {
            from,
            to,
            kind,
            peer,
            target,
        } => {
            let (config, judged) = provision::config_in_force(&target)?;
            let modality = Modality::from_name(&kind)
                .with_context(|| format!("--kind {kind:?}: use presence, im or audio"))?;
            let peer = (!peer.is_empty()).then_some(peer.as_slice());
            let Some(decision) = porchlight_server::explain(&config, &from, &to, modality, peer)
            else {
                println!(
                    "no policy decision: {to} is not an endpoint here (without edge mode: 404), \
                     or neither side is in this node's domains (403, relaying is not permitted)"
                );
                return Ok(ExitCode::FAILURE);
            };
            println!("{from} -> {to} ({kind}), {judged}\n{decision}");
            Ok(if decision.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Status { target } => {
            print!("{}", provision::status(&target)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Cluster {
            command: ClusterCommand::Drain { node, target },
        } => {
            print_line(&admin::drain(&target, node)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Cluster {
            command: ClusterCommand::Init { from_store, config },
        } => {
            print_line(&provision::cluster_init(&config, &from_store)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Console { target } => {
            let (base, token) = admin::locate(&target)?;
            println!("{base}/#token={token}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Endpoint {
            command: EndpointCommand::List { target },
        } => {
            print_line(&provision::endpoint_list(&target)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Endpoint {
            command: EndpointCommand::Show { uri, target },
        } => {
            print!("{}", provision::endpoint_show(&target, &uri)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            porchlight_server::load_config(&file)?;
            println!("{}: valid", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command: ConfigCommand::Export { target },
        } => {
            print!("{}", provision::export(&target)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            command:
                ConfigCommand::Import {
                    file,
                    dry_run,
                    remove_all,
                    target,
                },
        } => {
            let document = provision::read(&file)?;
            let origin = file.display().to_string();
            let options = porchlight_server::ImportOptions {
                dry_run,
                remove_all,
            };
            println!(
                "{}",
                provision::import(&target, &document, &origin, options)?
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Edge { command } => {
            print_line(&provision::edge(command)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Provider { command } => {
            print_line(&provision::provider(command)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy { command } => {
            print_line(&provision::policy(command)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Endpoint {
            command:
                EndpointCommand::Add {
                    uri,
                    name,
                    assignments,
                    target,
                },
        } => {
            print_line(&provision::endpoint_add(&target, uri, name, &assignments)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Endpoint {
            command:
                EndpointCommand::Set {
                    uri,
                    assignments,
                    target,
                },
        } => {
            print_line(&provision::endpoint_set(&target, &uri, &assignments)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Endpoint {
            command: EndpointCommand::Presence { command },
        } => {
            let said = match command {
                PresenceCommand::Set {
                    uri,
                    availability,
                    note,
                    target,
                } => provision::presence_set(&target, &uri, Some((&availability, note)))?,
                PresenceCommand::Clear { uri, target } => {
                    provision::presence_set(&target, &uri, None)?
                }
            };
            print_line(&said);
            Ok(ExitCode::SUCCESS)
        }
        Command::Endpoint {
            command: EndpointCommand::Remove { uri, target },
        } => {
            print_line(&provision::endpoint_remove(&target, &uri)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Federation { command } => {
            use porchlight_policy::FederationChange;
            let (target, change) = match command {
                FederationCommand::List { target } => {
                    print!("{}", provision::federation_list(&target)?);
                    return Ok(ExitCode::SUCCESS);
                }
                FederationCommand::Allow {
                    domain,
                    proxy,
                    unverified,
                    verified,
                    target,
                } => (
                    target,
                    FederationChange::Allow {
                        domain,
                        proxy,
                        unverified: (unverified || verified).then_some(unverified),
                    },
                ),
                FederationCommand::Block { domain, target } => {
                    (target, FederationChange::Block(domain))
                }
                FederationCommand::Remove { domain, target } => {
                    (target, FederationChange::Remove(domain))
                }
            };
            println!("{}", provision::federation_change(&target, change)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints command output, ending it with one newline whatever it ends
/// with; a reader that went away (`| head`) is not an error.
fn print_line(text: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{}", text.trim_end());
}

fn init_logging(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Every connection is a descriptor, and the usual soft limit (1024) is
/// far below `max_connections`: take what the hard limit allows, and say
/// when even that is short, since past it connections fail at accept.
fn raise_descriptor_limit(max_connections: usize) {
    // Listeners, the store, webhooks and logs need some beyond connections.
    let wanted = max_connections as u64 + 1_024;
    match rlimit::increase_nofile_limit(wanted) {
        Ok(got) if got < wanted => tracing::warn!(
            "open files are limited to {got}, fewer than max_connections = {max_connections} \
             needs: raise the hard limit (LimitNOFILE= in the systemd unit, or ulimit -Hn)"
        ),
        Ok(_) => {}
        Err(e) => tracing::warn!("raising the open-files limit: {e}"),
    }
}
