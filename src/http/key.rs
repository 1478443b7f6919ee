//! The publish keys in front of `/api/v1/` and `/metrics`: `Authorization:
//! Bearer <key>` against every key configured (several at once, so keys
//! rotate without downtime), from `API_KEY` (comma-separated) and
//! `API_KEY_FILE` (re-read on SIGHUP).
//!
//! A key is never logged or kept in a span: what identifies it is its
//! [`KeyId`], the first 8 hex digits of its SHA-256. Keys are compared as
//! SHA-256 digests, so the comparison takes the same time whatever the
//! lengths, and every key is compared, whichever matches.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use axum::{
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use tracing::{Instrument, info_span, warn};

use super::{ApiError, Authorized, body::drain};
use crate::config::key_lines;

/// Which key authorized a request, as logs and limits name it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct KeyId(Arc<str>);

#[cfg(test)]
impl KeyId {
    pub(crate) fn for_tests(id: &str) -> Self {
        Self(Arc::from(id))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One key, as herald holds it: its digest, never the key itself.
struct Key {
    digest: [u8; 32],
    id: KeyId,
}

impl Key {
    fn new(secret: &str) -> Self {
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let id: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            digest,
            id: KeyId(Arc::from(id.as_str())),
        }
    }
}

/// The keys of `API_KEY`, comma-separated, each trimmed; empty items ignored.
fn split_inline(keys: &str) -> impl Iterator<Item = &str> {
    keys.split(',').map(str::trim).filter(|k| !k.is_empty())
}

/// Every key that may publish, and where they come from.
pub(crate) struct KeyRing {
    /// `API_KEY`'s keys, fixed for the life of the process.
    inline: Vec<String>,
    file: Option<PathBuf>,
    current: RwLock<Arc<[Key]>>,
}

/// Why the key file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read API_KEY_FILE {path}: {source}")]
pub struct KeyFileError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

impl KeyRing {
    /// The keys of `API_KEY` and `API_KEY_FILE`; `None` when neither is set
    /// (the API is open). A key file that holds no key leaves the API shut,
    /// not open: an operator who points at a key file wants keys.
    pub(crate) fn load(
        inline: Option<&str>,
        file: Option<&Path>,
    ) -> Result<Option<Arc<Self>>, KeyFileError> {
        let inline: Vec<String> = split_inline(inline.unwrap_or(""))
            .map(str::to_owned)
            .collect();
        if inline.is_empty() && file.is_none() {
            return Ok(None);
        }
        let ring = Self {
            inline,
            file: file.map(Path::to_path_buf),
            current: RwLock::new(Arc::from(Vec::new())),
        };
        let loaded = ring.reload()?;
        if loaded == 0 {
            warn!("API_KEY_FILE holds no key: every /api/v1/ request is refused until it does");
        }
        Ok(Some(Arc::new(ring)))
    }

    /// Reads the key file again (when there is one); keeps the old keys
    /// when it cannot. Returns how many keys are in force.
    pub(crate) fn reload(&self) -> Result<usize, KeyFileError> {
        let from_file = match &self.file {
            Some(path) => std::fs::read_to_string(path).map_err(|source| KeyFileError {
                path: path.clone(),
                source,
            })?,
            None => String::new(),
        };
        let keys: Vec<Key> = self
            .inline
            .iter()
            .map(String::as_str)
            .chain(key_lines(&from_file))
            .map(Key::new)
            .collect();
        let count = keys.len();
        *self.current.write().unwrap() = Arc::from(keys);
        Ok(count)
    }

    /// The id of the key `given` is, if it is one. Every key is compared,
    /// in constant time, so neither timing nor order says which matched.
    pub(crate) fn find(&self, given: &str) -> Option<KeyId> {
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        let keys = self.current.read().unwrap().clone();
        // 1 + the index of the matching key; 0 for none.
        let mut found = 0u32;
        for (i, key) in keys.iter().enumerate() {
            found.conditional_assign(&(i as u32 + 1), key.digest.ct_eq(&digest));
        }
        let at = usize::try_from(found).ok()?.checked_sub(1)?;
        Some(keys[at].id.clone())
    }

