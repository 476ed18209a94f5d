//! `imapbak pull` against a real Dovecot.

use crate::support::{self, dovecot, TestEnv};

#[test]
fn placeholder_pull_runs() {
    let d = dovecot();
    let user = d.new_user("placeholder");
    let env = TestEnv::new();
    env.write_config(&env.account_toml("a", &user, ""));
    env.cmd().arg("pull").assert().success();
    assert!(support::archived_files(&env.archive("a")).is_empty());
}
