//! OAuth2 sign-in against a real Dovecot whose `oauth2` passdb checks
//! tokens with the harness's introspection endpoint (tests/support/oauth.rs):
//! the token command over OAUTHBEARER and XOAUTH2, refused tokens, the
//! refresh flow with rotation, `invalid_grant`, a session ended mid-run,
//! `imapbak login` (auth code with the test as the browser, device flow),
//! client credentials; and no secret anywhere in what a run leaves.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use crate::fakes::{Fault, Proxy};
use crate::support::oauth::{auth_server, dovecot_oauth, dovecot_xoauth2, http_get, Client};
use crate::support::{self, mail, toml_str, Dovecot, TestEnv, User};

/// An `auth = "oauth2"` account for `user` on `d` (port override for a
/// proxy); `extra` lines are appended.
fn oauth_toml(
    env: &TestEnv,
    d: &Dovecot,
    name: &str,
    user: &User,
    port: u16,
    extra: &str,
) -> String {
    format!(
        "[accounts.{name}]\nhost = \"127.0.0.1\"\nport = {port}\nuser = {}\nauth = \"oauth2\"\nca-file = {}\narchive = {}\n{extra}\n",
        toml_str(&user.name),
        toml_str(&d.cert.display().to_string()),
        toml_str(&env.archive(name).display().to_string()),
    )
}

/// The built-in flow keys for `client` on the harness's server.
fn builtin_keys(client: &Client) -> String {
    let s = auth_server();
    let mut t = format!(
        "oauth2-client-id = {}\noauth2-auth-url = {}\noauth2-token-url = {}\noauth2-device-url = {}\noauth2-scopes = [\"mail\", \"offline_access\"]\n",
        toml_str(&client.id),
        toml_str(&s.url("/authorize")),
        toml_str(&s.url("/token")),
        toml_str(&s.url("/device")),
    );
    if client.secret.is_some() {
        t.push_str("oauth2-client-secret-env = \"IMAPBAK_TEST_CLIENT_SECRET\"\n");
    }
    t
}

fn token_file(env: &TestEnv, name: &str) -> PathBuf {
    env.path()
        .join("home/.local/state/imapbak/tokens")
        .join(format!("{name}.json"))
}

fn stored_refresh(env: &TestEnv, name: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&fs::read(token_file(env, name)).unwrap()).unwrap();
    v["refresh_token"].as_str().unwrap().to_string()
}

