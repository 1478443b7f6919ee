//! A log line that cannot flood: at most one per interval, saying how many
//! it stands for.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// Lets one log line through per interval and counts the ones it held back,
/// so a flood of refusals (or of dropped deliveries) writes a line every few
/// seconds with a count, not a line per event.
pub(crate) struct Throttle {
    every: Duration,
    state: Mutex<Window>,
}

struct Window {
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    pub(crate) const fn new(every: Duration) -> Self {
        Self {
            every,
            state: Mutex::new(Window {
                last: None,
                held: 0,
            }),
        }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were held
    /// back since the last one; `None` when this one is held back.
    pub(crate) fn pass(&self) -> Option<u64> {
        let now = Instant::now();
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match w.last {
            Some(last) if now.duration_since(last) < self.every => {
                w.held += 1;
                None
            }
            _ => {
                w.last = Some(now);
                Some(std::mem::take(&mut w.held))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_held_back() {
        let t = Throttle::new(Duration::from_millis(50));
        assert_eq!(t.pass(), Some(0));
        assert_eq!(t.pass(), None);
        assert_eq!(t.pass(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.pass(), Some(2));
    }
}
