//! `herald token`: mints the token a backend would, so that a person or a
//! script can try a deployment that requires them:
//! `herald token --sessions 'doc-42,tenant-7:*' --ttl 1h` (or `--runs`,
//! `--projects` for the ResearchFlow and workflow streams). Signed with
//! JWT_SECRET or the first secret of JWT_SECRET_FILE (HS256) or, with
//! `--private-key-file`, the private half of a JWT_PUBLIC_KEY_FILE key (the
//! algorithm follows the key type, as on the server).

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use herald::config::key_lines;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Sessions the token may watch, comma-separated: ids, `prefix*`
    /// patterns, or `*` for all.
    #[arg(long, value_delimiter = ',', required_unless_present_any = ["runs", "projects"])]
    sessions: Vec<String>,

    /// Runs the token may watch on `/ws`, `/ws/workflows[/{runId}]` and
    /// Socket.IO `{ runId }`, comma-separated, same patterns (`*` is also
    /// what `/ws/workflows`, every run, needs).
    #[arg(long, value_delimiter = ',')]
    runs: Vec<String>,

    /// Projects a `/ws` client may name in its `auth`, same patterns.
    #[arg(long, value_delimiter = ',')]
    projects: Vec<String>,

    /// How long the token is valid: seconds, or with a unit (90s, 15m, 1h, 7d).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: Duration,

    /// Who the token is for (`sub`, named in herald's logs).
    #[arg(long)]
    sub: Option<String>,

    /// The `aud` claim (herald checks it when JWT_AUDIENCE is set).
    #[arg(long, env = "JWT_AUDIENCE")]
    aud: Option<String>,

    /// The `iss` claim (herald checks it when JWT_ISSUER is set).
    #[arg(long, env = "JWT_ISSUER")]
    iss: Option<String>,

    /// The HS256 secret; the server's JWT_SECRET by default.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    secret: Option<String>,

    /// A file of HS256 secrets, as the server's JWT_SECRET_FILE: signs with
    /// the first (list the newest first while rotating).
    #[arg(long, env = "JWT_SECRET_FILE")]
    secret_file: Option<PathBuf>,

    /// A PEM private key to sign with instead of the secret: RSA (RS256),
    /// EC P-256 (ES256) or Ed25519 (EdDSA).
    #[arg(long)]
    private_key_file: Option<PathBuf>,
}

#[derive(Serialize)]
struct Claims<'a> {
    sessions: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    runs: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    projects: &'a [String],
    exp: u64,
    iat: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
}

pub(crate) fn run(args: &Args) -> ExitCode {
    match mint(args) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("herald token: {e}");
            ExitCode::FAILURE
        }
    }
}

fn mint(args: &Args) -> Result<String, String> {
    let (key, algorithm) = signing_key(args)?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let claims = Claims {
        sessions: &args.sessions,
        runs: &args.runs,
        projects: &args.projects,
        exp: now + args.ttl.as_secs(),
        iat: now,
        sub: args.sub.as_deref(),
        aud: args.aud.as_deref().filter(|a| !a.is_empty()),
        iss: args.iss.as_deref().filter(|i| !i.is_empty()),
    };
    jsonwebtoken::encode(&Header::new(algorithm), &claims, &key).map_err(|e| e.to_string())
}

fn signing_key(args: &Args) -> Result<(EncodingKey, Algorithm), String> {
    if let Some(path) = &args.private_key_file {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        type Read = fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>;
        let kinds: [(Read, Algorithm); 3] = [
            (EncodingKey::from_rsa_pem, Algorithm::RS256),
            (EncodingKey::from_ec_pem, Algorithm::ES256),
            (EncodingKey::from_ed_pem, Algorithm::EdDSA),
        ];
        return kinds
            .into_iter()
            .find_map(|(read, algorithm)| read(&pem).ok().map(|key| (key, algorithm)))
            .ok_or_else(|| {
                format!(
                    "{} holds no RSA, EC (P-256) or Ed25519 private key in PEM form",
                    path.display()
                )
            });
    }
    let secret = args.secret.clone().filter(|s| !s.is_empty());
    let file = args
        .secret_file
        .as_deref()
        .filter(|p| !p.as_os_str().is_empty());
    let secret = match (secret, file) {
        (Some(_), Some(_)) => {
            return Err(
                "set JWT_SECRET or JWT_SECRET_FILE (--secret or --secret-file), not both".into(),
            );
        }
        (Some(secret), None) => secret,
        (None, Some(path)) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let first = key_lines(&text).next().map(str::to_owned);
            first.ok_or_else(|| format!("{} holds no secret", path.display()))?
        }
        (None, None) => {
            return Err("no key: set JWT_SECRET or JWT_SECRET_FILE (or --secret, --secret-file), or pass --private-key-file".into());
        }
    };
    EncodingKey::from_secret(secret.as_bytes())
        .map(|key| (key, Algorithm::HS256))
        .map_err(|e| e.to_string())
}

/// `90`, `90s`, `15m`, `1h`, `7d`.
fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number of seconds, or 90s, 15m, 1h, 7d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown unit {other:?}: use s, m, h or d")),
    };
    Ok(Duration::from_secs(number.saturating_mul(scale)))
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn ttls_read_with_their_units() {
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_ttl("1w").is_err() && parse_ttl("h").is_err());
    }

    #[test]
    fn a_minted_token_carries_what_was_asked() {
        let cli = Cli::parse_from([
            "t",
            "--sessions",
            "doc-42,tenant-7:*",
            "--ttl",
            "1h",
            "--sub",
            "alice",
            "--secret",
            "s3cret",
            "--aud",
            "herald",
            "--runs",
            "run-1,r-*",
        ]);
        let token = mint(&cli.args).unwrap();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&["herald"]);
        let key = DecodingKey::from_secret(b"s3cret").unwrap();
        let claims = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation)
            .unwrap()
            .claims;
        assert_eq!(
            claims["sessions"],
            serde_json::json!(["doc-42", "tenant-7:*"])
        );
        assert_eq!(claims["runs"], serde_json::json!(["run-1", "r-*"]));
        assert!(claims.get("projects").is_none());
        assert_eq!(claims["sub"], "alice");
        let ttl = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
        assert_eq!(ttl, 3600);
    }
}
