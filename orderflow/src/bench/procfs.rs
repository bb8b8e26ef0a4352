//! What the benchmark reads from `/proc`: CPU time and memory of the processes it watches —
//! the `orderflow run` child, the Postgres cluster serving the bench database, the Kafka
//! broker JVM and the bench itself — and how it finds them. Parsing is pure (tested on sample
//! text); only the `read_*` and `find_*` functions touch the file system. Nothing here writes
//! to a process except [`reset_peak_rss`], which asks the kernel to restart one child's
//! VmHWM.

use std::collections::BTreeSet;

/// The fields of `/proc/<pid>/stat` the benchmark uses. Times are in clock ticks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub pid: i32,
    pub comm: String,
    pub ppid: i32,
    pub utime: u64,
    pub stime: u64,
    /// CPU time of children the process has waited for (a postmaster's exited backends).
    pub cutime: u64,
    pub cstime: u64,
}

impl Stat {
    /// The process's own CPU time plus that of its reaped children.
    pub fn total_ticks(&self) -> u64 {
        self.utime + self.stime + self.cutime + self.cstime
    }
}

/// Parse one `/proc/<pid>/stat` line. `comm` may hold spaces and parentheses, so it runs from
/// the first `(` to the last `)`; the numbered fields follow (see proc(5)).
pub fn parse_stat(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest: Vec<&str> = text[close + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let field = |n: usize| -> Option<u64> { rest.get(n - 3)?.parse().ok() };
    Some(Stat {
        pid,
        comm,
        ppid: rest.get(1)?.parse().ok()?,
        utime: field(14)?,
        stime: field(15)?,
        cutime: field(16)?,
        cstime: field(17)?,
    })
}

/// Resident memory from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Memory {
    /// VmRSS: resident now.
    pub rss_kb: u64,
    /// VmHWM: the most resident since the process started or its peak was last reset.
    pub hwm_kb: u64,
}

pub fn parse_status(text: &str) -> Option<Memory> {
    let value = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].split_whitespace().next()?.parse().ok()
    };
    Some(Memory {
        rss_kb: value("VmRSS:")?,
        hwm_kb: value("VmHWM:")?,
    })
}

pub fn read_stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

pub fn read_memory(pid: i32) -> Option<Memory> {
    parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Restart `pid`'s VmHWM at its current RSS (`echo 5 > clear_refs`, Linux 4.0+), so a phase's
/// peak is its own. False when the kernel or the permissions refuse; the peak then counts
/// from the process's start.
pub fn reset_peak_rss(pid: i32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Busy CPU ticks of the whole machine (all cores) from the first line of `/proc/stat`:
/// user + nice + system + irq + softirq + steal (guest time is already inside user).
pub fn parse_machine_busy(proc_stat: &str) -> Option<u64> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let field = |i: usize| values.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal guest guest_nice
    (values.len() >= 4).then(|| field(0) + field(1) + field(2) + field(5) + field(6) + field(7))
}

pub fn read_machine_busy() -> Option<u64> {
    parse_machine_busy(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Every process's stat, read once.
pub fn all_stats() -> Vec<Stat> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let name = entry.ok()?.file_name();
        let pid: i32 = name.to_str()?.parse().ok()?;
        read_stat(pid)
    })
    .collect()
}

/// CPU ticks of a process tree one level deep: `root` with its reaped children's time, plus
/// every live child with theirs. That is how a Postgres cluster's time adds up: the postmaster
/// forks a backend per connection and reaps it on exit, so a backend that came and went during
/// a phase is counted through the postmaster's `cutime`/`cstime`.
pub fn tree_ticks(stats: &[Stat], root: i32) -> Option<u64> {
    let root_stat = stats.iter().find(|s| s.pid == root)?;
    let children: u64 = stats
        .iter()
        .filter(|s| s.ppid == root)
        .map(Stat::total_ticks)
        .sum();
    Some(root_stat.total_ticks() + children)
}

