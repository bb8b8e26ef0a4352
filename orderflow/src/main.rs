//! The `orderflow` command line: one binary whose subcommands reach every part of the
//! pipeline. Parsing and dispatch only; the work happens in the library crates.

use std::io::BufRead;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use orderflow::components::{self, Component};
use orderflow::demo::{self, DemoOptions};
use orderflow::settings::Settings;

#[derive(Parser)]
#[command(
    name = "orderflow",
    version,
    about = "Event-sourced order pipeline on Kafka and Postgres"
)]
struct Cli {
    /// TOML settings file; ORDERFLOW_* environment variables override it
    /// (ORDERFLOW_KAFKA__BROKERS, ORDERFLOW_DATABASE__URL, ...).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the database if missing and apply the schema migrations.
    Migrate,
    /// Create the order log topic (kafka.topic), the intake topic (kafka.intake_topic, 24 h
    /// retention) and the dead-letter topics if missing.
    Topics {
        /// Partitions for a new topic [default: kafka.partitions, 12].
        #[arg(long)]
        partitions: Option<i32>,
    },
    /// Read orders as JSON lines from FILE (or stdin) and publish them as OrderCreated to the
    /// intake topic (kafka.intake_topic), as an upstream system would: the intake seals their
    /// personal fields and appends them to the log. Bad lines are reported with their number;
    /// the exit code is 1 if any line failed.
    Publish {
        /// A file of JSON lines; stdin when omitted or "-".
        file: Option<PathBuf>,
    },
    /// Ask to cancel an order. The saga accepts while the order has not shipped and answers on
    /// the log (OrderCancellationAccepted or OrderCancellationRejected); see the order's
    /// timeline in analytics.order_events.
    Cancel {
        order_id: String,
        /// A stable reason code for analysts.
        #[arg(long, default_value = "customer_request")]
        reason: String,
        /// Who asks: a customer id, an operator, a service.
        #[arg(long, default_value = "operator")]
        requested_by: String,
    },
    /// Run pipeline components until SIGINT/SIGTERM (all of them unless --only is given).
    Run {
        /// Run only these components (repeatable); more processes join the same groups.
        #[arg(long, value_enum)]
        only: Vec<Component>,
        /// Also serve the HTTP API (the [api] section, on api.listen), as `orderflow serve`.
        #[arg(long)]
        api: bool,
    },
    /// Serve the HTTP API (the [api] section: api.listen, default 127.0.0.1:8080) until
    /// SIGINT/SIGTERM, then answer the requests in flight and exit. Refuses to start without
    /// authentication: api.auth.jwks_file (JWT bearer tokens) and/or an API key pepper
    /// (api.auth.api_key_pepper_file) and/or client certificates ([api.tls] with client_certs
    /// and [[api.tls.clients]]); api.insecure_dev_principal is for development only. HTTPS
    /// when [api.tls] names a certificate and key.
    Serve,
    /// Change inventory stock: appends StockAdjusted events to the order log, which the
    /// inventory step applies.
    Stock {
        #[command(subcommand)]
        action: StockAction,
    },
    /// Block or unblock customers (the simulated payment provider declines blocked ones):
    /// appends CustomerBlocked / CustomerUnblocked to the order log, which the payment step
    /// applies.
    Customers {
        #[command(subcommand)]
        action: CustomerAction,
    },
    /// The master key and the customers' data keys ([privacy]).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Inspect and redrive dead-lettered records.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Rebuild the read models from the log into a new generation, verify it against the live
    /// one at the same log position and switch analysts to it in one transaction; exit code 2
    /// when verification finds differences (nothing switched). With --until, build the read
    /// models as of a moment into a separate schema instead, leaving the live ones alone.
    Replay {
        /// An RFC 3339 time (the prefix of each partition whose events occurred by then) or
        /// positions PARTITION:NEXT_OFFSET,... for every partition (as in analytics.watermarks).
        #[arg(long, value_parser = projections::rebuild::parse_until)]
        until: Option<projections::rebuild::Until>,
        /// Switch even if verification finds differences (after an intended change of the
        /// read models); the differences are still printed.
        #[arg(long, conflicts_with = "until")]
        force_switch: bool,
        /// Also time a plain COPY of as many rows as the log has events, for comparison.
        #[arg(long)]
        compare_copy: bool,
        /// Records per read batch and per catch-up transaction.
        #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..))]
        batch: u32,
        /// Read the log from this archive directory (orderflow archive) instead of the broker,
        /// as far as it goes; the rest comes from the broker.
        #[arg(long, value_name = "DIR")]
        from_archive: Option<PathBuf>,
    },
    /// Restore everything from an archive alone into an empty topic and a freshly migrated
    /// database: the log at its original offsets, the read models, the saga steps' state
    /// (without calling the payment provider or the carrier again) and the steps' consumer
    /// offsets at the archive's end. Refuses a topic or a database that holds anything.
    Restore {
        /// The archive directory [default: archive.dir].
        #[arg(long)]
        archive: Option<PathBuf>,
        /// Gone: the archive carries stock and customer blocks as events. Refused with a
        /// message saying so.
        #[arg(long, hide = true)]
        stock: Option<PathBuf>,
        /// A key backup (orderflow keys export) to import before the steps replay; keys an
        /// archived CustomerForgotten names are destroyed after it. Without it, sealed
        /// personal fields read as erased and open orders' shipments fail.
        #[arg(long, value_name = "FILE")]
        keys: Option<PathBuf>,
    },
    /// Copy the log into the archive directory (archive.dir, or --dir) up to its current end,
    /// then exit; with --check, verify the archive against its manifest instead.
    Archive {
        /// The archive directory [default: archive.dir].
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Verify every file (ranges, record counts, checksums); exit 1 on any problem.
        #[arg(long)]
        check: bool,
    },
    /// Benchmark tooling: write N complete synthetic order histories straight onto the log
    /// (no steps run; about 4.9 events per order). Never on a production topic.
    SynthLog {
        #[arg(long)]
        orders: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Spread the orders over this many days before now.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// List read-model generations or drop one that is not live.
    Generations {
        #[command(subcommand)]
        action: GenerationAction,
    },
    /// API keys for integrations: create (the key is printed once), list, revoke. Needs the
    /// pepper the API uses (api.auth.api_key_pepper_file or OFK_PEPPER).
    ApiKeys {
        #[command(subcommand)]
        action: ApiKeyAction,
    },
    /// Row counts and checksums of every table holding pipeline state (steps, inbox, outbox,
    /// dead letters, read models), for comparing two databases; see docs/disaster-recovery.md.
    State {
        #[command(subcommand)]
        action: StateAction,
    },
    /// Check the pipeline's invariants against the database and the broker; prints
    /// `PASS|FAIL  <invariant>: <detail>` per invariant and `check: N passed, M failed` last.
    /// Exit code 0 all hold, 1 one fails, 2 the check cannot run. See docs/crash-test.md.
    Check {
        /// Exactly N orders (with --order-prefix, N with that prefix) must exist, all terminal.
        #[arg(long, value_name = "N")]
        orders: Option<u64>,
        /// Only orders whose id starts with P count for the order checks (e.g. demo-).
        #[arg(long, value_name = "P")]
        order_prefix: Option<String>,
        /// Stock before any order, SKU=QTY per line (as for restore --stock): available +
        /// reserved must equal it per sku.
        #[arg(long, value_name = "FILE")]
        initial_stock: Option<PathBuf>,
        /// Check every outcome against the demo generator's rules (orderflow demo).
        #[arg(long)]
        demo_outcomes: bool,
        /// Fold the whole log into a new generation, compare it with the live one table by
        /// table, then drop it (nothing is switched).
        #[arg(long)]
        rebuild: bool,
        /// First wait up to SECS for every group at the log end and nothing unpublished.
        #[arg(long, value_name = "SECS")]
        wait_zero_lag: Option<u64>,
        /// Also write the results as JSON to FILE.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
    },
    /// The pipeline at a glance: per component lag, records applied per second, records held
    /// behind parked orders (backlog), parked orders, open dead letters, unpublished outbox
    /// rows and the read models' freshness; the saga's open orders and the archive's lag.
    /// Exit code 0 healthy, 1 a health rule fired (each is printed with its component), 2
    /// Postgres or the broker cannot be reached.
    Status {
        /// Print the snapshot and the rules that fired as one JSON object per line.
        #[arg(long)]
        json: bool,
        /// Only this component's facts.
        #[arg(long, value_enum)]
        component: Option<Component>,
        /// Print a new snapshot every SECS seconds until interrupted.
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        watch: Option<u64>,
        /// Unhealthy when a component has more open dead letters than this.
        #[arg(long, default_value_t = 0)]
        max_dead_letters: i64,
        /// Unhealthy when a step holds more parked orders than this.
        #[arg(long, default_value_t = 100)]
        max_parked: i64,
        /// Unhealthy when a group is more records behind the log end than this.
        #[arg(long, default_value_t = 10_000)]
        max_lag: i64,
        /// Unhealthy when an outbox row has waited longer than this to be published.
        #[arg(long, default_value_t = 60.0, value_name = "SECS")]
        max_outbox_age_secs: f64,
        /// Unhealthy when the read models are staler than this.
        #[arg(long, default_value_t = 30.0, value_name = "SECS")]
        max_freshness_secs: f64,
        /// Unhealthy when the oldest record missing from the archive is older than this.
        #[arg(long, default_value_t = 300.0, value_name = "SECS")]
        max_archive_lag_secs: f64,
    },
    /// Benchmark: the raw limits of the broker and Postgres, then the pipeline (an `orderflow
    /// run` child on its own topic and database) in a closed loop and at fixed offered rates,
    /// or a soak; prints a table, writes JSON (--out) and an SVG chart (--chart).
    Bench(orderflow::bench::Options),
    /// Publish N generated orders, wait until all are terminal, and print a summary.
    Demo {
        /// How many orders to publish.
        #[arg(long, default_value_t = 1_000)]
        orders: usize,
        /// Give up (and say what is stuck) after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// Seed of the order generator.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Do not start the components in this process; use ones already running.
        #[arg(long)]
        external: bool,
        /// Publish at most this many orders per second (default: all at once).
        #[arg(long)]
        rate: Option<NonZeroU32>,
    },
}

#[derive(Subcommand)]
enum ApiKeyAction {
    /// Create a key and print it once on stdout (`ofk_<id>_<secret>`); only its HMAC is stored.
    Create {
        /// What the key is for (shown by `list`).
        #[arg(long)]
        name: String,
        /// customer, service, operator or analyst.
        #[arg(long)]
        role: String,
        /// The customer a customer key acts for (only with --role customer).
        #[arg(long)]
        customer: Option<String>,
    },
    /// Every key: id, name, role, customer, created, last used, revoked (never a secret).
    List,
    /// Revoke a key by its id (with or without `ofk_`); it is refused from then on.
    Revoke { id: String },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Print a new random master key (32 bytes as base64) on stdout, for
    /// privacy.master_key_file or ORDERFLOW_PRIVACY__MASTER_KEY. Keep it secret and keep it:
    /// without it no sealed personal field can be read.
    NewMasterKey,
    /// Write every data key (privacy.data_keys, live and destroyed) to FILE as JSON. The file
    /// holds only wrapped keys and tombstones, never the master key: it is useless without
    /// the master key, but keep it as safe as the database. The key table is the one piece of
    /// state not on the log: export after every erasure (docs/disaster-recovery.md).
    Export { file: PathBuf },
    /// Add the data keys of a backup written by `keys export` (one transaction; every key
    /// must unwrap with the configured master key). Keys the backup shows destroyed are
    /// destroyed here too; an import never brings an erased key back.
    Import { file: PathBuf },
}

#[derive(Subcommand)]
enum GenerationAction {
    /// Every generation, newest first: schema, purpose, state, when, until.
    List,
    /// Drop a generation's schema (a retired, failed or point-in-time one).
    Drop { generation: i32 },
}

#[derive(Subcommand)]
enum StateAction {
    /// Print `table rows checksum` per table; with --dump, also write each table's rows,
    /// sorted, to DIR/<table>.rows.
    Digest {
        #[arg(long)]
        dump: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum StockAction {
    /// Bring the available quantity of skus to a level: SKU=QTY ... Appends the difference to
    /// what the inventory step has applied (plus adjustments appended but not applied yet) as
    /// StockAdjusted; units reserved by orders in flight meanwhile come off the new level.
    Set {
        #[arg(required = true, value_parser = parse_stock)]
        items: Vec<(String, i64)>,
        #[command(flatten)]
        command: CommandArgs,
    },
    /// Add or take away units: SKU=+N or SKU=-N ... (one StockAdjusted each; no race).
    Adjust {
        #[arg(required = true, value_parser = orderflow::operator::parse_adjustment)]
        items: Vec<(String, i64)>,
        #[command(flatten)]
        command: CommandArgs,
    },
}

/// What every stock and customer command takes.
#[derive(clap::Args)]
struct CommandArgs {
    /// Why (written into each StockAdjusted).
    #[arg(long, default_value = "set by an operator")]
    reason: String,
    /// Names the command's events: running it again with the same id appends nothing new
    /// (and publishes what an interrupted run left). A new id each run when omitted.
    #[arg(long)]
    command_id: Option<uuid::Uuid>,
}

#[derive(Subcommand)]
enum DlqAction {
    /// List dead letters (open ones unless --all), oldest position first.
    List {
        /// Only this component's.
        #[arg(long, value_enum)]
        consumer: Option<Component>,
        /// Include dead letters already redriven.
        #[arg(long)]
        all: bool,
    },
    /// Show one dead letter: position, error, every failed attempt, key and payload.
    Show { id: uuid::Uuid },
    /// Apply a step's open dead letters again, in log order, with their original event ids.
    Redrive {
        /// The step whose dead letters to redrive.
        #[arg(long, value_enum)]
        consumer: Component,
        /// Only these dead letters (repeatable); all open ones when omitted.
        #[arg(long = "id")]
        ids: Vec<uuid::Uuid>,
        /// Run the handler and report what it would do; commit and publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum CustomerAction {
    /// Mark a customer as failing: every payment of theirs is declined (customer_blocked).
    Block {
        customer_id: String,
        #[arg(long, default_value = "")]
        note: String,
        /// As for stock: the same id appends nothing twice.
        #[arg(long)]
        command_id: Option<uuid::Uuid>,
    },
    /// Let the customer's payments be authorized again (declined ones stay declined).
    Unblock {
        customer_id: String,
        /// As for stock: the same id appends nothing twice.
        #[arg(long)]
        command_id: Option<uuid::Uuid>,
    },
    /// Erase a customer's personal data (docs/privacy.md), in one transaction: destroy their
    /// data keys (every sealed copy on the log, in archives and backups then reads as
    /// erased), scrub their personal fields from Postgres (shipping's kept addresses, dead
    /// letters, unpublished clear orders, API idempotency records) and append
    /// CustomerForgotten. Amounts, skus, statuses and times stay. A customer never seen is
    /// forgotten all the same. Take a key backup afterwards (orderflow keys export).
    Forget {
        customer_id: String,
        /// As for stock: a retry with the same id changes and appends nothing new.
        #[arg(long)]
        command_id: Option<uuid::Uuid>,
    },
}

fn parse_stock(text: &str) -> Result<(String, i64), String> {
    let (sku, qty) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not SKU=QTY"))?;
    let qty: i64 = qty
        .parse()
        .map_err(|_| format!("{text:?}: quantity {qty:?} is not a whole number"))?;
    if sku.trim().is_empty() || qty < 0 {
        return Err(format!(
            "{text:?}: sku must not be blank and quantity must be >= 0"
        ));
    }
    Ok((sku.to_string(), qty))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // For `check` and `status`, failing to start (configuration, runtime) is a setup error:
    // exit 2.
    let setup_failure = if matches!(cli.command, Command::Check { .. } | Command::Status { .. }) {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    };
    // Multi-threaded: the projector's assignment callback blocks a worker briefly.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return setup_failure;
        }
    };
    // Spans are exported from the runtime, so it exists first.
    let started = {
        let _inside = runtime.enter();
        start_telemetry(&cli)
    };
    let traces = match started {
        Ok(traces) => traces,
        Err(error) => {
            eprintln!("error: invalid configuration: {error}");
            return setup_failure;
        }
    };
    let code = match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            setup_failure
        }
    };
    // The components have stopped; the last spans go out while the runtime still runs.
    if let Some(traces) = traces {
        traces.shutdown();
    }
    code
}

