//! The process's open-file limit: raised to its hard maximum at start, and
//! the connection cap derived from it, so that a connection flood stops at
//! the cap while `/health`, `/ready`, `/metrics` and the publish API still
//! have descriptors to answer with.

use tracing::{info, warn};

/// Descriptors kept for everything that is not a client connection: the
/// listener, Redis, the ops and publish requests, log files, and the
/// connections being refused at the cap. A thirty-second of the limit, at
/// least 64 and at most 1024: a few dozen are in use at any time.
fn headroom(soft: u64) -> u64 {
    (soft / 32).clamp(64, 1024)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (logging both) and
/// returns the soft limit now in force, `None` where it cannot be read.
#[cfg(unix)]
pub(crate) fn raise() -> Option<u64> {
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        warn!(
            "could not read RLIMIT_NOFILE: {}",
            std::io::Error::last_os_error()
        );
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is u64 on Linux, not everywhere
    let (soft, hard) = (lim.rlim_cur as u64, lim.rlim_max as u64);
    if soft >= hard {
        info!(soft, hard, "open-file limit (RLIMIT_NOFILE)");
        return Some(soft);
    }
    let raised = libc::rlimit {
        rlim_cur: lim.rlim_max,
        rlim_max: lim.rlim_max,
    };
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        info!(
            was = soft,
            soft = hard,
            hard,
            "raised the open-file limit (RLIMIT_NOFILE) to its hard limit"
        );
        Some(hard)
    } else {
        warn!(
            soft,
            hard,
            "could not raise the open-file limit: {}",
            std::io::Error::last_os_error()
        );
        Some(soft)
    }
}

#[cfg(not(unix))]
pub(crate) fn raise() -> Option<u64> {
    None
}

/// The default MAX_CONNECTIONS: the open-file limit less the headroom.
pub(crate) fn default_max_connections(nofile: Option<u64>) -> usize {
    match nofile {
        Some(soft) => {
            usize::try_from(soft.saturating_sub(headroom(soft)).max(1)).unwrap_or(usize::MAX)
        }
        // Unknown: a limit no machine's descriptors would reach unnoticed.
        None => 100_000,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_leaves_room_for_ops_and_publishes() {
        assert_eq!(default_max_connections(Some(1024)), 1024 - 64);
        assert_eq!(default_max_connections(Some(20_000)), 20_000 - 625);
        assert_eq!(default_max_connections(Some(1 << 20)), (1 << 20) - 1024);
    }
}
