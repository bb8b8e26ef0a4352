//! The live flags file (`api.flags_file`, TOML): what an operator may change without a
//! restart — `accept_orders` (false: maintenance, `POST /v1/orders` answers `503` with
//! `Retry-After`) and the rate limits per role. [`LiveFlags::reload`] replaces the flags whole;
//! a file that does not parse keeps the flags in force (and says why in the log). [`watch`]
//! reloads on SIGHUP and when a watched file's modification time or size changes.

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::principal::Role;

/// One token bucket's shape: `burst` requests at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub per_minute: u32,
    pub burst: u32,
}

/// The buckets per role, and per client address for unauthenticated requests.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    pub customer: Limit,
    pub service: Limit,
    pub operator: Limit,
    pub analyst: Limit,
    /// Per client address, for requests without valid credentials (they are answered `401`,
    /// but guessing credentials is rate-limited too).
    pub unauthenticated: Limit,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            customer: Limit {
                per_minute: 120,
                burst: 30,
            },
            service: Limit {
                per_minute: 6_000,
                burst: 500,
            },
            operator: Limit {
                per_minute: 600,
                burst: 100,
            },
            analyst: Limit {
                per_minute: 600,
                burst: 100,
            },
            unauthenticated: Limit {
                per_minute: 60,
                burst: 20,
            },
        }
    }
}

impl RateLimits {
    pub fn of(&self, role: Option<Role>) -> Limit {
        match role {
            Some(Role::Customer) => self.customer,
            Some(Role::Service) => self.service,
            Some(Role::Operator) => self.operator,
            Some(Role::Analyst) => self.analyst,
            None => self.unauthenticated,
        }
    }
}

/// The flags file.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Flags {
    /// `false`: maintenance; new orders are answered `503` with `Retry-After`.
    pub accept_orders: bool,
    /// The `Retry-After` of maintenance and load-shedding answers, in seconds.
    pub retry_after_secs: u32,
    pub rate_limits: RateLimits,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            accept_orders: true,
            retry_after_secs: 30,
            rate_limits: RateLimits::default(),
        }
    }
}

/// Why a flags file was not taken (fix what is named; the flags in force stay).
#[derive(Debug, thiserror::Error)]
pub enum FlagsError {
    #[error("api.flags_file {path}: cannot read it: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("api.flags_file {path}: {reason}")]
    Parse { path: String, reason: String },
    #[error("api.flags_file {path}: {field} must be at least 1")]
    Zero { path: String, field: String },
}

impl Flags {
    /// Parse and check a flags document; `path` names it in errors.
    pub fn parse(path: &str, text: &str) -> Result<Flags, FlagsError> {
        let flags: Flags = toml::from_str(text).map_err(|e| FlagsError::Parse {
            path: path.into(),
            reason: e.to_string().trim().replace('\n', " "),
        })?;
        let limits = flags.rate_limits;
        for (name, limit) in [
            ("customer", limits.customer),
            ("service", limits.service),
            ("operator", limits.operator),
            ("analyst", limits.analyst),
            ("unauthenticated", limits.unauthenticated),
        ] {
            for (field, value) in [("per_minute", limit.per_minute), ("burst", limit.burst)] {
                if value == 0 {
                    return Err(FlagsError::Zero {
                        path: path.into(),
                        field: format!("rate_limits.{name}.{field}"),
                    });
                }
            }
        }
        if flags.retry_after_secs == 0 {
            return Err(FlagsError::Zero {
                path: path.into(),
                field: "retry_after_secs".into(),
            });
        }
        Ok(flags)
    }

    pub fn load(path: &Path) -> Result<Flags, FlagsError> {
        let text = std::fs::read_to_string(path).map_err(|source| FlagsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Flags::parse(&path.display().to_string(), &text)
    }
}

/// The flags in force, from a file or the defaults.
pub struct LiveFlags {
    path: Option<PathBuf>,
    current: RwLock<Flags>,
}

impl LiveFlags {
    /// Load `path` (the defaults without one). A file that does not load is an error here, at
    /// start; later reloads keep the flags in force instead.
    pub fn new(path: Option<PathBuf>) -> Result<LiveFlags, FlagsError> {
        let flags = match &path {
            Some(p) => Flags::load(p)?,
            None => Flags::default(),
        };
        Ok(LiveFlags {
            path,
            current: RwLock::new(flags),
        })
    }