/// CPU ticks, by process, of what the bench does not watch: (user processes, kernel threads).
/// Only a process's own time counts (not its reaped children's: a shell whose hour-long test
/// run ends in between would count the whole hour); one that started in between counts from
/// zero; one that ended in between is missed. A lower bound, as a disturbance indicator.
pub fn unwatched_ticks(
    before: &[Stat],
    after: &[Stat],
    watched: impl Fn(&Stat) -> bool,
) -> (u64, u64) {
    let own = |s: &Stat| s.utime + s.stime;
    let start: std::collections::HashMap<i32, u64> =
        before.iter().map(|s| (s.pid, own(s))).collect();
    let (mut processes, mut kernel) = (0, 0);
    for stat in after.iter().filter(|s| !watched(s)) {
        let spent = own(stat).saturating_sub(start.get(&stat.pid).copied().unwrap_or(0));
        // Kernel threads are kthreadd (pid 2) and its children.
        if stat.pid == 2 || stat.ppid == 2 {
            kernel += spent;
        } else {
            processes += spent;
        }
    }
    (processes, kernel)
}

/// Socket inodes listening on TCP `port`, from the text of `/proc/net/tcp` or `tcp6`.
pub fn listening_inodes(net_tcp: &str, port: u16) -> BTreeSet<u64> {
    net_tcp
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            let inode: u64 = fields.get(9)?.parse().ok()?;
            let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            // 0A is TCP_LISTEN.
            (local_port == port && *state == "0A" && inode != 0).then_some(inode)
        })
        .collect()
}

/// The process holding a socket with one of `inodes` open (searching every process's fds).
fn socket_owner(inodes: &BTreeSet<u64>) -> Option<i32> {
    let dir = std::fs::read_dir("/proc").ok()?;
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            let inode = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok());
            if inode.is_some_and(|i| inodes.contains(&i)) {
                return Some(pid);
            }
        }
    }
    None
}

fn cmdline(pid: i32) -> Option<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(String::from_utf8_lossy(&bytes).replace('\0', " "))
}

