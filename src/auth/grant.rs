//! What a valid token grants: the sessions of its `sessions` claim, until
//! its `exp`. Checked at every `subscribe`, so a check neither allocates nor
//! walks the whole claim: exact ids are kept sorted (binary search), `*` is a
//! flag, and only `prefix*` patterns are scanned (a token names few).

/// The sessions one token may watch, who it names (`sub`) and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    sub: Option<Box<str>>,
    exp: u64,
    any: bool,
    exact: Box<[Box<str>]>,
    prefixes: Box<[Box<str>]>,
}

impl Grant {
    /// The grant of a `sessions` claim: ids, `prefix*` patterns, or `*`.
    pub(crate) fn new(sub: Option<String>, exp: u64, sessions: &[String]) -> Self {
        let mut any = false;
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        for pattern in sessions {
            match pattern.strip_suffix('*') {
                Some("") => any = true,
                Some(prefix) => prefixes.push(prefix.into()),
                None => exact.push(pattern.as_str().into()),
            }
        }
        exact.sort_unstable();
        exact.dedup();
        Self {
            sub: sub.map(String::into_boxed_str),
            exp,
            any,
            exact: exact.into_boxed_slice(),
            prefixes: prefixes.into_boxed_slice(),
        }
    }

    /// Whether the token may watch `session`.
    pub(crate) fn covers(&self, session: &str) -> bool {
        self.any
            || self
                .exact
                .binary_search_by(|id| (**id).cmp(session))
                .is_ok()
            || self.prefixes.iter().any(|p| session.starts_with(&**p))
    }

    /// The token's `sub`, for the logs.
    pub(crate) fn sub(&self) -> Option<&str> {
        self.sub.as_deref()
    }

    /// When the token expires, in seconds since the Unix epoch.
    pub(crate) fn exp(&self) -> u64 {
        self.exp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(sessions: &[&str]) -> Grant {
        let sessions: Vec<String> = sessions.iter().map(|s| s.to_string()).collect();
        Grant::new(Some("user-1".into()), 0, &sessions)
    }

    #[test]
    fn exact_ids_match_only_themselves() {
        let g = grant(&["doc-42", "doc-7", "abc"]);
        assert!(g.covers("doc-42") && g.covers("doc-7") && g.covers("abc"));
        assert!(!g.covers("doc-4") && !g.covers("doc-420") && !g.covers("doc-43"));
    }

    #[test]
    fn prefixes_match_what_starts_with_them() {
        let g = grant(&["doc-42:*", "tenant-7:*"]);
        assert!(g.covers("doc-42:7") && g.covers("doc-42:") && g.covers("tenant-7:x"));
        assert!(!g.covers("doc-43:1") && !g.covers("doc-42") && !g.covers("tenant-70"));
    }

    #[test]
    fn a_star_alone_matches_everything_and_nothing_matches_nothing() {
        assert!(grant(&["*"]).covers("anything"));
        let none = grant(&[]);
        assert!(!none.covers("doc-42") && !none.covers(""));
    }

    #[test]
    fn a_star_inside_a_pattern_is_not_a_wildcard() {
        let g = grant(&["doc-*-x"]);
        assert!(!g.covers("doc-1-x") && !g.covers("doc-"));
    }

    #[test]
    fn sub_and_exp_are_kept() {
        let g = Grant::new(Some("alice".into()), 99, &[]);
        assert_eq!((g.sub(), g.exp()), (Some("alice"), 99));
    }
}
