//! Where the keys tokens are checked with come from: `JWT_SECRET` (one
//! HS256 secret, for the life of the process), `JWT_SECRET_FILE` (HS256
//! secrets, one a line) or `JWT_PUBLIC_KEY_FILE` (PEM public keys: RSA for
//! RS256, EC P-256 for ES256, Ed25519 for EdDSA, told apart by the key).
//!
//! A file may hold several keys and is re-read on SIGHUP, so that token
//! keys rotate without a restart or a refused client, as publish keys do:
//! add the new key, SIGHUP, let the backend sign with it, and once the
//! tokens signed with the old one have expired, remove it and SIGHUP again.
//! A token is accepted if any key verifies it. One kind of source at a
//! time: mixing secrets and public keys invites the classic confusion of a
//! public key used as an HMAC secret.

use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey};

use crate::{Config, config::key_lines};

/// Why the configured keys could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("set one of JWT_SECRET, JWT_SECRET_FILE and JWT_PUBLIC_KEY_FILE, not several")]
    Several,
    #[error("JWT_SECRET cannot be used as an HS256 key: {0}")]
    Secret(jsonwebtoken::errors::Error),
    #[error("cannot read {var} {path}: {source}")]
    Read {
        var: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("JWT_SECRET_FILE {path} holds no secret (one a line; # starts a comment)")]
    NoSecret { path: String },
    #[error(
        "JWT_PUBLIC_KEY_FILE {path} holds no RSA, EC (P-256) or Ed25519 public key in PEM form"
    )]
    NotAKey { path: String },
    #[error(
        "JWT_PUBLIC_KEY_FILE {path}: PEM block {block} ({label}) is not an RSA, EC (P-256) or Ed25519 public key"
    )]
    NotAKeyBlock {
        path: String,
        block: usize,
        label: String,
    },
}

/// One key, and the one algorithm a token checked with it must name.
pub(crate) struct Key {
    pub key: DecodingKey,
    pub algorithm: Algorithm,
}

/// Where the keys are read from.
pub(crate) enum Source {
    Secret(String),
    SecretFile(PathBuf),
    PublicKeyFile(PathBuf),
}

impl Source {
    /// The source the settings name, or `None` when none is set (an empty
    /// variable counts as unset).
    pub(crate) fn from_config(config: &Config) -> Result<Option<Self>, KeyError> {
        let set = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
        let secret = config.jwt_secret.clone().filter(|s| !s.is_empty());
        let mut sources: Vec<Self> = [
            secret.map(Self::Secret),
            set(&config.jwt_secret_file).map(Self::SecretFile),
            set(&config.jwt_public_key_file).map(Self::PublicKeyFile),
        ]
        .into_iter()
        .flatten()
        .collect();
        if sources.len() > 1 {
            return Err(KeyError::Several);
        }
        Ok(sources.pop())
    }

    /// The file SIGHUP re-reads, if the keys come from one.
    pub(crate) fn file(&self) -> Option<&Path> {
        match self {
            Self::Secret(_) => None,
            Self::SecretFile(path) | Self::PublicKeyFile(path) => Some(path),
        }
    }

    /// Reads the keys, in the order given: the first is tried first.
    pub(crate) fn load(&self) -> Result<Vec<Key>, KeyError> {
        match self {
            Self::Secret(secret) => Ok(vec![secret_key(secret)?]),
            Self::SecretFile(path) => {
                let text = read(path, "JWT_SECRET_FILE")?;
                let keys = key_lines(&text)
                    .map(secret_key)
                    .collect::<Result<Vec<_>, _>>()?;
                if keys.is_empty() {
                    return Err(KeyError::NoSecret {
                        path: path.display().to_string(),
                    });
                }
                Ok(keys)
            }
            Self::PublicKeyFile(path) => public_keys(path),
        }
    }
}

fn read(path: &Path, var: &'static str) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        var,
        path: path.display().to_string(),
        source,
    })
}

fn secret_key(secret: &str) -> Result<Key, KeyError> {
    Ok(Key {
        key: DecodingKey::from_secret(secret.as_bytes()).map_err(KeyError::Secret)?,
        algorithm: Algorithm::HS256,
    })
}

/// Every PEM block of the file, each a public key.
fn public_keys(path: &Path) -> Result<Vec<Key>, KeyError> {
    let text = read(path, "JWT_PUBLIC_KEY_FILE")?;
    let shown = || path.display().to_string();
    let blocks = pem::parse_many(&text).map_err(|_| KeyError::NotAKey { path: shown() })?;
    if blocks.is_empty() {
        return Err(KeyError::NotAKey { path: shown() });
    }
    blocks
        .iter()
        .enumerate()
        .map(|(i, block)| {
            public_key(pem::encode(block).as_bytes()).ok_or_else(|| KeyError::NotAKeyBlock {
                path: shown(),
                block: i + 1,
                label: block.tag().to_string(),
            })
        })
        .collect()
}

/// A PEM public key and the algorithm its type implies.
fn public_key(pem: &[u8]) -> Option<Key> {
    type Read = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;
    let kinds: [(Read, Algorithm); 3] = [
        (DecodingKey::from_rsa_pem, Algorithm::RS256),
        (DecodingKey::from_ec_pem, Algorithm::ES256),
        (DecodingKey::from_ed_pem, Algorithm::EdDSA),
    ];
    kinds
        .into_iter()
        .find_map(|(read, algorithm)| read(pem).ok().map(|key| Key { key, algorithm }))
}