/// The local Kafka broker processes of `brokers` (`host:port,...`): the process listening on
/// each local port, else every JVM whose command line runs `kafka.Kafka`. Empty when the
/// brokers are elsewhere (their CPU is then not reported).
pub fn find_kafka(brokers: &str) -> (Vec<i32>, &'static str) {
    let mut inodes = BTreeSet::new();
    let tables: String = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect::<Vec<_>>()
        .join("\n");
    for broker in brokers.split(',') {
        let Some((host, port)) = broker.trim().rsplit_once(':') else {
            continue;
        };
        let local = matches!(host, "localhost" | "::1" | "[::1]") || host.starts_with("127.");
        if let (true, Ok(port)) = (local, port.parse::<u16>()) {
            inodes.extend(listening_inodes(&tables, port));
        }
    }
    let mut pids: Vec<i32> = Vec::new();
    if !inodes.is_empty() {
        // One broker per port; find each listener's owner.
        for inode in &inodes {
            if let Some(pid) = socket_owner(&BTreeSet::from([*inode])) {
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
    }
    if !pids.is_empty() {
        return (pids, "listening port");
    }
    let by_cmdline: Vec<i32> = all_stats()
        .iter()
        .filter(|s| cmdline(s.pid).is_some_and(|c| c.contains(" kafka.Kafka ")))
        .map(|s| s.pid)
        .collect();
    (by_cmdline, "command line kafka.Kafka")
}

/// The postmaster of a backend: its parent, if that runs `postgres`.
pub fn postmaster_of(backend_pid: i32) -> Option<i32> {
    let parent = read_stat(backend_pid)?.ppid;
    let line = cmdline(parent)?;
    line.contains("postgres").then_some(parent)
}

/// Clock ticks per second, for turning `/proc` times into seconds.
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value; it has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        // USER_HZ is 100 on every Linux platform this runs on.
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_whatever_the_command_name() {
        let cases = [
            (
                "14998 (postgres) S 1 14998 14998 0 -1 4194560 3532 2107612 0 11 37 52 12913 8155 20 0 1 0 2301 229457920 9347 18446744073709551615 1 1 0 0 0 0 4194304 19935232 1124 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0",
                Stat { pid: 14998, comm: "postgres".into(), ppid: 1, utime: 37, stime: 52, cutime: 12913, cstime: 8155 },
            ),
            (
                "4242 (tokio-rt (worker) 1) R 4200 4242 1 0 -1 4194304 100 0 0 0 1234 567 0 0 20 0 8 0 999 1000 200 18446744073709551615",
                Stat { pid: 4242, comm: "tokio-rt (worker) 1".into(), ppid: 4200, utime: 1234, stime: 567, cutime: 0, cstime: 0 },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(parse_stat(text), Some(want), "{text}");
        }
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("12 (x) S 1 2 3"), None, "too few fields");
        assert_eq!(
            parse_stat(
                "14998 (postgres) S 1 14998 14998 0 -1 4194560 3532 2107612 0 11 37 52 12913 8155 20"
            )
            .map(|s| s.total_ticks()),
            Some(37 + 52 + 12913 + 8155)
        );
    }

    #[test]
    fn status_gives_rss_and_peak() {
        let text = "Name:\torderflow\nUmask:\t0022\nState:\tS (sleeping)\nVmPeak:\t 2148000 kB\n\
                    VmSize:\t 2100000 kB\nVmHWM:\t   91234 kB\nVmRSS:\t   80512 kB\nThreads:\t12\n";
        assert_eq!(
            parse_status(text),
            Some(Memory {
                rss_kb: 80_512,
                hwm_kb: 91_234
            })
        );
        // A kernel thread or a zombie has no Vm lines.
        assert_eq!(parse_status("Name:\tkthreadd\nState:\tS\n"), None);
    }

    #[test]
    fn a_cluster_counts_its_live_and_reaped_children() {
        let stat = |pid, ppid, utime, stime, cutime, cstime| Stat {
            pid,
            comm: "postgres".into(),
            ppid,
            utime,
            stime,
            cutime,
            cstime,
        };
        let stats = vec![
            stat(100, 1, 10, 5, 300, 200), // postmaster, with exited backends' time
            stat(101, 100, 7, 3, 0, 0),    // checkpointer
            stat(102, 100, 40, 20, 0, 0),  // a backend
            stat(200, 1, 999, 999, 0, 0),  // something else
            stat(201, 200, 999, 999, 0, 0),
        ];
        assert_eq!(tree_ticks(&stats, 100), Some(15 + 500 + 10 + 60));
        assert_eq!(tree_ticks(&stats, 555), None);
    }

    #[test]
    fn unwatched_time_is_split_into_processes_and_kernel_threads() {
        let stat = |pid, ppid, utime| Stat {
            pid,
            comm: "x".into(),
            ppid,
            utime,
            stime: 0,
            cutime: 0,
            cstime: 0,
        };
        let before = vec![
            stat(2, 0, 1),
            stat(40, 2, 10),
            stat(500, 1, 100),
            stat(600, 1, 7),
            stat(700, 1, 3),
        ];
        // 40 a kernel worker, 500 watched, 600 someone's shell, 800 new, 700 ended.
        let after = vec![
            stat(2, 0, 1),
            stat(40, 2, 25),
            stat(500, 1, 900),
            stat(600, 1, 9),
            stat(800, 600, 30),
        ];
        assert_eq!(
            unwatched_ticks(&before, &after, |s| s.pid == 500),
            (2 + 30, 15)
        );
    }

    #[test]
    fn machine_busy_time_leaves_idle_and_iowait_out() {
        let text = "cpu  100 5 50 9000 40 3 2 1 0 0\ncpu0 50 2 25 4500 20 1 1 0 0 0\nintr 1 2 3\n";
        assert_eq!(parse_machine_busy(text), Some(100 + 5 + 50 + 3 + 2 + 1));
        assert_eq!(
            parse_machine_busy("cpu  1 2 3 4\n"),
            Some(6),
            "an old kernel's four fields"
        );
        assert_eq!(parse_machine_busy("intr 1 2 3\n"), None);
    }

    #[test]
    fn listeners_are_found_by_port() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:2384 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 718964 1 0000000000000000 100 0 0 10 0\n\
           1: 0100007F:2384 0100007F:D1A2 01 00000000:00000000 00:00000000 00000000     0        0 720001 1 0000000000000000 20 4 30 10 -1\n\
           2: 00000000:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        0 516 1 0000000000000000 100 0 0 10 0\n";
        // 0x2384 = 9092, 0x1538 = 5432; the established connection on 9092 is not a listener.
        assert_eq!(listening_inodes(tcp, 9092), BTreeSet::from([718_964]));
        assert_eq!(listening_inodes(tcp, 5432), BTreeSet::from([516]));
        assert!(listening_inodes(tcp, 9093).is_empty());
    }
}