/// Writes a token file as `imapbak login` leaves it.
fn store_refresh(env: &TestEnv, name: &str, refresh: &str) {
    let path = token_file(env, name);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(
        &path,
        serde_json::json!({"refresh_token": refresh, "flow": "auth-code"}).to_string(),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
}

fn run(env: &TestEnv, args: &[&str], client: Option<&Client>) -> Output {
    let mut cmd = env.std_cmd();
    cmd.args(args).env("RUST_LOG", "trace").stdin(Stdio::null());
    if let Some(s) = client.and_then(|c| c.secret.as_ref()) {
        cmd.env("IMAPBAK_TEST_CLIENT_SECRET", s);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.code().is_some_and(|c| c != 101),
        "{}",
        stderr(&out)
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn seed(d: &Dovecot, user: &User, n: u32) {
    let messages: Vec<(Vec<u8>, i64)> = (1..=n)
        .map(|i| (mail::plain(i), 1_600_000_000 + i as i64))
        .collect();
    d.seed_inbox(user, &messages);
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                files(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

/// No secret the authorization server ever issued appears in what the
/// runs printed (RUST_LOG=trace, -vv) or in any file they wrote, the token
/// store and the helper's own token file excepted.
fn assert_no_secret(env: &TestEnv, outs: &[&Output], allowed: &[&Path]) {
    let mut all = Vec::new();
    for o in outs {
        all.extend_from_slice(&o.stdout);
        all.extend_from_slice(&o.stderr);
    }
    let mut paths = Vec::new();
    files(env.path(), &mut paths);
    for p in paths {
        if p.starts_with(env.path().join("home/.local/state/imapbak/tokens"))
            || allowed.contains(&p.as_path())
            || p == env.config_path()
        {
            continue;
        }
        let bytes = fs::read(&p).unwrap_or_default();
        if let Ok(plain) = zstd::decode_all(&bytes[..]) {
            all.extend(plain);
        }
        all.extend(bytes);
    }
    let text = String::from_utf8_lossy(&all);
    for s in auth_server().secrets() {
        assert!(!text.contains(&s), "a secret leaked: {s}");
    }
}

#[test]
fn token_command_logs_in_over_oauthbearer_and_xoauth2() {
    for (d, mechanism) in [
        (dovecot_oauth(), "OAUTHBEARER"),
        (dovecot_xoauth2(), "XOAUTH2"),
    ] {
        let user = d.new_user("tokcmd");
        seed(d, &user, 3);
        let client = auth_server().client(&user.name, 3600, false);
        let env = TestEnv::new();
        let tokfile = env.path().join("helper-token");
        fs::write(
            &tokfile,
            format!("{}\n", auth_server().access_token(&client)),
        )
        .unwrap();
        let extra = format!(
            "oauth2-token-command = {}",
            toml_str(&format!("cat {}", tokfile.display()))
        );
        env.write_config(&oauth_toml(&env, d, "a", &user, d.imaps_port, &extra));
        let check = run(&env, &["-vv", "check"], None);
        assert!(check.status.success(), "{}", stderr(&check));
        let text = String::from_utf8_lossy(&check.stdout);
        assert!(
            text.contains(&format!("signed in with OAuth2 over SASL {mechanism}")),
            "{text}"
        );
        let pull = run(&env, &["-vv", "pull", "--json"], None);
        assert!(pull.status.success(), "{}", stderr(&pull));
        assert_eq!(support::folder_files(&env.archive("a"), "").len(), 3);
        assert_no_secret(&env, &[&check, &pull], &[&tokfile]);

        // Tokens of several KB (Microsoft's run to a few) fit the
        // AUTHENTICATE line (Dovecot: ~8 KB, DESIGN.md).
        fs::write(&tokfile, auth_server().long_access_token(&client, 5_000)).unwrap();
        let check = run(&env, &["check"], None);
        assert!(check.status.success(), "{}", stderr(&check));
    }
}

#[test]
fn a_refused_token_is_exit_3_with_the_servers_reason_and_nothing_written() {
    for (d, reason) in [
        (dovecot_oauth(), "status=invalid_token"),
        (dovecot_xoauth2(), "status=401"),
    ] {
        let user = d.new_user("refused");
        seed(d, &user, 2);
        let env = TestEnv::new();
        let extra = "oauth2-token-command = \"echo not-a-live-token\"";
        env.write_config(&oauth_toml(&env, d, "a", &user, d.imaps_port, extra));
        let start = Instant::now();
        let out = run(&env, &["pull"], None);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(err.contains("refused the OAuth2 access token"), "{err}");
        assert!(err.contains(reason), "{err}");
        assert!(err.contains("hint:"), "{err}");
        assert!(!err.contains("not-a-live-token"), "{err}");
        // The error continuation was answered: no wait for a timeout.
        assert!(start.elapsed() < Duration::from_secs(20));
        assert!(support::folder_files(&env.archive("a"), "").is_empty());
    }
}

#[test]
fn a_failing_token_command_is_exit_3_with_its_status_and_stderr() {
    let d = dovecot_oauth();
    let user = d.new_user("tokfail");
    let env = TestEnv::new();
    let extra = "oauth2-token-command = \"echo 'pizauth: no token' >&2; exit 4\"";
    env.write_config(&oauth_toml(&env, d, "a", &user, d.imaps_port, extra));
    let out = run(&env, &["pull"], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("oauth2-token-command") && err.contains("pizauth: no token"),
        "{err}"
    );
    assert!(err.contains("exit status: 4"), "{err}");
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn refresh_tokens_rotate_and_the_newest_is_saved_privately_before_use() {
    let d = dovecot_oauth();
    let user = d.new_user("rotate");
    seed(d, &user, 2);
    let client = auth_server().client(&user.name, 15, true);
    let env = TestEnv::new();
    env.write_config(&oauth_toml(
        &env,
        d,
        "a",
        &user,
        d.imaps_port,
        &builtin_keys(&client),
    ));
    let mut previous = vec![auth_server().refresh_token(&client)];
    store_refresh(&env, "a", &previous[0]);
    let mut outs = Vec::new();
    for round in 0..3 {
        let out = run(&env, &["-vv", "pull"], Some(&client));
        assert!(out.status.success(), "round {round}: {}", stderr(&out));
        let now = stored_refresh(&env, "a");
        assert!(!previous.contains(&now), "round {round}: not rotated");
        assert!(auth_server().refresh_alive(&now));
        for old in &previous {
            assert!(!auth_server().refresh_alive(old));
        }
        previous.push(now);
        outs.push(out);
    }
    let mode = fs::metadata(token_file(&env, "a"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(auth_server().grants(&client, "refresh_token") >= 3);
    assert_eq!(support::folder_files(&env.archive("a"), "").len(), 2);
    let outs: Vec<&Output> = outs.iter().collect();
    assert_no_secret(&env, &outs, &[]);
}

#[test]
fn invalid_grant_and_no_stored_token_hint_at_imapbak_login() {
    let d = dovecot_oauth();
    let user = d.new_user("revoked");
    seed(d, &user, 1);
    let client = auth_server().client(&user.name, 3600, false);
    let env = TestEnv::new();
    env.write_config(&oauth_toml(
        &env,
        d,
        "acct",
        &user,
        d.imaps_port,
        &builtin_keys(&client),
    ));

    let out = run(&env, &["pull"], Some(&client));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("no stored OAuth2 token"), "{err}");
    assert!(err.contains("imapbak login acct"), "{err}");

    store_refresh(&env, "acct", &auth_server().refresh_token(&client));
    auth_server().revoke(&client);
    let out = run(&env, &["pull"], Some(&client));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("invalid_grant"), "{err}");
    assert!(err.contains("hint: run `imapbak login acct`"), "{err}");
    assert!(support::folder_files(&env.archive("acct"), "").is_empty());

    // An unreachable token endpoint: exit 3 too, with its own hint.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let keys = builtin_keys(&client).replace(
        &auth_server().url("/token"),
        &format!("http://127.0.0.1:{port}/token"),
    );
    env.write_config(&oauth_toml(&env, d, "acct", &user, d.imaps_port, &keys));
    let out = run(&env, &["pull"], Some(&client));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("cannot reach the token endpoint"), "{err}");

    // A token endpoint answering garbage (here: an introspection reply).
    let keys = builtin_keys(&client).replace(
        &auth_server().url("/token"),
        &auth_server().url("/introspect"),
    );
    env.write_config(&oauth_toml(&env, d, "acct", &user, d.imaps_port, &keys));
    let out = run(&env, &["pull"], Some(&client));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("not an OAuth2 token response"), "{err}");
    assert!(support::folder_files(&env.archive("acct"), "").is_empty());
}

#[test]
fn a_stored_access_token_the_server_refuses_is_refreshed_once_and_the_run_goes_on() {
    let d = dovecot_oauth();
    let user = d.new_user("stale");
    seed(d, &user, 1);
    let client = auth_server().client(&user.name, 3600, false);
    let env = TestEnv::new();
    env.write_config(&oauth_toml(
        &env,
        d,
        "a",
        &user,
        d.imaps_port,
        &builtin_keys(&client),
    ));
    let path = token_file(&env, "a");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    // Looks valid for an hour, but the server does not know it.
    let far = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    fs::write(
        &path,
        serde_json::json!({
            "refresh_token": auth_server().refresh_token(&client),
            "access_token": "revoked-access-token",
            "expires_at": far,
        })
        .to_string(),
    )
    .unwrap();
    let out = run(&env, &["-vv", "pull"], Some(&client));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(auth_server().grants(&client, "refresh_token"), 1);
    assert_eq!(support::folder_files(&env.archive("a"), "").len(), 1);
    // The next run uses the saved access token: no refresh.
    let out2 = run(&env, &["pull"], Some(&client));
    assert!(out2.status.success(), "{}", stderr(&out2));
    assert_eq!(auth_server().grants(&client, "refresh_token"), 1);
    assert_no_secret(&env, &[&out, &out2], &[]);
}

#[test]
fn a_session_ended_mid_run_reconnects_with_a_fresh_token_and_fetches_each_message_once() {
    let d = dovecot_oauth();
    let user = d.new_user("kick");
    let n = 120u32;
    let messages: Vec<(Vec<u8>, i64)> = (1..=n)
        .map(|i| {
            let mut m = mail::plain(i);
            m.extend(mail::base64(&mail::pseudo_random(i as u64, 30_000)).as_bytes());
            m.extend(b"\r\n");
            (m, 1_600_000_000 + i as i64)
        })
        .collect();
    d.seed_inbox(&user, &messages);
    // 15 s tokens, as in the issue: every connection refreshes first.
    let client = auth_server().client(&user.name, 15, false);
    let env = TestEnv::new();
    // Slow the first connection down so the kicks land mid-fetch.
    let proxy = Proxy::start(
        d.imaps_port,
        Fault::Trickle {
            chunk: 8192,
            pause_ms: 10,
        },
    );
    let mut keys = builtin_keys(&client);
    keys.push_str("timeout = 20\n");
    env.write_config(&oauth_toml(&env, d, "a", &user, proxy.port, &keys));
    store_refresh(&env, "a", &auth_server().refresh_token(&client));
    let child = env
        .std_cmd()
        .args(["-v", "pull", "--jobs", "1", "--json"])
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first messages, then end the session as Microsoft does
    // at token expiry (`doveadm kick`: the client reads `* BYE`).
    let deadline = Instant::now() + Duration::from_secs(60);
    while support::folder_files(&env.archive("a"), "").len() < 5 {
        assert!(Instant::now() < deadline, "the pull did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    d.doveadm(&["kick", &user.name]);
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let archived = support::folder_files(&env.archive("a"), "");
    assert_eq!(archived.len(), n as usize, "{err}");
    let mut bodies: Vec<Vec<u8>> = archived.iter().map(|p| support::read_zstd(p)).collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(bodies.len(), n as usize, "a message archived twice");
    assert!(
        report.to_string().contains(&format!("\"fetched\":{n}")),
        "{report}"
    );
    assert!(err.contains("reconnecting"), "{err}");
    assert!(auth_server().grants(&client, "refresh_token") >= 2, "{err}");
    assert_no_secret(&env, &[&out], &[]);
}

/// Issue 11, "Long runs": a server that ends every session when its 15 s
/// token expires (Microsoft ends a session at token expiry, PROVIDERS.md;
/// `doveadm kick` every 15 s stands in), over a slow link on every
/// connection so the pull lasts about a minute: it completes with every
/// message exactly once.
#[test]
fn a_minute_long_pull_survives_a_session_ended_at_every_token_expiry() {
    let d = dovecot_oauth();
    let user = d.new_user("expiry");
    let n = 200u32;
    let messages: Vec<(Vec<u8>, i64)> = (1..=n)
        .map(|i| {
            let mut m = mail::plain(i);
            m.extend(mail::base64(&mail::pseudo_random(i as u64 + 7_000, 30_000)).as_bytes());
            m.extend(b"\r\n");
            (m, 1_600_000_000 + i as i64)
        })
        .collect();
    d.seed_inbox(&user, &messages);
    let client = auth_server().client(&user.name, 15, false);
    let env = TestEnv::new();
    // About 200 KB/s on every connection: 8 MB take ~40 s and more.
    let proxy = Proxy::start_every(
        d.imaps_port,
        Fault::Trickle {
            chunk: 4096,
            pause_ms: 20,
        },
    );
    let mut keys = builtin_keys(&client);
    // The slow link would make `compress = "auto"` deflate; kept off so the
    // pull lasts long enough for several expiries.
    keys.push_str("timeout = 30\ncompress = false\n");
    env.write_config(&oauth_toml(&env, d, "a", &user, proxy.port, &keys));
    store_refresh(&env, "a", &auth_server().refresh_token(&client));
    let mut child = env
        .std_cmd()
        .args(["-v", "pull", "--jobs", "1", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut kicks = 0;
    let mut next = started + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the pull never ended"
        );
        if Instant::now() >= next {
            // Between two sessions there is nobody to kick (exit 68): fine.
            let kicked = d
                .doveadm_cmd()
                .args(["kick", &user.name])
                .output()
                .is_ok_and(|o| o.status.success());
            kicks += usize::from(kicked);
            next += Duration::from_secs(15);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        kicks >= 2,
        "the pull took {:?}: too short to test expiry",
        started.elapsed()
    );
    let archived = support::folder_files(&env.archive("a"), "");
    let mut bodies: Vec<Vec<u8>> = archived.iter().map(|p| support::read_zstd(p)).collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(archived.len(), n as usize, "{err}");
    assert_eq!(bodies.len(), n as usize, "a message archived twice");
    assert_no_secret(&env, &[&out], &[]);
}

/// Spawns `imapbak login` and reads its stderr line by line until `pick`
/// finds what it waits for. The caller waits for the child it gets back.
#[allow(clippy::zombie_processes)]
fn spawn_login(
    env: &TestEnv,
    client: &Client,
    args: &[&str],
    pick: impl Fn(&str) -> Option<String>,
) -> (std::process::Child, String, Vec<String>) {
    let mut cmd = env.std_cmd();
    if let Some(s) = &client.secret {
        cmd.env("IMAPBAK_TEST_CLIENT_SECRET", s);
    }
    let mut child = cmd
        .args(args)
        .env("RUST_LOG", "trace")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = Vec::new();
    let mut reader = BufReader::new(child.stderr.take().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            let _ = child.wait();
            panic!("login ended early:\n{}", lines.join(""));
        }
        lines.push(line.clone());
        if let Some(found) = pick(line.trim_end()) {
            // Keep draining stderr so the child never blocks on it.
            let rest = std::thread::spawn(move || {
                let mut s = String::new();
                let _ = std::io::Read::read_to_string(&mut reader, &mut s);
                s
            });
            std::mem::forget(rest);
            return (child, found, lines);
        }
    }
}

#[test]
fn login_with_the_auth_code_flow_then_pull_without_interaction() {
    let d = dovecot_oauth();
    let user = d.new_user("authcode");
    seed(d, &user, 2);
    let client = auth_server().client(&user.name, 3600, false);
    let env = TestEnv::new();
    env.write_config(&oauth_toml(
        &env,
        d,
        "g",
        &user,
        d.imaps_port,
        &builtin_keys(&client),
    ));
    let prefix = auth_server().url("/authorize?");
    let (mut child, url, lines) = spawn_login(&env, &client, &["login", "g"], |l| {
        l.starts_with(&prefix).then(|| l.to_string())
    });
    assert!(
        url.contains("code_challenge_method=S256") && url.contains("state="),
        "{url}"
    );
    // The test is the browser: the provider redirects to the loopback URI.
    let (status, location, _) = http_get(&url);
    assert_eq!(status, 302);
    let location = location.unwrap();
    assert!(location.starts_with("http://127.0.0.1:"), "{location}");
    let (status, _, body) = http_get(&location);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("signed in"), "{body}");
    let status = child.wait().unwrap();
    assert!(status.success(), "{}", lines.join(""));
    let mode = fs::metadata(token_file(&env, "g"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(auth_server().grants(&client, "authorization_code"), 1);

    let out = run(&env, &["pull"], Some(&client));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(support::folder_files(&env.archive("g"), "").len(), 2);
    let out2 = run(&env, &["check"], Some(&client));
    assert!(String::from_utf8_lossy(&out2.stdout).contains("the access token expires at"));
    assert_no_secret(&env, &[&out, &out2], &[]);
    assert!(!lines.join("").contains("code="), "the code was printed");

    // A forged answer (wrong state) is refused.
    let (mut child, url, _) = spawn_login(&env, &client, &["login", "g", "--timeout", "30"], |l| {
        l.starts_with(&prefix).then(|| l.to_string())
    });
    let (_, location, _) = http_get(&url);
    let forged = location
        .unwrap()
        .split("&state=")
        .next()
        .unwrap()
        .to_string()
        + "&state=forged";
    let (status, _, _) = http_get(&forged);
    assert_eq!(status, 400);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3));

    // logout deletes the token file.
    let out = run(&env, &["logout", "g"], None);
    assert!(out.status.success());
    assert!(!token_file(&env, "g").exists());
}

#[test]
fn login_with_the_device_flow_honours_slow_down_and_stores_the_token() {
    let d = dovecot_xoauth2();
    let user = d.new_user("device");
    seed(d, &user, 1);
    let client = auth_server().client(&user.name, 3600, true);
    let env = TestEnv::new();
    env.write_config(&oauth_toml(
        &env,
        d,
        "o",
        &user,
        d.imaps_port,
        &builtin_keys(&client),
    ));
    let (mut child, code, _) = spawn_login(&env, &client, &["login", "--device", "o"], |l| {
        l.strip_prefix("and enter the code ").map(str::to_string)
    });
    // The test approves on the "other device".
    assert!(auth_server().approve(&code));
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(auth_server().grants(&client, "urn:ietf:params:oauth:grant-type:device_code") >= 2);
    let out = run(&env, &["pull"], Some(&client));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(support::folder_files(&env.archive("o"), "").len(), 1);
}

#[test]
fn client_credentials_need_no_login() {
    let d = dovecot_xoauth2();
    let user = d.new_user("appOnly");
    seed(d, &user, 2);
    let client = auth_server().client(&user.name, 3600, true);
    let env = TestEnv::new();
    let keys = format!(
        "{}oauth2-flow = \"client-credentials\"\n",
        builtin_keys(&client)
    );
    env.write_config(&oauth_toml(&env, d, "m", &user, d.imaps_port, &keys));
    let out = run(&env, &["-vv", "pull"], Some(&client));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(support::folder_files(&env.archive("m"), "").len(), 2);
    assert_eq!(auth_server().grants(&client, "client_credentials"), 1);
    assert!(!token_file(&env, "m").exists());
    assert_no_secret(&env, &[&out], &[]);
}

#[test]
fn a_service_account_signs_a_jwt_for_the_user_and_needs_no_login() {
    let d = dovecot_oauth();
    let user = d.new_user("workspace");
    seed(d, &user, 2);
    let env = TestEnv::new();
    let (key, client) = auth_server().service_account(&user.name, env.path());
    let keys = format!(
        "oauth2-flow = \"service-account\"\noauth2-service-account-key = {}\noauth2-token-url = {}\noauth2-scopes = [\"https://mail.google.com/\"]\n",
        toml_str(&key.display().to_string()),
        toml_str(&auth_server().url("/token")),
    );
    env.write_config(&oauth_toml(&env, d, "w", &user, d.imaps_port, &keys));
    let out = run(&env, &["-vv", "pull"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(support::folder_files(&env.archive("w"), "").len(), 2);
    assert_eq!(auth_server().grants(&client, "jwt-bearer"), 1);
    assert_no_secret(&env, &[&out], &[&key]);

    // Another user's mailbox is refused by the token endpoint: exit 3.
    let other = d.new_user("notdelegated");
    env.write_config(&oauth_toml(&env, d, "w", &other, d.imaps_port, &keys));
    let out = run(&env, &["pull"], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("unauthorized_client"), "{err}");
}

/// A scripted server for what Dovecot cannot be made to do: XOAUTH2 without
/// SASL-IR (the initial response then follows an empty `+` continuation,
/// RFC 4954-style as RFC 3501 6.2.2 AUTHENTICATE works), with the failure
/// as Google documents it (developers.google.com/gmail/imap/xoauth2-protocol:
/// a `+` continuation carrying base64 JSON `{"status":"400",...}`, the
/// client sends an empty line, then the tagged NO).
#[test]
fn xoauth2_without_sasl_ir_sends_the_token_after_the_continuation() {
    use crate::fakes::{certs, FakeMailbox, FakeServer, Greeting, Hook};
    use base64::Engine;
    const GOOD: &str = "ya29.fake-good-token";
    let b64 = base64::engine::general_purpose::STANDARD;
    let server = FakeServer::start(
        Greeting::Tls(certs().valid.clone()),
        vec![FakeMailbox {
            name: "INBOX".into(),
            delimiter: "/".into(),
            messages: vec![mail::plain(1), mail::plain(2)],
        }],
        move |_, tag, cmd, s| {
            let upper = cmd.to_ascii_uppercase();
            if upper == "CAPABILITY" && tag == "capq1" {
                let _ = s.send(
                    format!("* CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2\r\n{tag} OK done\r\n")
                        .as_bytes(),
                );
                return Hook::Done;
            }
            if upper == "AUTHENTICATE XOAUTH2" {
                let _ = s.send(b"+ \r\n");
                let Some((line, _)) = s.read_command() else {
                    return Hook::Close;
                };
                let got = b64.decode(line.trim()).unwrap_or_default();
                if got == format!("user=me@example.com\x01auth=Bearer {GOOD}\x01\x01").as_bytes() {
                    let _ = s.send(format!("{tag} OK Success\r\n").as_bytes());
                } else {
                    let challenge = b64.encode(
                        br#"{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}"#,
                    );
                    let _ = s.send(format!("+ {challenge}\r\n").as_bytes());
                    let answer = s.read_command();
                    let reply = match answer {
                        Some((l, _)) if l.is_empty() => {
                            format!(
                                "{tag} NO [AUTHENTICATIONFAILED] Invalid credentials (Failure)\r\n"
                            )
                        }
                        _ => format!("{tag} BAD expected an empty line\r\n"),
                    };
                    let _ = s.send(reply.as_bytes());
                }
                return Hook::Done;
            }
            Hook::Pass
        },
    );
    let env = TestEnv::new();
    let ca = env.path().join("ca.pem");
    fs::write(&ca, &certs().ca_pem).unwrap();
    let config = |token: &str| {
        format!(
            "[accounts.a]\nhost = \"127.0.0.1\"\nport = {}\nuser = \"me@example.com\"\nauth = \"oauth2\"\noauth2-token-command = \"echo {token}\"\nca-file = {}\narchive = {}\ntimeout = 5\n",
            server.port,
            toml_str(&ca.display().to_string()),
            toml_str(&env.archive("a").display().to_string()),
        )
    };
    env.write_config(&config(GOOD));
    let out = run(&env, &["pull"], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(support::folder_files(&env.archive("a"), "").len(), 2);
    assert!(server
        .commands()
        .iter()
        .any(|c| c.ends_with("AUTHENTICATE XOAUTH2")));

    env.write_config(&config("ya29.stale"));
    let out = run(&env, &["check"], None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("XOAUTH2") && err.contains("status=400"),
        "{err}"
    );
    assert!(err.contains("Invalid credentials"), "{err}");
    assert!(!err.contains("ya29.stale"), "{err}");
}
