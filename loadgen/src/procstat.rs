//! CPU time and memory of processes, read from `/proc/<pid>` (Linux).
//!
//! For a multi-process server (nginx: master + workers) pass every pid; the figures are
//! summed. RSS counts shared pages once per process, so for several processes sharing memory
//! (nchan's shared-memory zone) PSS (proportional set size) is the fairer sum; both are given.

use std::fs;

/// One reading of a set of processes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// User + system CPU seconds.
    pub cpu_s: f64,
    pub rss_bytes: u64,
    pub pss_bytes: u64,
    /// Processes that could not be read (exited?).
    pub missing: usize,
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// Reads CPU seconds of `pid` from `/proc/<pid>/stat` (utime + stime).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields after its closing paren are fixed.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clk_tck())
}

fn kb_field(text: &str, key: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// Resident and proportional set size of `pid`, in bytes.
pub fn memory(pid: u32) -> Option<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = kb_field(&status, "VmRSS:")?;
    let pss =
        fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok().and_then(|t| kb_field(&t, "Pss:")).unwrap_or(rss);
    Some((rss, pss))
}

/// Sums CPU and memory over `pids`.
pub fn sample(pids: &[u32]) -> Sample {
    let mut s = Sample::default();
    for &pid in pids {
        match (cpu_seconds(pid), memory(pid)) {
            (Some(cpu), Some((rss, pss))) => {
                s.cpu_s += cpu;
                s.rss_bytes += rss;
                s.pss_bytes += pss;
            }
            _ => s.missing += 1,
        }
    }
    s
}

/// This process (the load generator): CPU from getrusage (all threads), memory from /proc.
pub fn this_process() -> Sample {
    let mut s = sample(&[std::process::id()]);
    // SAFETY: getrusage writes into the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } == 0 {
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        s.cpu_s = tv(ru.ru_utime) + tv(ru.ru_stime);
    }
    s
}

/// Raises RLIMIT_NOFILE to at least `want` (soft and, if needed and permitted, hard).
/// Returns the soft limit in force afterwards.
pub fn raise_nofile(want: u64) -> u64 {
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return 0;
        }
        if r.rlim_cur >= want as libc::rlim_t {
            return r.rlim_cur as u64;
        }
        let mut n = r;
        n.rlim_cur = want as libc::rlim_t;
        if n.rlim_max < n.rlim_cur {
            n.rlim_max = n.rlim_cur; // needs CAP_SYS_RESOURCE (root); else falls back below
        }
        if libc::setrlimit(libc::RLIMIT_NOFILE, &n) != 0 {
            n = r;
            n.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &n);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur as u64
    }
}

/// Counters of the `TcpExt` line of `/proc/net/netstat` (this network namespace, every
/// process in it): `ListenOverflows` counts connects dropped because a listen queue was full,
/// each of which costs its client a SYN retransmission (1 s, then 3 s, …). `None` for names
/// the kernel does not have (or when the file cannot be read).
pub fn tcp_ext(names: &[&str]) -> Vec<Option<u64>> {
    let text = fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut rows = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(keys), Some(values)) = (rows.next(), rows.next()) else { return vec![None; names.len()] };
    let pairs: Vec<(&str, &str)> = keys.split_whitespace().zip(values.split_whitespace()).skip(1).collect();
    names.iter().map(|n| pairs.iter().find(|(k, _)| k == n).and_then(|(_, v)| v.parse().ok())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let s = sample(&[std::process::id()]);
        assert_eq!(s.missing, 0);
        assert!(s.rss_bytes > 0 && s.pss_bytes > 0);
        assert!(cpu_seconds(std::process::id()).is_some());
        assert_eq!(sample(&[u32::MAX]).missing, 1);
        let c = tcp_ext(&["ListenOverflows", "NoSuchCounter"]);
        assert!(c[0].is_some() && c[1].is_none());
    }
}
