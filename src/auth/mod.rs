//! Who may watch what: JWTs signed by the deployment's backend. This module
//! owns the keys herald checks tokens with ([`Verifier`], from `JWT_SECRET`,
//! `JWT_SECRET_FILE` or `JWT_PUBLIC_KEY_FILE`, see [`keys`]), what a valid
//! token grants ([`Grant`]: its `sessions` claim), why a token is refused
//! ([`Refusal`], one message per failure), the one timer that ends sockets
//! whose token expired ([`Expiry`]), and the bearer check in front of the
//! HTTP history routes ([`reads`]).
//!
//! The Socket.IO side (`realtime`) asks it at connect and at every
//! `subscribe`; without a key configured nothing here runs and sockets are
//! anonymous.

mod expiry;
mod grant;
mod keys;
pub(crate) mod reads;

use std::sync::{
    Arc, RwLock,
    atomic::{AtomicU64, Ordering},
};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

pub(crate) use expiry::{Expiry, unix_now};
pub(crate) use grant::Grant;
pub use keys::KeyError;

use self::keys::{Key, Source};
use crate::Config;

/// The keys tokens are checked with, and what else a token must say.
pub(crate) struct Verifier {
    source: Source,
    /// What every key's check shares: `exp`, and `aud`/`iss` when set.
    validation: Validation,
    keys: RwLock<Arc<[Checked]>>,
}

/// A key and the validation that admits only its algorithm.
struct Checked {
    key: DecodingKey,
    algorithm: Algorithm,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.describe())
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
    /// The verifier the settings ask for, or `None` when no key is set.
    pub(crate) fn from_config(config: &Config) -> Result<Option<Self>, KeyError> {
        let Some(source) = Source::from_config(config)? else {
            return Ok(None);
        };
        // Each key replaces the algorithm with its own (`Checked`).
        let mut validation = Validation::new(Algorithm::HS256);
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
        let verifier = Self {
            source,
            validation,
            keys: RwLock::new(Arc::from(Vec::new())),
        };
        verifier.reload()?;
        Ok(Some(verifier))
    }

    /// Reads the keys again from their file, if they come from one; keeps
    /// the keys in force when it cannot. Says what is in force.
    pub(crate) fn reload(&self) -> Result<String, KeyError> {
        let keys: Vec<Checked> = self
            .source
            .load()?
            .into_iter()
            .map(|Key { key, algorithm }| {
                let mut validation = self.validation.clone();
                validation.algorithms = vec![algorithm];
                Checked {
                    key,
                    algorithm,
                    validation,
                }
            })
            .collect();
        *self.keys.write().unwrap() = Arc::from(keys);
        Ok(self.describe())
    }

    /// The file SIGHUP re-reads, if the keys come from one.
    pub(crate) fn file(&self) -> Option<&std::path::Path> {
        self.source.file()
    }

    /// How many keys, of which algorithms, and from where: for the logs,
    /// never the keys themselves.
    pub(crate) fn describe(&self) -> String {
        let keys = self.keys.read().unwrap().clone();
        let count = match keys.len() {
            1 => "1 token key".to_string(),
            n => format!("{n} token keys"),
        };
        let from = match self.source.file() {
            Some(path) => format!(" from {}", path.display()),
            None => " from JWT_SECRET".to_string(),
        };
        format!("{count} ({}){from}", algorithms(&keys))
    }

    /// Checks `token` against each key in turn and returns what it grants.
    pub(crate) fn verify(&self, token: &str) -> Result<Grant, Refusal> {
        let keys = self.keys.read().unwrap().clone();
        // A wrong algorithm, unless a key of the token's own was tried.
        let mut failed = ErrorKind::InvalidAlgorithm;
        for checked in keys.iter() {
            match jsonwebtoken::decode::<Claims>(token, &checked.key, &checked.validation) {
                Ok(data) => return grant(data.claims),
                // Another key may be the one that signed it.
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {
                    failed = ErrorKind::InvalidSignature;
                }
                Err(e) if matches!(e.kind(), ErrorKind::InvalidAlgorithm) => {}
                // Signed by this key and refused for its claims, or not a
                // token at all: the same answer whichever key is tried.
                Err(e) => return Err(refusal(token, e.kind(), &keys)),
            }
        }
        Err(refusal(token, &failed, &keys))
    }
}

