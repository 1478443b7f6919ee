//! Who may watch what: JWTs signed by the deployment's backend. This module
//! owns the key herald checks tokens with ([`Verifier`], from `JWT_SECRET` or
//! `JWT_PUBLIC_KEY_FILE`), what a valid token grants ([`Grant`]: its `sessions`
//! claim), why a token is refused ([`Refusal`], one message per failure),
//! the one timer that ends sockets whose token expired ([`Expiry`]), and the
//! bearer check in front of the HTTP history routes ([`reads`]).
//!
//! The Socket.IO side (`realtime`) asks it at connect and at every
//! `subscribe`; without a key configured nothing here runs and sockets are
//! anonymous.

mod expiry;
mod grant;
pub(crate) mod reads;

use std::{
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

pub(crate) use expiry::{Expiry, unix_now};
pub(crate) use grant::Grant;

use crate::Config;

/// Why the configured key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("set JWT_SECRET or JWT_PUBLIC_KEY_FILE, not both")]
    Both,
    #[error("JWT_SECRET cannot be used as an HS256 key: {0}")]
    Secret(jsonwebtoken::errors::Error),
    #[error("cannot read JWT_PUBLIC_KEY_FILE {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "JWT_PUBLIC_KEY_FILE {path} holds no RSA, EC (P-256) or Ed25519 public key in PEM form"
    )]
    NotAKey { path: String },
}

/// The key tokens are checked with, and what else a token must say.
pub(crate) struct Verifier {
    key: DecodingKey,
    validation: Validation,
    algorithm: Algorithm,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// A token's claims as herald reads them; `exp` is required by the
/// validation, `aud` and `iss` are checked by it when configured.
#[derive(Deserialize)]
struct Claims {
    /// Optional here so that its absence is reported as such by the
    /// validation, which requires it, rather than as bad JSON.
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    sessions: Vec<String>,
    #[serde(default)]
    runs: Vec<String>,
    #[serde(default)]
    projects: Vec<String>,
}

impl Verifier {
    /// The verifier the settings ask for, or `None` when no key is set (an
    /// empty variable counts as unset).
    pub(crate) fn from_config(config: &Config) -> Result<Option<Self>, KeyError> {
        let secret = config.jwt_secret.as_deref().filter(|s| !s.is_empty());
        let file = config
            .jwt_public_key_file
            .as_deref()
            .filter(|p| !p.as_os_str().is_empty());
        let (key, algorithm) = match (secret, file) {
            (None, None) => return Ok(None),
            (Some(_), Some(_)) => return Err(KeyError::Both),
            (Some(secret), None) => (
                DecodingKey::from_secret(secret.as_bytes()).map_err(KeyError::Secret)?,
                Algorithm::HS256,
            ),
            (None, Some(path)) => public_key(path)?,
        };
        let mut validation = Validation::new(algorithm);
        // A token is good until its `exp` and not a second longer: herald
        // closes sockets at `exp`, so connect must agree with it.
        validation.leeway = 0;
        validation.validate_aud = false;
        if let Some(aud) = config.jwt_audience.as_deref().filter(|a| !a.is_empty()) {
            validation.set_audience(&[aud]);
            validation.validate_aud = true;
            validation.required_spec_claims.insert("aud".into());
        }
        if let Some(iss) = config.jwt_issuer.as_deref().filter(|i| !i.is_empty()) {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        Ok(Some(Self {
            key,
            validation,
            algorithm,
        }))
    }

    /// The algorithm tokens must be signed with.
    pub(crate) fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Checks `token` and returns what it grants.
    pub(crate) fn verify(&self, token: &str) -> Result<Grant, Refusal> {
        match jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation) {
            // A token is valid before its `exp` (RFC 7519), jsonwebtoken
            // accepts it during that second too.
            Ok(data) => {
                let Claims {
                    exp,
                    sub,
                    sessions,
                    runs,
                    projects,
                } = data.claims;
                let exp = exp.unwrap_or_default();
                if exp <= expiry::unix_now() {
                    return Err(Refusal::Expired);
                }
                Ok(Grant::new(sub, exp, &sessions).with_runs(&runs, &projects))
            }
            Err(e) => Err(self.refusal(token, e.kind())),
        }
    }

    fn refusal(&self, token: &str, kind: &ErrorKind) -> Refusal {
        let wrong_algorithm = || {
            header_alg(token)
                .filter(|alg| *alg != format!("{:?}", self.algorithm))
                .map(|got| Refusal::WrongAlgorithm {
                    got,
                    want: self.algorithm,
                })
        };
        match kind {
            ErrorKind::InvalidSignature => Refusal::BadSignature,
            ErrorKind::ExpiredSignature => Refusal::Expired,
            ErrorKind::InvalidAudience => Refusal::WrongAudience,
            ErrorKind::InvalidIssuer => Refusal::WrongIssuer,
            ErrorKind::MissingRequiredClaim(claim) => Refusal::MissingClaim(claim.clone()),
            // `alg: none`, or an algorithm jsonwebtoken does not know, fails
            // to parse as a header: still the wrong algorithm, not garbage.
            _ => wrong_algorithm().unwrap_or_else(|| Refusal::Malformed(kind_text(kind))),
        }
    }
}

/// Reads a PEM public key and the algorithm its type implies.
fn public_key(path: &Path) -> Result<(DecodingKey, Algorithm), KeyError> {
    let shown = path.display().to_string();
    let pem = std::fs::read(path).map_err(|source| KeyError::Read {
        path: shown.clone(),
        source,
    })?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        return Ok((key, Algorithm::RS256));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok((key, Algorithm::ES256));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        return Ok((key, Algorithm::EdDSA));
    }
    Err(KeyError::NotAKey { path: shown })
}

