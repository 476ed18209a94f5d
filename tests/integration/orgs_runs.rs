//! Organisations at scale and under faults, against the master Dovecot
//! (issue 16, "Done means" 2-5): 300 users in four parallel shards, a user
//! who does not exist, one over quota and one cut mid-pull while the
//! others complete, overlapping runs that skip each other's users by the
//! archive locks, `--jobs` counted across users and `max-connections` per
//! user, and the report monitoring reads (`state/last-pull.json`,
//! `--metrics`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::command_proxy::{ca_file, CommandProxy, Line};
use crate::orgs::{files_under, report, staff_toml, write_users};
use crate::support::MASTER_PASSWORD;
use crate::support::{self, dovecot_master, mail, toml_str, Dovecot, TestEnv, User};

/// `n` users, user `i` with 1 + i % 3 small messages in INBOX; with the
/// bytes the server holds for each (plain ASCII: served as written).
fn small_users(d: &Dovecot, prefix: &str, n: usize) -> Vec<(User, Vec<Vec<u8>>)> {
    (0..n)
        .map(|i| {
            let u = d.new_user(prefix);
            let msgs: Vec<Vec<u8>> = (0..=(i % 3) as u32)
                .map(|j| mail::plain(i as u32 * 10 + j))
                .collect();
            seed(d, &u, &msgs);
            (u, msgs)
        })
        .collect()
}

fn seed(d: &Dovecot, u: &User, msgs: &[Vec<u8>]) {
    let dated: Vec<(Vec<u8>, i64)> = msgs
        .iter()
        .enumerate()
        .map(|(j, m)| (m.clone(), 1_600_000_000 + j as i64))
        .collect();
    d.seed_inbox(u, &dated);
}

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