/// What a token whose signature checked out grants.
fn grant(claims: Claims) -> Result<Grant, Refusal> {
    let Claims {
        exp,
        sub,
        sessions,
        runs,
        projects,
    } = claims;
    // A token is valid before its `exp` (RFC 7519), jsonwebtoken accepts it
    // during that second too.
    let exp = exp.unwrap_or_default();
    if exp <= expiry::unix_now() {
        return Err(Refusal::Expired);
    }
    Ok(Grant::new(sub, exp, &sessions).with_runs(&runs, &projects))
}

fn refusal(token: &str, kind: &ErrorKind, keys: &[Checked]) -> Refusal {
    let wrong_algorithm = || {
        let got = header_alg(token)?;
        (!keys.iter().any(|k| format!("{:?}", k.algorithm) == got)).then(|| {
            Refusal::WrongAlgorithm {
                got,
                want: algorithms(keys),
            }
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

/// The algorithms of `keys`, each once, in their order: `RS256 or ES256`.
fn algorithms(keys: &[Checked]) -> String {
    let mut names: Vec<String> = Vec::new();
    for key in keys {
        let name = format!("{:?}", key.algorithm);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names.join(" or ")
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
    #[error("wrong algorithm: the token is signed with {got}, herald expects {want}")]
    WrongAlgorithm { got: String, want: String },
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

    /// Test-only key pairs (made with `openssl genpkey`), never used
    /// anywhere else.
    const EC_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgxOWrdEhfXAs9neAK
VdXobZkmJU+1CvJ61AhVcg/2MwGhRANCAATQGsfVaiPQVRgn6xViV3yfIH85HZ8p
kzBJtRZeLYgq6W2rbWzETvasSXJGrQLFnk2seT90pStpECXMAxB240HK
-----END PRIVATE KEY-----
";
    const EC_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE0BrH1Woj0FUYJ+sVYld8nyB/OR2f
KZMwSbUWXi2IKultq21sxE72rElyRq0CxZ5NrHk/dKUraRAlzAMQduNByg==
-----END PUBLIC KEY-----
";
    const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEILNWhEyZ6osIbbwVSIzHPzPUKppVDYTJ6O92i20cBgZG
-----END PRIVATE KEY-----
";
    const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA6gXVkHkk9ouoEImbmpTE3mDNK/6FRi+B+ZX7EBgDwlY=
-----END PUBLIC KEY-----
";

    /// A file of its own under the temp dir, removed when dropped.
    struct TempFile(std::path::PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> Self {
            let path =
                std::env::temp_dir().join(format!("herald-auth-{}-{name}", std::process::id()));
            std::fs::write(&path, text).unwrap();
            Self(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn from_args(args: &[&str]) -> Result<Option<Verifier>, KeyError> {
        let mut all = vec!["herald"];
        all.extend_from_slice(args);
        Verifier::from_config(&Config::parse_from(all))
    }

    fn sign_with(claims: &serde_json::Value, algorithm: Algorithm, pem: &str) -> String {
        let key = match algorithm {
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
            _ => unreachable!(),
        };
        encode(&Header::new(algorithm), claims, &key.unwrap()).unwrap()
    }

    #[test]
    fn any_secret_of_the_file_verifies_and_a_reload_rotates_them() {
        let file = TempFile::new("secrets", "# newest first\nnew-secret\n\n  old-secret  \n");
        let v = from_args(&["--jwt-secret-file", file.path()])
            .unwrap()
            .unwrap();
        let claims = json!({"exp": now() + 60, "sessions": ["doc-1"]});
        for secret in ["new-secret", "old-secret"] {
            assert!(v.verify(&sign(claims.clone(), secret)).is_ok(), "{secret}");
        }
        assert_eq!(
            v.verify(&sign(claims.clone(), "# newest first")),
            Err(Refusal::BadSignature),
            "a comment is not a secret"
        );
        assert!(
            v.describe().starts_with("2 token keys (HS256) from "),
            "{}",
            v.describe()
        );

        std::fs::write(&file.0, "newer-secret\nnew-secret\n").unwrap();
        v.reload().unwrap();
        assert_eq!(
            v.verify(&sign(claims.clone(), "old-secret")),
            Err(Refusal::BadSignature)
        );
        assert!(v.verify(&sign(claims.clone(), "newer-secret")).is_ok());

        // A file that cannot be read, or holds no secret, changes nothing.
        std::fs::write(&file.0, "# all gone\n").unwrap();
        assert!(matches!(v.reload(), Err(KeyError::NoSecret { .. })));
        std::fs::remove_file(&file.0).unwrap();
        assert!(matches!(v.reload(), Err(KeyError::Read { .. })));
        assert!(v.verify(&sign(claims, "new-secret")).is_ok());
    }

    #[test]
    fn a_public_key_file_may_hold_keys_of_several_types() {
        let both = TempFile::new("both.pem", &format!("{EC_PUBLIC}\n{ED_PUBLIC}"));
        let v = from_args(&["--jwt-public-key-file", both.path()])
            .unwrap()
            .unwrap();
        let claims = json!({"exp": now() + 60, "sessions": ["doc-1"]});
        assert!(
            v.verify(&sign_with(&claims, Algorithm::ES256, EC_PRIVATE))
                .is_ok()
        );
        assert!(
            v.verify(&sign_with(&claims, Algorithm::EdDSA, ED_PRIVATE))
                .is_ok()
        );
        assert!(
            v.describe().starts_with("2 token keys (ES256 or EdDSA)"),
            "{}",
            v.describe()
        );
        // The classic confusion: a public key used as an HMAC secret.
        assert_eq!(
            v.verify(&sign(claims.clone(), EC_PUBLIC)),
            Err(Refusal::WrongAlgorithm {
                got: "HS256".into(),
                want: "ES256 or EdDSA".into()
            })
        );
        // A token of a type no key has is refused as such; a token of the
        // key's own is checked for its claims once its signature holds.
        let only_ec = TempFile::new("ec.pem", EC_PUBLIC);
        let v = from_args(&["--jwt-public-key-file", only_ec.path()])
            .unwrap()
            .unwrap();
        assert!(
            v.verify(&sign_with(&claims, Algorithm::ES256, EC_PRIVATE))
                .is_ok()
        );
        assert!(matches!(
            v.verify(&sign_with(&claims, Algorithm::EdDSA, ED_PRIVATE)),
            Err(Refusal::WrongAlgorithm { got, .. }) if got == "EdDSA"
        ));
        let mut expired = claims.clone();
        expired["exp"] = json!(now() - 1);
        assert_eq!(
            v.verify(&sign_with(&expired, Algorithm::ES256, EC_PRIVATE)),
            Err(Refusal::Expired)
        );
    }

    #[test]
    fn a_key_file_that_is_not_all_keys_stops_the_start() {
        let private = TempFile::new("private.pem", &format!("{EC_PUBLIC}{ED_PRIVATE}"));
        let err = from_args(&["--jwt-public-key-file", private.path()]).unwrap_err();
        assert!(
            err.to_string().ends_with(
                "PEM block 2 (PRIVATE KEY) is not an RSA, EC (P-256) or Ed25519 public key"
            ),
            "{err}"
        );
        let text = TempFile::new("text.pem", "not a key\n");
        assert!(matches!(
            from_args(&["--jwt-public-key-file", text.path()]),
            Err(KeyError::NotAKey { .. })
        ));
        let empty = TempFile::new("empty", "\n# nothing\n");
        assert!(matches!(
            from_args(&["--jwt-secret-file", empty.path()]),
            Err(KeyError::NoSecret { .. })
        ));
        assert!(matches!(
            from_args(&["--jwt-secret", "s", "--jwt-secret-file", empty.path()]),
            Err(KeyError::Several)
        ));
        assert!(from_args(&["--jwt-secret", ""]).unwrap().is_none());
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