    pub fn get(&self) -> Flags {
        // Flags are Copy and replaced whole: a poisoned lock still holds whole flags.
        *self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Read the file again; on an error the flags in force stay.
    pub fn reload(&self) -> Result<Flags, FlagsError> {
        let Some(path) = &self.path else {
            return Ok(self.get());
        };
        let flags = Flags::load(path)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = flags;
        Ok(flags)
    }
}

/// A file watched by [`watch`] and what to do when it changed (or on SIGHUP).
pub struct Watched {
    pub path: PathBuf,
    pub reload: Box<dyn Fn() + Send + Sync>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Until `shutdown`: on SIGHUP run every `reload`; every `every`, run the `reload` of each
/// file whose modification time or size changed since the last look.
pub fn watch(
    files: Vec<Watched>,
    every: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    // The stamps are taken now, not when the task first runs: a change made right after this
    // call is a change.
    let mut stamps: Vec<_> = files.iter().map(|f| stamp(&f.path)).collect();
    tokio::spawn(async move {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; files are reloaded when they change only");
                None
            }
        };
        loop {
            let hup = async {
                match hangup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = hup => {
                    tracing::info!("SIGHUP: reloading the API's keys and flags");
                    for (file, stamp_) in files.iter().zip(stamps.iter_mut()) {
                        *stamp_ = stamp(&file.path);
                        (file.reload)();
                    }
                }
                () = tokio::time::sleep(every) => {
                    for (file, old) in files.iter().zip(stamps.iter_mut()) {
                        let now = stamp(&file.path);
                        if now != *old {
                            *old = now;
                            (file.reload)();
                        }
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn flags_parse_with_defaults_and_precise_errors() {
        let flags = Flags::parse(
            "f.toml",
            "accept_orders = false\n[rate_limits.customer]\nper_minute = 6\nburst = 2\n",
        )
        .unwrap();
        assert!(!flags.accept_orders);
        assert_eq!(
            flags.rate_limits.customer,
            Limit {
                per_minute: 6,
                burst: 2
            }
        );
        assert_eq!(
            flags.rate_limits.service,
            RateLimits::default().service,
            "unset roles keep their default"
        );
        assert_eq!(Flags::parse("f.toml", "").unwrap(), Flags::default());
        for (text, expected) in [
            ("accept_order = false", "unknown field"),
            ("accept_orders = \"no\"", "invalid type"),
            (
                "[rate_limits.customer]\nper_minute = 0\nburst = 1",
                "rate_limits.customer.per_minute must be at least 1",
            ),
            (
                "[rate_limits.root]\nper_minute = 1\nburst = 1",
                "unknown field",
            ),
            (
                "retry_after_secs = 0",
                "retry_after_secs must be at least 1",
            ),
        ] {
            let error = Flags::parse("f.toml", text).unwrap_err().to_string();
            assert!(
                error.contains(expected) && error.contains("f.toml"),
                "{text:?}: {error}"
            );
        }
    }

    #[tokio::test]
    async fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_flags() {
        let path = std::env::temp_dir().join(format!("access-flags-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, "accept_orders = true\n").unwrap();
        let live = Arc::new(LiveFlags::new(Some(path.clone())).unwrap());
        let shutdown = CancellationToken::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let watched = live.clone();
        let task = watch(
            vec![Watched {
                path: path.clone(),
                reload: Box::new(move || {
                    let _ = tx.send(watched.reload().map_err(|e| e.to_string()));
                }),
            }],
            Duration::from_millis(20),
            shutdown.clone(),
        );
        assert!(live.get().accept_orders);
        // A different size guarantees a changed stamp even within one mtime tick.
        std::fs::write(&path, "accept_orders = false # maintenance\n").unwrap();
        let reloaded = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(!reloaded.unwrap().accept_orders);
        assert!(!live.get().accept_orders);

        std::fs::write(&path, "accept_orders = maybe").unwrap();
        let reloaded = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(reloaded.is_err());
        assert!(
            !live.get().accept_orders,
            "a broken file keeps the flags in force"
        );
        shutdown.cancel();
        task.await.unwrap();
        std::fs::remove_file(&path).unwrap();
    }
}
