//! What a valid token grants: the sessions of its `sessions` claim, until
//! its `exp`. Checked at every `subscribe`, so a check neither allocates nor
//! walks the whole claim: exact ids are kept sorted (binary search), `*` is a
//! flag, and only `prefix*` patterns are scanned (a token names few).

/// The ids one claim (`sessions`, `runs` or `projects`) lets a token name:
/// exact ids, `prefix*` patterns, or `*`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Patterns {
    any: bool,
    exact: Box<[Box<str>]>,
    prefixes: Box<[Box<str>]>,
}

impl Patterns {
    fn new(patterns: &[String]) -> Self {
        let mut any = false;
        let mut exact = Vec::new();
        let mut prefixes = Vec::new();
        for pattern in patterns {
            match pattern.strip_suffix('*') {
                Some("") => any = true,
                Some(prefix) => prefixes.push(prefix.into()),
                None => exact.push(pattern.as_str().into()),
            }
        }
        exact.sort_unstable();
        exact.dedup();
        Self {
            any,
            exact: exact.into_boxed_slice(),
            prefixes: prefixes.into_boxed_slice(),
        }
    }

    fn covers(&self, id: &str) -> bool {
        self.any
            || self.exact.binary_search_by(|e| (**e).cmp(id)).is_ok()
            || self.prefixes.iter().any(|p| id.starts_with(&**p))
    }
}

/// What one token may watch, who it names (`sub`) and until when: Socket.IO
/// sessions (`sessions`), and ResearchFlow runs and projects (`runs`,
/// `projects`), each claim with the same pattern syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    sub: Option<Box<str>>,
    exp: u64,
    sessions: Patterns,
    runs: Patterns,
    projects: Patterns,
}

impl Grant {
    /// The grant of a `sessions` claim: ids, `prefix*` patterns, or `*`.
    pub(crate) fn new(sub: Option<String>, exp: u64, sessions: &[String]) -> Self {
        Self {
            sub: sub.map(String::into_boxed_str),
            exp,
            sessions: Patterns::new(sessions),
            runs: Patterns::default(),
            projects: Patterns::default(),
        }
    }

    /// Adds the `runs` and `projects` claims (same syntax as `sessions`).
    pub(crate) fn with_runs(mut self, runs: &[String], projects: &[String]) -> Self {
        self.runs = Patterns::new(runs);
        self.projects = Patterns::new(projects);
        self
    }

    /// Whether the token may watch `session`.
    pub(crate) fn covers(&self, session: &str) -> bool {
        self.sessions.covers(session)
    }

    /// Whether the token may watch run `run` (its `runs` claim).
    pub(crate) fn covers_run(&self, run: &str) -> bool {
        self.runs.covers(run)
    }

    /// Whether the token may watch project `project` (its `projects` claim).
    pub(crate) fn covers_project(&self, project: &str) -> bool {
        self.projects.covers(project)
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
    fn runs_and_projects_are_their_own_claims() {
        let g = grant(&["*"]).with_runs(&["run-1".into(), "r-*".into()], &["p-7".into()]);
        assert!(g.covers_run("run-1") && g.covers_run("r-9") && !g.covers_run("run-2"));
        assert!(g.covers_project("p-7") && !g.covers_project("p-8"));
        // `sessions: ["*"]` grants no run.
        assert!(!grant(&["*"]).covers_run("run-1"));
    }

    #[test]
    fn sub_and_exp_are_kept() {
        let g = Grant::new(Some("alice".into()), 99, &[]);
        assert_eq!((g.sub(), g.exp()), (Some("alice"), 99));
    }
}
