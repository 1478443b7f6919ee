//! `.env.example` lists every setting herald reads from the environment, and
//! nothing else: the test harnesses derive from it the variables they keep
//! out of herald's environment, so a setting missing there would leak from a
//! developer's shell into the tests.

mod common;

use std::{collections::BTreeSet, process::Command};

#[test]
fn env_example_lists_exactly_the_variables_herald_reads() {
    let help = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("--help")
        .output()
        .expect("run herald --help");
    assert!(help.status.success(), "herald --help failed");
    let help = String::from_utf8_lossy(&help.stdout);
    // clap shows each flag's variable as `[env: NAME=value]` or `[env: NAME]`.
    let read: BTreeSet<&str> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next())
        .collect();
    assert!(
        read.contains("PORT"),
        "no [env: ...] in herald --help:\n{help}"
    );
    let listed: BTreeSet<&str> = common::herald_env_vars().into_iter().collect();
    assert_eq!(
        listed, read,
        ".env.example (left) and the variables herald --help shows (right) differ"
    );
}