/// The `alg` a token's header names, read without trusting anything else.
fn header_alg(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Header {
        alg: String,
    }
    let header = token.split('.').next()?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice::<Header>(&json).ok().map(|h| h.alg)
}

/// What was wrong with a token that did not parse, in a few words.
fn kind_text(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::Json(e) => format!("bad JSON ({e})"),
        ErrorKind::Base64(_) => "not base64url".into(),
        ErrorKind::Utf8(_) => "not UTF-8".into(),
        ErrorKind::InvalidClaimFormat(claim) => format!("claim {claim} has the wrong type"),
        _ => "not a JWT (header.payload.signature)".into(),
    }
}

/// Why a token was refused, in a few words; [`Unauthorized`] is how a
/// client reads it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error(
        "missing token (send it as auth.token, the token query parameter or Authorization: Bearer)"
    )]
    Missing,
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("bad signature")]
    BadSignature,
    #[error("wrong algorithm: the token is signed with {got}, herald expects {want:?}")]
    WrongAlgorithm { got: String, want: Algorithm },
    #[error("token expired")]
    Expired,
    #[error("wrong audience")]
    WrongAudience,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("the token has no {0} claim")]
    MissingClaim(String),
}

/// A refused connection or history read, as the client reads it: the
/// `connect_error` message, or the HTTP 401's `error`.
#[derive(Debug, thiserror::Error)]
#[error("unauthorized: {0}")]
pub(crate) struct Unauthorized(pub Refusal);

impl Refusal {
    /// The `reason` label of `herald_auth_refusals_total`.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::BadSignature => "bad_signature",
            Self::WrongAlgorithm { .. } => "wrong_algorithm",
            Self::Expired => "expired",
            Self::WrongAudience => "wrong_audience",
            Self::WrongIssuer => "wrong_issuer",
            Self::MissingClaim(_) => "missing_claim",
        }
    }
}

/// At most one log line a second for refusals a client can cause at will
/// (a reconnect loop with a bad token would otherwise flood the log).
#[derive(Default)]
pub(crate) struct Throttle {
    second: AtomicU64,
    suppressed: AtomicU64,
}

impl Throttle {
    /// When a line may be logged now: how many were left out since the last.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = unix_now();
        let last = self.second.load(Ordering::Relaxed);
        if last != now
            && self
                .second
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// The token of an `Authorization: Bearer <token>` header, if that is what
/// it holds (the scheme is case-insensitive).
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// A token sent with an upgrade request: `?token=` (a JWT needs no
/// percent-decoding: base64url and dots), or `Authorization: Bearer`.
pub(crate) fn request_token<'a>(
    uri: &'a axum::http::Uri,
    headers: &'a axum::http::HeaderMap,
) -> Option<&'a str> {
    uri.query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
        .filter(|t| !t.is_empty())
        .or_else(|| bearer(headers))
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    use super::*;

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    fn verifier(extra: &[&str]) -> Verifier {
        let mut args = vec!["herald", "--jwt-secret", "s3cret"];
        args.extend_from_slice(extra);
        Verifier::from_config(&Config::parse_from(args))
            .unwrap()
            .unwrap()
    }

    fn sign(claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn each_failure_has_its_reason() {
        let v = verifier(&["--jwt-audience", "herald", "--jwt-issuer", "backend"]);
        let good =
            json!({"exp": now() + 60, "aud": "herald", "iss": "backend", "sessions": ["doc-42"]});
        assert!(v.verify(&sign(good.clone(), "s3cret")).is_ok());
        assert_eq!(
            v.verify(&sign(good.clone(), "other")),
            Err(Refusal::BadSignature)
        );
        let mut expired = good.clone();
        expired["exp"] = json!(now() - 1);
        assert_eq!(v.verify(&sign(expired, "s3cret")), Err(Refusal::Expired));
        let mut aud = good.clone();
        aud["aud"] = json!("someone-else");
        assert_eq!(v.verify(&sign(aud, "s3cret")), Err(Refusal::WrongAudience));
        let mut iss = good.clone();
        iss["iss"] = json!("mallory");
        assert_eq!(v.verify(&sign(iss, "s3cret")), Err(Refusal::WrongIssuer));
        let no_exp = json!({"aud": "herald", "iss": "backend"});
        assert_eq!(
            v.verify(&sign(no_exp, "s3cret")),
            Err(Refusal::MissingClaim("exp".into()))
        );
        assert!(matches!(
            v.verify("not-a-token"),
            Err(Refusal::Malformed(_))
        ));
        // alg none: a header jsonwebtoken cannot even parse.
        let none = format!(
            "{}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(r#"{"alg":"none","typ":"JWT"}"#),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(good.to_string())
        );
        assert!(matches!(
            v.verify(&none),
            Err(Refusal::WrongAlgorithm { got, .. }) if got == "none"
        ));
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("authorization", "bearer abc ".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }
}
