//! contrib/ checked offline: the Kubernetes manifests against Kubernetes'
//! own schemas (the PyPI package kubernetes-validate, strict: an unknown
//! field is an error), and the systemd units with `systemd-analyze
//! verify`. scripts/test.sh installs both tools (scripts/contrib-tools.sh);
//! without them a run outside CI skips with a message, and CI fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::TestEnv;

fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib")
}

fn have(tool: &str) -> bool {
    crate::support::have_tool(tool, "scripts/contrib-tools.sh")
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn validate(file: &Path, version: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new("kubernetes-validate");
    cmd.arg("--strict");
    if let Some(v) = version {
        cmd.args(["-k", v]);
    }
    cmd.arg(file).output().unwrap()
}

#[test]
fn the_kubernetes_manifests_validate_against_kubernetes_schemas() {
    if !have("kubernetes-validate") {
        return;
    }
    let dir = contrib().join("kubernetes");
    let files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(!files.is_empty());
    for file in &files {
        // The newest schemas, and 1.29: the first with backoffLimitPerIndex.
        for version in [None, Some("1.29.0")] {
            let out = validate(file, version);
            assert!(
                out.status.success(),
                "{} ({version:?}): {}",
                file.display(),
                text(&out)
            );
            assert!(
                text(&out).contains("cronjob/imapbak-pull"),
                "{}",
                text(&out)
            );
        }
    }
    // The validator does refuse what Kubernetes would: a misspelt field.
    let env = TestEnv::new();
    let bad = env.path().join("bad.yaml");
    let manifest = fs::read_to_string(dir.join("imapbak-cronjob.yaml")).unwrap();
    fs::write(
        &bad,
        manifest.replace("backoffLimitPerIndex:", "backoffLimitPerIndx:"),
    )
    .unwrap();
    let out = validate(&bad, None);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("backoffLimitPerIndx"), "{}", text(&out));
}

#[test]
fn the_systemd_units_verify_for_the_system_and_for_a_user() {
    for kind in ["system", "user"] {
        let dir = contrib().join("systemd").join(kind);
        let service = fs::read_to_string(dir.join("imapbak-pull.service")).unwrap();
        let timer = fs::read_to_string(dir.join("imapbak-pull.timer")).unwrap();
        for key in ["Type=oneshot", "Nice=", "IOSchedulingClass=idle"] {
            assert!(service.contains(key), "{kind}: no {key}");
        }
        for key in [
            "Persistent=true",
            "RandomizedDelaySec=",
            "WantedBy=timers.target",
        ] {
            assert!(timer.contains(key), "{kind}: no {key}");
        }
        if !have("systemd-analyze") {
            return;
        }
        // verify wants ExecStart to exist: point it at the binary under test.
        let env = TestEnv::new();
        let bin = env!("CARGO_BIN_EXE_imapbak");
        let service = service
            .replace("%h/.cargo/bin/imapbak", bin)
            .replace("/usr/local/bin/imapbak", bin);
        assert!(service.contains(&format!("ExecStart={bin} pull")), "{kind}");
        fs::write(env.path().join("imapbak-pull.service"), service).unwrap();
        fs::write(env.path().join("imapbak-pull.timer"), &timer).unwrap();
        // (`verify --user` needs a user session's runtime directory; the
        // unit's keys are the same either way.)
        let out = Command::new("systemd-analyze")
            .current_dir(env.path())
            .args([
                "verify",
                "--man=no",
                "./imapbak-pull.service",
                "./imapbak-pull.timer",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify ({kind}): {}",
            text(&out)
        );
    }
}
