//! Gauges sampled by the admin listener's probe task: the process's resident memory and CPU
//! time (from `/proc/self`, Linux) and the Postgres pool's connections.

use sqlx::PgPool;

use crate::metrics::names::{DB_POOL_CONNECTIONS, PROCESS_CPU, PROCESS_RESIDENT_MEMORY};

/// User + system CPU ticks of a `/proc/<pid>/stat` line, or `None` if it is not one. The
/// command name (field 2) may hold spaces and parentheses, so fields are counted after its
/// closing parenthesis: utime and stime are the 14th and 15th fields of the line.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident pages of a `/proc/<pid>/statm` line (its second field).
pub fn resident_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// Reads `/proc/self` into the process gauges.
pub struct CpuClock {
    ticks_per_second: f64,
    page_bytes: f64,
}

impl CpuClock {
    pub fn new() -> Self {
        // SAFETY: sysconf reads a constant of the system and has no preconditions.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        CpuClock {
            // Linux's values when sysconf cannot say (it returns -1).
            ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
            page_bytes: if page > 0 { page as f64 } else { 4096.0 },
        }
    }

    /// Set `orderflow_process_cpu_seconds_total` and `orderflow_process_resident_memory_bytes`;
    /// on a system without `/proc` they are simply not set.
    pub fn sample(&mut self) {
        if let Some(ticks) = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .as_deref()
            .and_then(cpu_ticks)
        {
            metrics::gauge!(PROCESS_CPU).set(ticks as f64 / self.ticks_per_second);
        }
        if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .as_deref()
            .and_then(resident_pages)
        {
            metrics::gauge!(PROCESS_RESIDENT_MEMORY).set(pages as f64 * self.page_bytes);
        }
    }
}

impl Default for CpuClock {
    fn default() -> Self {
        CpuClock::new()
    }
}

/// Set `orderflow_db_pool_connections{state}` from the pool's own counts.
pub fn sample_pool(pool: &PgPool) {
    let size = pool.size() as usize;
    let idle = pool.num_idle().min(size);
    metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "in_use").set((size - idle) as f64);
    metrics::gauge!(DB_POOL_CONNECTIONS, "state" => "idle").set(idle as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_after_the_command_name() {
        // A command name with a space and a parenthesis, as a thread may name itself.
        let line = "4711 (tokio (rt) x) S 1 4711 4711 0 -1 4194560 900 0 0 0 250 75 0 0 20 0 9 0 \
                    123 456789 1234 18446744073709551615";
        assert_eq!(cpu_ticks(line), Some(325));
        assert_eq!(cpu_ticks("4711 (short) S 1 2"), None);
        assert_eq!(cpu_ticks("no parenthesis"), None);
        assert_eq!(resident_pages("2048 512 100 1 0 300 0\n"), Some(512));
        assert_eq!(resident_pages(""), None);
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc");
        assert!(cpu_ticks(&stat).is_some(), "{stat}");
        let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
        assert!(resident_pages(&statm).is_some_and(|p| p > 0), "{statm}");
    }
}