/// Logging, and trace export when the `[tracing]` section turns it on, with the resource
/// naming what this process runs. Settings that do not load leave logging only: the command
/// reports them.
fn start_telemetry(
    cli: &Cli,
) -> Result<Option<platform::trace::Tracing>, platform::trace::TraceError> {
    let Ok(settings) = Settings::load(cli.config.as_deref()) else {
        platform::telemetry::init();
        return Ok(None);
    };
    let components = match &cli.command {
        Command::Run { only, .. } if !only.is_empty() => {
            only.iter().map(|c| c.name()).collect::<Vec<_>>().join(",")
        }
        Command::Run { .. } => "all".to_string(),
        Command::Serve => "api".to_string(),
        Command::Publish { .. } => "publish".to_string(),
        Command::Demo { .. } => "demo".to_string(),
        Command::Cancel { .. } => "cancel".to_string(),
        _ => "cli".to_string(),
    };
    platform::telemetry::start(&settings.tracing, &components)
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(cli.config.as_deref())
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    match cli.command {
        Command::Migrate => {
            components::prepare_database(&settings, true).await?;
            eprintln!("database migrated");
        }
        Command::Topics { partitions } => {
            let partitions = partitions.unwrap_or(settings.kafka.partitions);
            components::ensure_topics(&settings, partitions).await?;
            eprintln!(
                "topics {} and {} and their dead-letter topics ready",
                settings.kafka.topic, settings.kafka.intake_topic
            );
        }
        Command::Publish { file } => return publish(&settings, file).await,
        Command::Cancel {
            order_id,
            reason,
            requested_by,
        } => {
            let event = producers::cancellation_request(
                &order_id,
                &reason,
                &requested_by,
                chrono::Utc::now(),
            )
            .map_err(|e| anyhow::anyhow!("invalid cancellation request: {e}"))?;
            let publisher = producers::Publisher::new(&settings.kafka, "orderflow-cancel")?;
            if let Some((_, error)) = publisher.publish(std::slice::from_ref(&event)).await.pop() {
                anyhow::bail!("publishing the cancellation request of {order_id}: {error}");
            }
            publisher.flush_all(Duration::from_secs(30))?;
            eprintln!(
                "cancellation of {order_id} requested (event {}); the saga answers on {}",
                event.meta.event_id, settings.kafka.topic
            );
        }
        Command::Serve => orderflow::serve::run(&settings).await?,
        Command::Run { only, api } => {
            let chosen = if only.is_empty() {
                let mut all = Component::ALL.to_vec();
                if !settings.archive.dir.is_empty() {
                    all.push(Component::Archiver);
                }
                all
            } else {
                only
            };
            let pool = components::prepare_database(&settings, false).await?;
            platform::kafka::partition_count(&settings.kafka, &settings.kafka.topic)?;
            let shutdown = platform::shutdown::on_signals();
            // The listener first: the components' metric handles need the recorder.
            let readiness = platform::admin::Readiness::default();
            let admin = components::admin(&settings, &pool, &readiness, &shutdown).await?;
            let set = components::start_watched(&chosen, &settings, &pool, &shutdown, &readiness)?;
            // The facts behind the database and broker gauges of the components run here, for
            // the admin listener to serve (nothing to serve them when it is off).
            if matches!(settings.admin.address(), Ok(Some(_))) {
                let every = Duration::from_millis(settings.admin.collect_interval_ms);
                orderflow::status::collector::spawn(&settings, &pool, &chosen, every, &shutdown);
            }
            let api = if api {
                Some(orderflow::serve::start(&settings, &pool, &shutdown).await?)
            } else {
                None
            };
            let supervised = components::supervise(set, &shutdown).await;
            if let Some(api) = api {
                shutdown.cancel();
                api.await
                    .map_err(|e| anyhow::anyhow!("the API task panicked: {e}"))??;
            }
            supervised?;
            drop(admin);
        }
        Command::Stock { action } => {
            use orderflow::operator::Change;
            let (change, command) = match action {
                StockAction::Set { items, command } => (Change::SetStock(items), command),
                StockAction::Adjust { items, command } => (Change::AdjustStock(items), command),
            };
            let pool = components::prepare_database(&settings, false).await?;
            let command_id = command.command_id.unwrap_or_else(uuid::Uuid::new_v4);
            let events =
                orderflow::operator::apply(&settings, &pool, command_id, &change, &command.reason)
                    .await?;
            for event in &events {
                if let events::EventBody::StockAdjusted(a) = &event.body {
                    println!("{} {:+} {}", a.sku, a.delta, event.meta.event_id);
                }
            }
            eprintln!(
                "{} StockAdjusted appended (command {command_id}); the inventory step applies them",
                events.len()
            );
        }
        Command::Customers { action } => {
            use orderflow::operator::Change;
            let (change, command_id, done) = match action {
                CustomerAction::Block {
                    customer_id,
                    note,
                    command_id,
                } => (
                    Change::Block {
                        customer_id: customer_id.clone(),
                        note,
                    },
                    command_id,
                    format!("customer {customer_id} blocked"),
                ),
                CustomerAction::Forget {
                    customer_id,
                    command_id,
                } => {
                    let pool = components::prepare_database(&settings, false).await?;
                    let command_id = command_id.unwrap_or_else(uuid::Uuid::new_v4);
                    let forgotten =
                        orderflow::operator::forget(&settings, &pool, command_id, &customer_id)
                            .await?;
                    let events::EventBody::CustomerForgotten(f) = &forgotten.event.body else {
                        anyhow::bail!("command {command_id} appended another event");
                    };
                    for (place, rows) in &forgotten.scrubbed {
                        println!("scrubbed {place} {rows}");
                    }
                    eprintln!(
                        "customer {customer_id} forgotten (command {command_id}{}): {} data keys destroyed, CustomerForgotten {}; back the keys up now (orderflow keys export FILE)",
                        if forgotten.new { "" } else { ", done before: nothing changed" },
                        f.key_ids.len(),
                        forgotten.event.meta.event_id
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                CustomerAction::Unblock {
                    customer_id,
                    command_id,
                } => (
                    Change::Unblock {
                        customer_id: customer_id.clone(),
                    },
                    command_id,
                    format!("customer {customer_id} unblocked"),
                ),
            };
            let pool = components::prepare_database(&settings, false).await?;
            let command_id = command_id.unwrap_or_else(uuid::Uuid::new_v4);
            orderflow::operator::apply(&settings, &pool, command_id, &change, "").await?;
            eprintln!("{done} (command {command_id}); the payment step applies it");
        }
        Command::Replay {
            until,
            force_switch,
            compare_copy,
            batch,
            from_archive,
        } => {
            let pool = components::prepare_database(&settings, false).await?;
            let options = projections::rebuild::Options {
                until,
                force_switch,
                compare_copy,
                batch: batch as usize,
                archive: from_archive,
                ..Default::default()
            };
            return orderflow::replay::run(&settings, &pool, &options).await;
        }
        Command::Restore {
            archive,
            stock,
            keys,
        } => {
            let dir = match archive {
                Some(dir) => dir,
                None if !settings.archive.dir.is_empty() => PathBuf::from(&settings.archive.dir),
                None => anyhow::bail!(
                    "no archive given: pass --archive DIR or set archive.dir (ORDERFLOW_ARCHIVE__DIR)"
                ),
            };
            if let Some(path) = stock {
                anyhow::bail!(
                    "--stock {} is no longer taken: the archive now carries stock (StockAdjusted) \
                     and customer blocks as events, and the restore applies them; drop the option",
                    path.display()
                );
            }
            let pool = components::prepare_database(&settings, false).await?;
            let report =
                orderflow::restore::restore_with_keys(&settings, &pool, &dir, keys.as_deref())
                    .await?;
            print!("{report}");
        }
        Command::Archive { dir, check } => {
            let mut settings = settings.clone();
            if let Some(dir) = dir {
                settings.archive.dir = dir.display().to_string();
            }
            return archive(&settings, check).await;
        }
        Command::SynthLog { orders, seed, days } => {
            let started = std::time::Instant::now();
            let options = orderflow::synth::SynthOptions { orders, seed, days };
            let events = orderflow::synth::run(&settings, &options).await?;
            let took = started.elapsed().as_secs_f64();
            eprintln!(
                "wrote {events} events of {orders} orders to {} in {took:.1} s ({:.0} events/s)",
                settings.kafka.topic,
                events as f64 / took.max(1e-9)
            );
        }
        Command::State {
            action: StateAction::Digest { dump },
        } => {
            let pool = components::prepare_database(&settings, false).await?;
            for d in orderflow::state::digests(&pool).await? {
                println!("{:<36} {:>10} {}", d.table, d.rows, d.checksum);
            }
            if let Some(dir) = dump {
                orderflow::state::dump(&pool, &dir).await?;
            }
        }
        Command::ApiKeys { action } => {
            let pepper = settings.api.auth.pepper()?.context(
                "no API key pepper: set api.auth.api_key_pepper_file or OFK_PEPPER \
                 (the same one the API uses)",
            )?;
            let pool = components::prepare_database(&settings, false).await?;
            let keys = access::api_keys::ApiKeys::new(pool, pepper);
            match action {
                ApiKeyAction::Create {
                    name,
                    role,
                    customer,
                } => {
                    let role = access::Role::parse(role.trim()).with_context(|| {
                        format!("--role {role:?}: use customer, service, operator or analyst")
                    })?;
                    let (key, info) = keys.create(&name, role, customer.as_deref()).await?;
                    eprintln!(
                        "created API key ofk_{} ({}, role {}); it is shown only now:",
                        info.id, info.name, info.role
                    );
                    println!("{key}");
                }
                ApiKeyAction::List => {
                    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
                        t.map_or("-".to_string(), |t| {
                            t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
                        })
                    };
                    println!("id\tname\trole\tcustomer\tcreated\tlast_used\trevoked");
                    for k in keys.list().await? {
                        println!(
                            "ofk_{}\t{}\t{}\t{}\t{}\t{}\t{}",
                            k.id,
                            k.name,
                            k.role,
                            k.customer_id.as_deref().unwrap_or("-"),
                            time(Some(k.created_at)),
                            time(k.last_used_at),
                            time(k.revoked_at)
                        );
                    }
                }
                ApiKeyAction::Revoke { id } => {
                    keys.revoke(&id).await?;
                    eprintln!("revoked API key {id}");
                }
            }
        }
        Command::Generations { action } => {
            let pool = components::prepare_database(&settings, false).await?;
            match action {
                GenerationAction::List => orderflow::replay::list(&pool).await?,
                GenerationAction::Drop { generation } => {
                    let dropped = projections::generations::drop(&pool, generation).await?;
                    eprintln!(
                        "dropped generation {generation} (schema {})",
                        dropped.schema_name
                    );
                }
            }
        }
        Command::Check {
            orders,
            order_prefix,
            initial_stock,
            demo_outcomes,
            rebuild,
            wait_zero_lag,
            json,
        } => {
            let options = orderflow::check::Options {
                orders,
                order_prefix,
                initial_stock,
                demo_outcomes,
                rebuild,
                wait_zero_lag: wait_zero_lag.map(Duration::from_secs),
                json,
            };
            return Ok(orderflow::check::run(&settings, &options).await);
        }
        Command::Status {
            json,
            component,
            watch,
            max_dead_letters,
            max_parked,
            max_lag,
            max_outbox_age_secs,
            max_freshness_secs,
            max_archive_lag_secs,
        } => {
            let options = orderflow::status::Options {
                component,
                json,
                watch: watch.map(Duration::from_secs),
                thresholds: orderflow::status::Thresholds {
                    max_dead_letters,
                    max_parked,
                    max_lag,
                    max_outbox_age_secs,
                    max_freshness_secs,
                    max_archive_lag_secs,
                },
            };
            return Ok(orderflow::status::run(&settings, &options).await);
        }
        Command::Keys {
            action: KeysAction::Export { file },
        } => {
            let pool = components::prepare_database(&settings, false).await?;
            let n = orderflow::keys::export(&pool, &file).await?;
            eprintln!("{n} data keys (wrapped) written to {}", file.display());
        }
        Command::Keys {
            action: KeysAction::Import { file },
        } => {
            let pool = components::prepare_database(&settings, false).await?;
            let i = orderflow::keys::import(&settings, &pool, &file).await?;
            eprintln!(
                "{} key records read from {}: {} added, {} destroyed",
                i.records,
                file.display(),
                i.added,
                i.destroyed
            );
        }
        Command::Keys {
            action: KeysAction::NewMasterKey,
        } => {
            println!("{}", privacy::MasterKey::generate_base64());
        }
        Command::Dlq { action } => {
            return orderflow::dlq::run(&settings, action_to_request(action)).await;
        }
        Command::Bench(options) => {
            let stop = platform::shutdown::on_signals();
            orderflow::bench::run(&settings, cli.config.as_deref(), &options, stop).await?;
        }
        Command::Demo {
            orders,
            timeout_secs,
            seed,
            external,
            rate,
        } => {
            let pool = components::prepare_database(&settings, true).await?;
            components::ensure_topics(&settings, settings.kafka.partitions).await?;
            let shutdown = platform::shutdown::on_signals();
            // Components in this process get the admin listener, as `orderflow run` would.
            let (admin, set) = if external {
                (None, None)
            } else {
                let readiness = platform::admin::Readiness::default();
                let admin = components::admin(&settings, &pool, &readiness, &shutdown).await?;
                let set = components::start_watched(
                    &Component::ALL,
                    &settings,
                    &pool,
                    &shutdown,
                    &readiness,
                )?;
                (admin, Some(set))
            };
            let options = DemoOptions {
                orders,
                timeout: Duration::from_secs(timeout_secs),
                seed,
                rate_per_sec: rate,
            };
            let result = tokio::select! {
                result = demo::run(&settings, &pool, &options) => result.map(|_| ()),
                _ = shutdown.cancelled() => Err(anyhow::anyhow!("interrupted")),
            };
            shutdown.cancel();
            if let Some(set) = set {
                components::supervise(set, &shutdown).await?;
            }
            drop(admin);
            result?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn archive(settings: &Settings, check: bool) -> anyhow::Result<ExitCode> {
    use archive::{Archiver, Manifest};
    if check {
        anyhow::ensure!(
            !settings.archive.dir.is_empty(),
            "give the archive with --dir or archive.dir"
        );
        let dir = PathBuf::from(&settings.archive.dir);
        let manifest = Manifest::load(&dir, &settings.kafka.topic)?;
        let found = archive::check(&dir, &manifest)?;
        for problem in &found.problems {
            eprintln!("{}: {problem}", dir.display());
        }
        eprintln!(
            "{}: {} files, {} records, {} problems",
            dir.display(),
            found.files,
            found.records,
            found.problems.len()
        );
        return Ok(if found.problems.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let archiver = Archiver::open(&settings.kafka, &settings.archive)?;
    let shutdown = platform::shutdown::on_signals();
    let started = std::time::Instant::now();
    let run = archiver.run(&settings.kafka, true, shutdown).await?;
    eprintln!(
        "archived {} records into {} files in {:.2} s ({})",
        run.records,
        run.files,
        started.elapsed().as_secs_f64(),
        settings.archive.dir
    );
    Ok(ExitCode::SUCCESS)
}

fn action_to_request(action: DlqAction) -> orderflow::dlq::Request {
    use orderflow::dlq::Request;
    match action {
        DlqAction::List { consumer, all } => Request::List { consumer, all },
        DlqAction::Show { id } => Request::Show { id },
        DlqAction::Redrive {
            consumer,
            ids,
            dry_run,
        } => Request::Redrive {
            consumer,
            ids,
            dry_run,
        },
    }
}

async fn publish(settings: &Settings, file: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let publisher = producers::Publisher::intake(&settings.kafka, "orderflow-publish")?;
    let reader: Box<dyn BufRead> = match &file {
        Some(path) if path.as_os_str() != "-" => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        )),
        _ => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    let source = file
        .as_ref()
        .map_or_else(|| "stdin".to_string(), |p| p.display().to_string());
    let report = publisher.publish_lines(reader).await?;
    publisher.flush_all(Duration::from_secs(30))?;
    for (line, reason) in &report.failed {
        eprintln!("{source}:{line}: {reason}");
    }
    eprintln!(
        "published {} orders to {}; {} lines failed",
        report.published,
        settings.kafka.intake_topic,
        report.failed.len()
    );
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
