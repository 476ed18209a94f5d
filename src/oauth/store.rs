//! The token store: `$XDG_STATE_HOME/imapbak/tokens/<account>.json`, one
//! file per account, 0600 in a 0700 directory. Written to a new file,
//! synced and renamed over the old one, so a crash leaves the old or the
//! new refresh token, never half of one (Microsoft rotates the refresh
//! token on every use: losing the new one would mean `imapbak login`).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// What is kept for one account. `Debug` hides the tokens.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Stored {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    /// Unix seconds at which the access token expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// The flow that produced the refresh token (`auth-code`, `device`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<hidden>"),
            )
            .field(
                "access_token",
                &self.access_token.as_ref().map(|_| "<hidden>"),
            )
            .field("expires_at", &self.expires_at)
            .field("flow", &self.flow)
            .finish()
    }
}

/// `$XDG_STATE_HOME/imapbak/tokens`, else `~/.local/state/imapbak/tokens`.
pub fn tokens_dir() -> Result<PathBuf> {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .context("cannot find the state directory\nhint: set XDG_STATE_HOME or HOME")?;
    Ok(base.join("imapbak").join("tokens"))
}

/// The token file of `account`.
pub fn path_for(account: &str) -> Result<PathBuf> {
    Ok(tokens_dir()?.join(format!("{account}.json")))
}

/// The stored tokens, `None` when there is no file.
pub fn load(path: &Path) -> Result<Option<Stored>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read `{}`", path.display())),
    };
    // serde_json's error names a position, never the content.
    let stored = serde_json::from_str(&text).with_context(|| {
        format!(
            "token file `{}` is damaged\nhint: delete it and run `imapbak login`",
            path.display()
        )
    })?;
    Ok(Some(stored))
}

/// Writes `stored` atomically: a new 0600 file, fsync, rename, fsync of
/// the directory.
pub fn save(path: &Path, stored: &Stored) -> Result<()> {
    let dir = path.parent().context("token path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create `{}`", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot chmod `{}`", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("token"),
        std::process::id()
    ));
    let body = serde_json::to_vec_pretty(stored).context("cannot encode the token file")?;
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().with_context(|| format!("cannot write `{}`", path.display()))?;
    Ok(())
}

/// Deletes the token file; true when there was one.
pub fn delete(path: &Path) -> Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot delete `{}`", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_tokens_are_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens").join("work.json");
        assert_eq!(load(&path).unwrap(), None);
        let s = Stored {
            refresh_token: Some("r1".into()),
            access_token: Some("a1".into()),
            expires_at: Some(42),
            flow: Some("auth-code".into()),
        };
        save(&path, &s).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700);
        assert_eq!(load(&path).unwrap(), Some(s.clone()));
        let s2 = Stored {
            refresh_token: Some("r2".into()),
            ..s
        };
        save(&path, &s2).unwrap();
        assert_eq!(load(&path).unwrap(), Some(s2));
        // No temporary file is left beside it.
        assert_eq!(
            std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
            1
        );
        assert!(!format!("{:?}", load(&path).unwrap()).contains("r2"));
        assert!(delete(&path).unwrap());
        assert!(!delete(&path).unwrap());
    }
}
