//! Pieces shared by the modes: targets, source addresses, clocks, CPU and
//! memory figures, histogram summaries and the stop conditions.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{Value, json};

/// One server to talk to, from `--url http://host:port[/prefix]`.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port` as given, for the `Host` header and the WebSocket URL.
    pub authority: String,
    /// Resolved once at start.
    pub addr: SocketAddr,
    /// Path prefix without a trailing slash ("" for none).
    pub prefix: String,
}

/// Parses every `--url` value (each may itself be a comma list).
pub fn parse_targets(urls: &[String]) -> Result<Vec<Target>, String> {
    let mut out = Vec::new();
    for url in urls.iter().flat_map(|u| u.split(',')) {
        let url = url.trim();
        if url.is_empty() {
            continue;
        }
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("ws://"))
            .ok_or_else(|| format!("{url}: only http:// (or ws://) URLs are supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let with_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = with_port
            .to_socket_addrs()
            .map_err(|e| format!("{url}: cannot resolve {with_port}: {e}"))?
            .find(SocketAddr::is_ipv4)
            .ok_or_else(|| format!("{url}: {with_port} has no IPv4 address"))?;
        out.push(Target {
            authority: authority.to_string(),
            addr,
            prefix: path.trim_end_matches('/').to_string(),
        });
    }
    if out.is_empty() {
        return Err("no --url given".into());
    }
    Ok(out)
}

/// Checks that `<prefix>-<n>` is a valid session id (1 to 128 characters of
/// `[A-Za-z0-9._:-]`).
pub fn check_session_prefix(prefix: &str) -> Result<(), String> {
    let ok = prefix
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || b"._:-".contains(&c));
    if !ok || prefix.len() > 100 {
        return Err(format!(
            "--session-prefix {prefix:?}: session ids are 1 to 128 characters of [A-Za-z0-9._:-]"
        ));
    }
    Ok(())
}

/// Parses `127.0.0.2-127.0.0.9`, `127.0.0.2,127.0.0.3` or a mix of both.
pub fn parse_source_addrs(spec: &str) -> Result<Vec<Ipv4Addr>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parse = |s: &str| {
            s.trim()
                .parse::<Ipv4Addr>()
                .map_err(|e| format!("bad source address {s:?}: {e}"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (u32::from(parse(a)?), u32::from(parse(b)?));
                if b < a || b - a > 65_536 {
                    return Err(format!("bad source address range {part:?}"));
                }
                out.extend((a..=b).map(Ipv4Addr::from));
            }
            None => out.push(parse(part)?),
        }
    }
    if out.is_empty() {
        return Err("--source-addrs lists no address".into());
    }
    Ok(out)
}

