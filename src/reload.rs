//! What SIGHUP re-reads: the key files (`API_KEY_FILE`, `JWT_SECRET_FILE`,
//! `JWT_PUBLIC_KEY_FILE`), so that publish keys and token keys rotate
//! without a restart. One task listens and re-reads each file in turn; a
//! file that cannot be read leaves the keys it would have replaced in force,
//! and the log says why. (`cli::serve` keeps SIGHUP from stopping herald
//! when there is nothing to re-read.)

use tracing::{error, info};

/// Re-reads one file: says what is in force now, or why nothing changed.
pub(crate) type Reload = Box<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Runs every reload on every SIGHUP, for as long as it runs.
pub(crate) async fn on_sighup(reloads: Vec<Reload>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(e) => {
                error!("cannot watch SIGHUP, key files will not be re-read: {e}");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            for reload in &reloads {
                match reload() {
                    Ok(in_force) => info!("SIGHUP: {in_force}"),
                    Err(e) => error!("SIGHUP: {e}; keeping the keys in force"),
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = reloads;
}
