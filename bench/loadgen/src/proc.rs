//! `proc`: memory, CPU and thread figures of a process (and optionally its
//! descendants), for the orchestrator to sample around a measured window.

use std::collections::HashMap;

use serde_json::json;

use crate::ProcArgs;
use crate::common::{self, ProcSample};

/// `pid` and every live descendant of it.
fn descendants(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Ok((ppid, _)) = common::read_stat(&p.to_string()) {
                children.entry(ppid).or_default().push(p);
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c.iter().copied().filter(|&c| c != pid));
        }
        i += 1;
    }
    out
}

pub fn run(args: ProcArgs) -> Result<(), String> {
    let pid = args.pid.unwrap_or_else(std::process::id);
    let root = common::read_proc(&pid.to_string()).map_err(|e| format!("pid {pid}: {e}"))?;
    let pids = if args.children {
        descendants(pid)
    } else {
        vec![pid]
    };
    let mut total = ProcSample::default();
    let mut counted = Vec::new();
    for p in &pids {
        // A descendant may exit between listing and reading: skip it.
        let s = if *p == pid {
            root
        } else {
            match common::read_proc(&p.to_string()) {
                Ok(s) => s,
                Err(_) => continue,
            }
        };
        total.cpu_ticks += s.cpu_ticks;
        total.rss_bytes += s.rss_bytes;
        total.threads += s.threads;
        counted.push(*p);
    }
    let tck = common::clk_tck();
    common::emit(&json!({
        "pid": pid,
        "pids": counted,
        "unix_ns": common::now_unix_ns(),
        "rss_bytes": total.rss_bytes,
        "cpu_ticks": total.cpu_ticks,
        "clk_tck": tck,
        "cpu_secs": total.cpu_ticks as f64 / tck as f64,
        "threads": total.threads,
    }));
    Ok(())
}