/// Starts `imapbak pull --json --account staff ARGS` without waiting.
fn spawn_pull(env: &TestEnv, args: &[&str]) -> std::process::Child {
    env.std_cmd()
        .env("IMAPBAK_TEST_ADMIN_PW", MASTER_PASSWORD)
        .args(["pull", "--json", "--account", "staff"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// account name -> its object in a pull report.
fn by_account(v: &serde_json::Value) -> BTreeMap<String, serde_json::Value> {
    v["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["account"].as_str().unwrap().to_string(), a.clone()))
        .collect()
}

fn names(us: &[(User, Vec<Vec<u8>>)]) -> Vec<&str> {
    us.iter().map(|(u, _)| u.name.as_str()).collect()
}

#[test]
fn three_hundred_users_in_four_parallel_shards_are_each_pulled_once_and_completely() {
    let d = dovecot_master();
    let us = small_users(d, "shard300", 300);
    let env = TestEnv::new();
    let file = env.path().join("users.txt");
    write_users(&file, &names(&us));
    let root = env.path().join("archives");
    // Deflate costs CPU on a loopback that `auto` may find slow when the
    // machine is busy; these tests are about users, not the wire.
    env.write_config(&staff_toml(d, &file, &root, "compress = false"));
    let round = |args: &[&str]| -> Vec<serde_json::Value> {
        let runs: Vec<_> = (0..4)
            .map(|k| {
                let shard = format!("{k}/4");
                let mut a = vec!["--shard", shard.as_str(), "--jobs", "8"];
                a.extend_from_slice(args);
                spawn_pull(&env, &a)
            })
            .collect();
        runs.into_iter()
            .map(|c| {
                let out = c.wait_with_output().unwrap();
                assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
                report(&out)
            })
            .collect()
    };
    let first = round(&[]);
    let mut seen = BTreeMap::new();
    for (k, v) in first.iter().enumerate() {
        for (name, a) in by_account(v) {
            assert_eq!(a["outcome"], "ok", "{a}");
            assert!(seen.insert(name, k).is_none(), "a user in two shards");
        }
    }
    let all: BTreeSet<String> = us
        .iter()
        .map(|(u, _)| format!("staff/{}", u.name))
        .collect();
    assert_eq!(seen.keys().cloned().collect::<BTreeSet<_>>(), all);
    // The union of the archives is the server: each user's INBOX holds
    // exactly the user's messages, byte for byte.
    for (u, msgs) in &us {
        let archived = support::folder_messages(&root.join(&u.name), "");
        assert_eq!(sorted(archived), sorted(msgs.clone()), "{}", u.name);
    }
    // Nothing is written beside the users' archives.
    let dirs: BTreeSet<String> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(dirs, us.iter().map(|(u, _)| u.name.clone()).collect());
    // A second round downloads nothing.
    for v in round(&[]) {
        assert_eq!(v["fetched"], 0, "{v}");
        assert_eq!(v["errors"], 0, "{v}");
    }
}

/// A `[accounts.staff]` table reaching the master Dovecot through `proxy`
/// with Dovecot's `user*master` login (the proxy sees the user's name in
/// the LOGIN line).
fn proxied_staff_toml(
    d: &Dovecot,
    env: &TestEnv,
    proxy: &CommandProxy,
    file: &Path,
    root: &Path,
    extra: &str,
) -> String {
    staff_toml(
        d,
        file,
        root,
        &format!("admin-login = \"master-separator\"\ncompress = false\n{extra}"),
    )
    .replace(
        &format!("port = {}", d.imaps_port),
        &format!("port = {}", proxy.port),
    )
    .replace(
        &format!("ca-file = {}", toml_str(&d.cert.display().to_string())),
        &format!(
            "ca-file = {}",
            toml_str(&ca_file(env.path()).display().to_string())
        ),
    )
}

/// The user a LOGIN line logs in for (`LOGIN "USER*admin" ...`).
fn login_user(line: &str) -> Option<String> {
    let rest = line.split_once(" LOGIN ")?.1;
    let user = rest.trim_start_matches('"').split('*').next()?;
    Some(user.to_string())
}

#[test]
fn a_missing_user_one_over_quota_and_one_cut_mid_pull_leave_the_other_297_complete() {
    let d = dovecot_master();
    let mut us = small_users(d, "scoped", 297);
    // Over quota on the server: 1 KiB allowed, about 2 kB held. A backup
    // only reads, so the quota does not stop it.
    let full = d.new_user_with_quota("scopedfull", 1);
    let full_msgs: Vec<Vec<u8>> = (0..6).map(|j| mail::plain(9000 + j)).collect();
    seed(d, &full, &full_msgs);
    let victim = d.new_user("scopedcut");
    seed(d, &victim, &[mail::plain(9100), mail::plain(9101)]);
    let ghost = format!("ghost-{}", victim.name);
    let env = TestEnv::new();
    let file = env.path().join("users.txt");
    let mut list = names(&us);
    list.insert(100, &full.name);
    list.insert(150, &victim.name);
    list.insert(200, &ghost);
    write_users(&file, &list);
    let root = env.path().join("archives");
    // Every connection that logged in as the victim is cut at its first
    // body FETCH: the command never reaches the server.
    let victims = Arc::new(Mutex::new(BTreeSet::new()));
    let cuts = Arc::new(Mutex::new(0usize));
    let proxy = {
        let (victims, cuts, name) = (victims.clone(), cuts.clone(), victim.name.clone());
        CommandProxy::start_to(d.imap_port, move |conn, line| {
            if login_user(line).as_deref() == Some(name.as_str()) {
                victims.lock().unwrap().insert(conn);
            }
            if line.contains("BODY.PEEK[]") && victims.lock().unwrap().contains(&conn) {
                *cuts.lock().unwrap() += 1;
                return Line::Cut;
            }
            Line::Forward
        })
    };
    env.write_config(&proxied_staff_toml(d, &env, &proxy, &file, &root, ""));
    let out = spawn_pull(&env, &["--jobs", "8"])
        .wait_with_output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(*cuts.lock().unwrap() >= 1, "the proxy never cut");
    let v = report(&out);
    let accounts = by_account(&v);
    assert_eq!(accounts.len(), 300);
    // Each failure is reported with the user's name, on stderr and in JSON.
    let ghost_acc = &accounts[&format!("staff/{ghost}")];
    assert_eq!(ghost_acc["outcome"], "failed", "{ghost_acc}");
    assert_eq!(ghost_acc["user"], ghost.as_str());
    assert!(
        err.contains(&format!("error: account `staff/{ghost}`")),
        "{err}"
    );
    let cut_acc = &accounts[&format!("staff/{}", victim.name)];
    assert_ne!(cut_acc["outcome"], "ok", "{cut_acc}");
    assert!(err.contains(&format!("staff/{}`", victim.name)), "{err}");
    assert!(!root.join(&ghost).join("mail").exists());
    // The over-quota user is backed up in full, and so is everyone else.
    let full_acc = &accounts[&format!("staff/{}", full.name)];
    assert_eq!(full_acc["outcome"], "ok", "{full_acc}");
    assert_eq!(
        sorted(support::folder_messages(&root.join(&full.name), "")),
        sorted(full_msgs)
    );
    us.truncate(297);
    for (u, msgs) in &us {
        assert_eq!(accounts[&format!("staff/{}", u.name)]["outcome"], "ok");
        let archived = support::folder_messages(&root.join(&u.name), "");
        assert_eq!(sorted(archived), sorted(msgs.clone()), "{}", u.name);
    }
    // Only the three are named as failing.
    let failing: BTreeSet<&str> = accounts
        .iter()
        .filter(|(_, a)| a["outcome"] != "ok")
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(failing.len(), 2, "{failing:?}");
}

/// Holds the lock of the archive at `dir` as another run would.
fn hold_lock(dir: &Path) -> fs::File {
    fs::create_dir_all(dir.join("mail")).unwrap();
    fs::create_dir_all(dir.join("state")).unwrap();
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("state/lock"))
        .unwrap();
    f.try_lock().unwrap();
    f
}

#[test]
fn overlapping_runs_never_pull_one_user_twice_at_once_and_report_each_skip() {
    let d = dovecot_master();
    let us = small_users(d, "overlap", 30);
    let env = TestEnv::new();
    let file = env.path().join("users.txt");
    write_users(&file, &names(&us));
    let root = env.path().join("archives");
    env.write_config(&staff_toml(d, &file, &root, ""));
    // A user whose archive another run holds is skipped by name; the
    // others are pulled.
    let held = &us[3].0.name;
    let lock = hold_lock(&root.join(held));
    let out = spawn_pull(&env, &[]).wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let accounts = by_account(&report(&out));
    assert_eq!(accounts[&format!("staff/{held}")]["outcome"], "locked");
    assert!(
        err.contains(&format!("skipped: account `staff/{held}`")),
        "{err}"
    );
    assert_eq!(
        accounts.values().filter(|a| a["outcome"] == "ok").count(),
        29
    );
    assert!(support::folder_messages(&root.join(held), "").is_empty());
    drop(lock);
    // New mail for everyone, then two runs at once.
    for (i, (u, _)) in us.iter().enumerate() {
        d.doveadm_save(u, "INBOX", &mail::plain(50_000 + i as u32));
    }
    let runs = [spawn_pull(&env, &[]), spawn_pull(&env, &[])];
    let outs: Vec<Output> = runs
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut skips = 0;
    let reports: Vec<_> = outs
        .iter()
        .map(|o| {
            assert!(matches!(o.status.code(), Some(0 | 1)), "{}", stderr(o));
            by_account(&report(o))
        })
        .collect();
    for (u, msgs) in &us {
        let name = format!("staff/{}", u.name);
        let outcomes: Vec<&str> = reports
            .iter()
            .map(|r| r[&name]["outcome"].as_str().unwrap())
            .collect();
        assert!(outcomes.contains(&"ok"), "{name}: {outcomes:?}");
        for (o, out) in outcomes.iter().zip(&outs) {
            assert!(matches!(*o, "ok" | "locked"), "{name}: {o}");
            if *o == "locked" {
                skips += 1;
                let skipped = format!("skipped: account `{name}`");
                assert!(stderr(out).contains(&skipped), "{}", stderr(out));
            }
        }
        // Nothing lost, nothing twice.
        let files = support::folder_files(&root.join(&u.name), "");
        assert_eq!(files.len(), msgs.len() + 1, "{name}: {files:?}");
    }
    eprintln!("overlapping runs: {skips} skips");
}

#[test]
fn jobs_count_connections_across_users_and_each_user_stays_within_max_connections() {
    let d = dovecot_master();
    let us: Vec<User> = (0..6).map(|_| d.new_user("conns")).collect();
    for (i, u) in us.iter().enumerate() {
        let mut imap = u.imap();
        for b in 0..4 {
            let mailbox = format!("Box{b}");
            imap.create(&mailbox);
            imap.append(
                &mailbox,
                &[],
                "14-May-2024 09:30:00 +0200",
                &mail::plain(60_000 + i as u32 * 10 + b),
            );
        }
        imap.logout();
    }
    let env = TestEnv::new();
    let file = env.path().join("users.txt");
    let list: Vec<&str> = us.iter().map(|u| u.name.as_str()).collect();
    write_users(&file, &list);
    let root = env.path().join("archives");
    #[derive(Default)]
    struct Count {
        open: HashMap<usize, String>,
        max_total: usize,
        max_user: usize,
        logins: Vec<String>,
    }
    let count = Arc::new((Mutex::new(Count::default()), Condvar::new()));
    let proxy = {
        let count = count.clone();
        CommandProxy::start_to(d.imap_port, move |conn, line| {
            let (lock, cv) = &*count;
            if let Some(user) = login_user(line) {
                let mut c = lock.lock().unwrap();
                c.open.insert(conn, user.clone());
                c.logins.push(user.clone());
                c.max_total = c.max_total.max(c.open.len());
                let mine = c.open.values().filter(|u| **u == user).count();
                c.max_user = c.max_user.max(mine);
                cv.notify_all();
                // The first login waits until another user logs in too:
                // users pulled one after another would never get there.
                if c.logins.len() == 1 {
                    let (c, timeout) = cv
                        .wait_timeout_while(c, Duration::from_secs(60), |c| {
                            c.logins.iter().all(|u| *u == user)
                        })
                        .unwrap();
                    assert!(!timeout.timed_out(), "users were not pulled side by side");
                    drop(c);
                }
            } else if line.ends_with(" LOGOUT") {
                lock.lock().unwrap().open.remove(&conn);
            }
            Line::Forward
        })
    };
    env.write_config(&proxied_staff_toml(
        d,
        &env,
        &proxy,
        &file,
        &root,
        "max-connections = 2",
    ));
    let out = spawn_pull(&env, &["--jobs", "3"])
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let c = count.0.lock().unwrap();
    assert!(c.max_total >= 2, "never two users at once");
    assert!(
        c.max_total <= 3,
        "{} connections at once with --jobs 3",
        c.max_total
    );
    assert!(c.max_user <= 2, "{} connections of one user", c.max_user);
    for u in &us {
        for b in 0..4 {
            let folder = format!(".Box{b}");
            let n = support::folder_messages(&root.join(&u.name), &folder).len();
            assert_eq!(n, 1, "{} {folder}", u.name);
        }
    }
}

#[test]
fn json_last_pull_and_metrics_report_each_user_and_keep_the_last_success() {
    let d = dovecot_master();
    let us = small_users(d, "metrics", 2);
    let ghost = format!("ghost-{}", us[0].0.name);
    let env = TestEnv::new();
    let file = env.path().join("users.txt");
    write_users(&file, &[&us[0].0.name, &us[1].0.name, &ghost]);
    let root = env.path().join("archives");
    env.write_config(&staff_toml(d, &file, &root, ""));
    let prom_dir = env.path().join("textfile");
    fs::create_dir(&prom_dir).unwrap();
    let prom = prom_dir.join("imapbak.prom");
    let prom_arg = prom.display().to_string();
    let out = spawn_pull(&env, &["--metrics", &prom_arg])
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v = report(&out);
    let accounts = by_account(&v);
    let (u0, u1) = (&us[0].0.name, &us[1].0.name);
    assert_eq!(accounts[&format!("staff/{u0}")]["user"], u0.as_str());
    assert_eq!(accounts[&format!("staff/{ghost}")]["outcome"], "failed");
    let total: u64 = us.iter().map(|(_, m)| m.len() as u64).sum();
    assert_eq!(v["fetched"], total);
    // The report of each user's last pull, in its archive's state/.
    let last: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join(u0).join("state/last-pull.json")).unwrap())
            .unwrap();
    assert_eq!(last["schema"], v["schema"]);
    assert_eq!(last["exit_code"], 0);
    assert_eq!(last["last_success"], last["finished"]);
    assert_eq!(last["account"]["account"], format!("staff/{u0}"));
    let inbox = last["account"]["mailboxes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["folder"] == "")
        .unwrap();
    assert_eq!(inbox["fetched"], 1, "{last}");
    let t0 = last["last_success"].as_i64().unwrap();
    // The textfile: one sample per user, readable by node-exporter,
    // nothing left beside it.
    let metric = |text: &str, name: &str, user: &str| -> Option<f64> {
        let prefix = format!("{name}{{account=\"staff/{user}\",user=\"{user}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map(|v| v.parse().unwrap())
    };
    let text = fs::read_to_string(&prom).unwrap();
    let success = "imapbak_pull_last_success_timestamp_seconds";
    assert_eq!(metric(&text, success, u0), Some(t0 as f64), "{text}");
    assert_eq!(
        metric(&text, "imapbak_pull_fetched_messages", u1),
        Some(2.0)
    );
    assert_eq!(metric(&text, "imapbak_pull_errors", &ghost), Some(1.0));
    assert_eq!(metric(&text, success, &ghost), None, "{text}");
    assert!(text.contains("# TYPE imapbak_pull_errors gauge"));
    assert!(text.contains("\nimapbak_pull_run_exit_code 1\n"), "{text}");
    let mode = fs::metadata(&prom).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644);
    assert_eq!(fs::read_dir(&prom_dir).unwrap().count(), 1);
    // Each user's archive is its own, 0700.
    for (u, _) in &us {
        let mode = fs::metadata(root.join(&u.name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700, "{}", u.name);
    }
    // Next run: u1 is skipped (another run holds it); its last success
    // stays the first run's, and its last report is left to the holder.
    std::thread::sleep(Duration::from_millis(1100));
    let lock = hold_lock(&root.join(u1));
    let out = spawn_pull(&env, &["--metrics", &prom_arg])
        .wait_with_output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    drop(lock);
    let text = fs::read_to_string(&prom).unwrap();
    let first_u1 = metric(&text, success, u1).unwrap();
    let before: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join(u1).join("state/last-pull.json")).unwrap())
            .unwrap();
    assert_eq!(first_u1, before["last_success"].as_f64().unwrap());
    assert_eq!(
        metric(&text, "imapbak_pull_account_exit_code", u1),
        Some(4.0)
    );
    assert!(metric(&text, success, u0).unwrap() > t0 as f64, "{text}");
    assert_eq!(
        metric(&text, "imapbak_pull_fetched_messages", u0),
        Some(0.0)
    );
    assert!(files_under(&prom_dir).len() == 1);
}