pub fn now_unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// CPU time of this process (all threads), nanosecond resolution.
pub fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass and nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Figures read from `/proc/<pid>/stat` and `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
    pub threads: u64,
}

/// Reads the stat line: ppid, utime + stime.
pub fn read_stat(pid: &str) -> std::io::Result<(u32, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may contain anything: split after the last ')'.
    let after = s
        .rfind(')')
        .map(|i| &s[i + 1..])
        .ok_or_else(|| std::io::Error::other("malformed stat"))?;
    // Fields after the name: state(3) ppid(4) ... utime(14) stime(15).
    let f: Vec<&str> = after.split_ascii_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok((num(1) as u32, num(11) + num(12)))
}

pub fn read_proc(pid: &str) -> std::io::Result<ProcSample> {
    let (_, cpu_ticks) = read_stat(pid)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mut sample = ProcSample {
        cpu_ticks,
        ..Default::default()
    };
    for line in status.lines() {
        let value = |l: &str| {
            l.split_ascii_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if line.starts_with("VmRSS:") {
            sample.rss_bytes = value(line) * 1024;
        } else if line.starts_with("Threads:") {
            sample.threads = value(line);
        }
    }
    Ok(sample)
}

/// utime + stime of this process in seconds, from `/proc/self/stat`.
pub fn self_cpu_secs() -> f64 {
    read_stat("self").map(|(_, t)| t).unwrap_or(0) as f64 / clk_tck() as f64
}

pub fn self_rss_bytes() -> u64 {
    read_proc("self").map(|s| s.rss_bytes).unwrap_or(0)
}

/// A latency histogram in microseconds: 1 µs .. 1 hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

pub fn summary(h: &Histogram<u64>) -> Value {
    if h.is_empty() {
        return json!({"count": 0, "p50": null, "p90": null, "p99": null, "p999": null, "max": null, "mean": null});
    }
    json!({
        "count": h.len(),
        "min": h.min(),
        "p50": h.value_at_quantile(0.5),
        "p90": h.value_at_quantile(0.9),
        "p99": h.value_at_quantile(0.99),
        "p999": h.value_at_quantile(0.999),
        "max": h.max(),
        "mean": (h.mean() * 10.0).round() / 10.0,
    })
}

/// CPUs this process may run on (honours `taskset`).
pub fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Prints one JSON line on stdout.
pub fn emit(v: &Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Whether stdin is a pipe or a socket: only then does its end mean "stop"
/// (a terminal or /dev/null would end the run at once or never).
fn stdin_is_pipe() -> bool {
    // SAFETY: fstat on fd 0 fills the struct we pass.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(0, &mut st) != 0 {
            return false;
        }
        let fmt = st.st_mode & libc::S_IFMT;
        fmt == libc::S_IFIFO || fmt == libc::S_IFSOCK
    }
}

/// Resolves with the reason once SIGTERM, SIGINT, end of stdin (when stdin
/// is a pipe and `watch_stdin`) or the deadline comes.
pub async fn stop_signal(
    watch_stdin: bool,
    deadline: Option<tokio::time::Instant>,
) -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    if watch_stdin && stdin_is_pipe() {
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            let mut stdin = std::io::stdin();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let _ = tx.send(());
        });
    } else {
        // Keep the sender alive forever so that rx never resolves.
        std::mem::forget(tx);
    }
    let timeout = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term.recv() => "sigterm",
        _ = int.recv() => "sigint",
        _ = rx => "stdin_closed",
        _ = timeout => "timeout",
    }
}

/// CPU samples taken during a run, to tell whether this process was the
/// bottleneck while work was flowing.
pub struct CpuSampler {
    samples: std::sync::Mutex<Vec<(tokio::time::Instant, u64, u64)>>,
}

impl CpuSampler {
    pub fn new() -> Self {
        Self {
            samples: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn record(&self, work_done: u64) {
        let s = (tokio::time::Instant::now(), process_cpu_ns(), work_done);
        self.samples.lock().unwrap().push(s);
    }

    /// Cores busy (CPU seconds per wall second) over the intervals in which
    /// `work_done` grew, leaving out the first and last such interval (they
    /// are partly idle) when there are at least three.
    pub fn busy_cores(&self) -> Option<f64> {
        let s = self.samples.lock().unwrap();
        let mut active: Vec<(f64, f64)> = s
            .windows(2)
            .filter(|w| w[1].2 > w[0].2)
            .map(|w| {
                let wall = (w[1].0 - w[0].0).as_secs_f64();
                let cpu = w[1].1.saturating_sub(w[0].1) as f64 / 1e9;
                (wall, cpu)
            })
            .collect();
        if active.len() >= 3 {
            active.remove(0);
            active.pop();
        }
        let wall: f64 = active.iter().map(|a| a.0).sum();
        let cpu: f64 = active.iter().map(|a| a.1).sum();
        // Shorter windows say more about timer granularity than about load.
        (wall >= 0.3).then(|| cpu / wall)
    }
}

/// Spawns a task recording a CPU sample every `every`, reading the work
/// counter with `work`.
pub fn spawn_sampler<F>(
    sampler: std::sync::Arc<CpuSampler>,
    every: Duration,
    work: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn() -> u64 + Send + 'static,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            sampler.record(work());
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ranges() {
        let v = parse_source_addrs("127.0.0.2-127.0.0.4,127.0.0.9").unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[0], Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(v[3], Ipv4Addr::new(127, 0, 0, 9));
        assert!(parse_source_addrs("127.0.0.5-127.0.0.2").is_err());
    }

    #[test]
    fn targets() {
        let t = parse_targets(&["http://127.0.0.1:3000,http://127.0.0.1:3001/x/".into()]).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].addr.port(), 3000);
        assert_eq!(t[1].prefix, "/x");
        assert_eq!(t[1].authority, "127.0.0.1:3001");
        assert!(parse_targets(&["https://x".into()]).is_err());
    }

    #[test]
    fn self_proc() {
        let s = read_proc("self").unwrap();
        assert!(s.rss_bytes > 0);
        assert!(s.threads >= 1);
    }
}