    /// Whether a key file is configured (and so SIGHUP means something).
    pub(crate) fn has_file(&self) -> bool {
        self.file.is_some()
    }
}

/// The key in `Authorization: Bearer <key>`; the scheme is case-insensitive
/// (RFC 9110), and the key is trimmed as configured keys are.
pub(crate) fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.trim_start().split_once(char::is_whitespace)?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

/// What the API key check needs.
#[derive(Clone)]
pub(crate) struct KeyCheck {
    pub keys: Arc<KeyRing>,
    pub max_body: usize,
}

/// Lets a request through with a valid key (or already [`Authorized`] by a
/// token), inside a span naming the key's id; refuses it with 401 otherwise.
pub(crate) async fn require_key(
    State(check): State<KeyCheck>,
    mut req: Request,
    next: Next,
) -> Response {
    if req.extensions().get::<Authorized>().is_some() {
        return next.run(req).await;
    }
    if let Some(id) = bearer(&req).and_then(|given| check.keys.find(given)) {
        let span = info_span!("api", key = %id);
        req.extensions_mut().insert(id);
        return next.run(req).instrument(span).await;
    }
    // Read what the client is sending before answering: a proxy still
    // writing the body to a closed connection counts this instance as failed.
    let drained = drain(req.into_body(), check.max_body).await;
    let refusal = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong API key: send Authorization: Bearer <key>",
    )
    .closing(!drained);
    let mut res = refusal.into_response();
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(inline: &str) -> Arc<KeyRing> {
        KeyRing::load(Some(inline), None).unwrap().unwrap()
    }

    #[test]
    fn every_key_matches_and_names_its_own_id() {
        let ring = ring(" one , two,,");
        let one = ring.find("one").expect("one");
        let two = ring.find("two").expect("two");
        assert_ne!(one, two);
        assert_eq!(one.to_string().len(), 8);
        assert_eq!(ring.find(" one "), None, "the header is trimmed before");
        assert_eq!(ring.find("three"), None);
        assert_eq!(ring.find(""), None);
    }

    #[test]
    fn no_key_configured_means_none() {
        assert!(KeyRing::load(Some(" , "), None).unwrap().is_none());
        assert!(KeyRing::load(None, None).unwrap().is_none());
    }

    #[test]
    fn a_key_file_skips_blanks_and_comments() {
        let keys: Vec<&str> = key_lines("# rotated 2026-01\n\n  alpha \n#beta\ngamma\n").collect();
        assert_eq!(keys, ["alpha", "gamma"]);
    }

    #[test]
    fn a_key_file_that_cannot_be_read_stops_the_start_and_keeps_the_keys_on_reload() {
        let path = std::env::temp_dir().join(format!("herald-keyring-{}", std::process::id()));
        let missing = KeyRing::load(None, Some(&path));
        assert!(missing.is_err(), "a missing file at start is an error");
        std::fs::write(&path, "from-file\n").unwrap();
        let ring = KeyRing::load(Some("inline"), Some(&path)).unwrap().unwrap();
        assert_eq!(ring.reload().unwrap(), 2);
        std::fs::remove_file(&path).unwrap();
        let err = ring.reload().unwrap_err().to_string();
        assert!(err.contains("API_KEY_FILE"), "{err}");
        assert!(!err.contains("from-file"), "the error names no key: {err}");
        assert!(ring.find("from-file").is_some(), "the old keys stay");
        assert!(ring.find("inline").is_some());
    }

    #[test]
    fn an_empty_key_file_leaves_the_api_shut() {
        let path =
            std::env::temp_dir().join(format!("herald-keyring-empty-{}", std::process::id()));
        std::fs::write(&path, "# no keys yet\n").unwrap();
        let ring = KeyRing::load(None, Some(&path)).unwrap();
        let ring = ring.expect("a key file means keys are required");
        assert_eq!(ring.find(""), None);
        assert_eq!(ring.find("# no keys yet"), None);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let with = |value: &str| {
            let req = Request::builder()
                .header(header::AUTHORIZATION, value)
                .body(axum::body::Body::empty())
                .unwrap();
            bearer(&req).map(str::to_owned)
        };
        assert_eq!(with("Bearer k").as_deref(), Some("k"));
        assert_eq!(with("bearer  k ").as_deref(), Some("k"));
        assert_eq!(with("BEARER k").as_deref(), Some("k"));
        assert_eq!(with("Basic k"), None);
        assert_eq!(with("Bearer"), None);
    }
}
