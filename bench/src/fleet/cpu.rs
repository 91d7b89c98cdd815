//! CPU time of whole processes: user and system time from `/proc/PID/stat` (every thread the
//! process has had, exited ones included), and of this process's waited-for children.
//!
//! System time is the kernel's work on the process's behalf, in its syscalls: for a bouncer,
//! the netlink messages that fill an nftables set or the `bpf()` calls that fill a BPF map.

use std::path::Path;

use anyhow::Context as _;

/// User and system CPU time, seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cpu {
    pub user: f64,
    pub sys: f64,
}

impl Cpu {
    pub fn total(self) -> f64 {
        self.user + self.sys
    }

    /// What was spent since `before`.
    pub fn since(self, before: Self) -> Self {
        Self {
            user: (self.user - before.user).max(0.0),
            sys: (self.sys - before.sys).max(0.0),
        }
    }
}

/// Clock ticks per second, the unit of `/proc/PID/stat`'s times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads its integer argument.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// CPU time of process `pid` so far.
pub fn process_cpu(pid: u32) -> anyhow::Result<Cpu> {
    let path = Path::new("/proc").join(pid.to_string()).join("stat");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    parse_stat(&text, ticks_per_second()).with_context(|| format!("parse {}", path.display()))
}

/// utime and stime of a `/proc/PID/stat` line (fields 14 and 15; the command name, field 2, may
/// hold spaces and parentheses, so the fields are counted after its last `)`).
fn parse_stat(text: &str, ticks: f64) -> Option<Cpu> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state).
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Cpu {
        user: field(14)? as f64 / ticks,
        sys: field(15)? as f64 / ticks,
    })
}

/// CPU time of the children this process has waited for so far.
pub fn children_cpu() -> Cpu {
    // SAFETY: an all-zero rusage is a valid value of the plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage; RUSAGE_CHILDREN is a constant the kernel knows.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    if rc != 0 {
        return Cpu::default();
    }
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    Cpu {
        user: seconds(usage.ru_utime),
        sys: seconds(usage.ru_stime),
    }
}

/// Moves every thread of process `pid` to `cpu`.
pub fn pin_process(pid: u32, cpu: usize) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu)?;
    let tasks = Path::new("/proc").join(pid.to_string()).join("task");
    for entry in std::fs::read_dir(&tasks).with_context(|| format!("read {}", tasks.display()))? {
        let Some(tid) = entry?
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        // A thread may exit meanwhile; the others still move.
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set);
    }
    Ok(())
}

/// Resident memory of process `pid`, MiB.
pub fn rss_mib(pid: u32) -> Option<f64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map(|kib| kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_are_read_after_the_command_name() {
        let line = "4242 (crowdsec-fire) b) S 1 4242 4242 0 -1 4194560 100 0 0 0 350 2100 0 0 20 0 8 0 1 1 1";
        assert_eq!(
            parse_stat(line, 100.0),
            Some(Cpu {
                user: 3.5,
                sys: 21.0
            })
        );
        assert_eq!(parse_stat("garbage", 100.0), None);
        let spent = Cpu {
            user: 2.0,
            sys: 5.0,
        }
        .since(Cpu {
            user: 1.5,
            sys: 1.0,
        });
        assert_eq!(spent.total(), 4.5);
    }

    #[test]
    fn this_process_has_cpu_time() {
        let own = process_cpu(std::process::id()).unwrap();
        assert!(own.total() >= 0.0);
        assert!(rss_mib(std::process::id()).is_some_and(|mib| mib > 0.0));
    }
}
