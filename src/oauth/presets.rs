//! `provider = "..."`: the host, port, TLS mode, `auth` and OAuth2
//! endpoints of the big providers, so a user writes four lines instead of
//! ten. Every value here can still be set in the account and then wins.
//! The README's provider section lists the same values (a test keeps them
//! in step).

use crate::config::TlsMode;

/// `auth = "password" | "oauth2"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    Password,
    Oauth2,
}

/// One provider's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    pub name: &'static str,
    pub host: &'static str,
    pub port: u16,
    pub tls: TlsMode,
    pub auth: AuthMode,
    pub auth_url: Option<&'static str>,
    pub token_url: Option<&'static str>,
    pub device_url: Option<&'static str>,
    pub scopes: &'static [&'static str],
}

/// The presets. Sources: Google "OAuth 2.0 for Mobile & Desktop Apps" and
/// "IMAP, POP, and SMTP" (XOAUTH2, scope `https://mail.google.com/`; the
/// device flow does not allow Gmail scopes, so gmail has no device URL);
/// Microsoft Learn "Authenticate an IMAP, POP or SMTP connection using
/// OAuth" (endpoints under login.microsoftonline.com/common, scope
/// IMAP.AccessAsUser.All + offline_access); Fastmail gives IMAP OAuth2
/// only to clients it registered itself and iCloud not at all, so both
/// default to an app password; Yahoo gives
/// the `mail-w` scope only to approved apps, so its default is an app
/// password too, with the endpoints filled for those who have one.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "gmail",
        host: "imap.gmail.com",
        port: 993,
        tls: TlsMode::Implicit,
        auth: AuthMode::Oauth2,
        auth_url: Some("https://accounts.google.com/o/oauth2/v2/auth"),
        token_url: Some("https://oauth2.googleapis.com/token"),
        device_url: None,
        scopes: &["https://mail.google.com/"],
    },
    Preset {
        name: "outlook",
        host: "outlook.office365.com",
        port: 993,
        tls: TlsMode::Implicit,
        auth: AuthMode::Oauth2,
        auth_url: Some("https://login.microsoftonline.com/common/oauth2/v2.0/authorize"),
        token_url: Some("https://login.microsoftonline.com/common/oauth2/v2.0/token"),
        device_url: Some("https://login.microsoftonline.com/common/oauth2/v2.0/devicecode"),
        scopes: &[
            "https://outlook.office.com/IMAP.AccessAsUser.All",
            "offline_access",
        ],
    },
    Preset {
        name: "fastmail",
        host: "imap.fastmail.com",
        port: 993,
        tls: TlsMode::Implicit,
        auth: AuthMode::Password,
        auth_url: None,
        token_url: None,
        device_url: None,
        scopes: &[],
    },
    Preset {
        name: "icloud",
        host: "imap.mail.me.com",
        port: 993,
        tls: TlsMode::Implicit,
        auth: AuthMode::Password,
        auth_url: None,
        token_url: None,
        device_url: None,
        scopes: &[],
    },
    Preset {
        name: "yahoo",
        host: "imap.mail.yahoo.com",
        port: 993,
        tls: TlsMode::Implicit,
        auth: AuthMode::Password,
        auth_url: Some("https://api.login.yahoo.com/oauth2/request_auth"),
        token_url: Some("https://api.login.yahoo.com/oauth2/get_token"),
        device_url: None,
        scopes: &["mail-w"],
    },
];

/// The preset called `name`; an unknown name is an error listing the known.
pub fn find(name: &str) -> Result<&'static Preset, String> {
    PRESETS.iter().find(|p| p.name == name).ok_or_else(|| {
        let known: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        format!(
            "unknown provider `{name}`\nhint: use one of {}, or leave `provider` out and set `host`",
            known.join(", ")
        )
    })
}

/// The README table row of a preset (`readme_lists_every_preset` checks it).
pub fn readme_row(p: &Preset) -> String {
    let opt = |v: Option<&str>| v.map(|s| format!("`{s}`")).unwrap_or_else(|| "-".into());
    format!(
        "| `{}` | `{}:{}` | `{}` | {} | {} | {} | {} |",
        p.name,
        p.host,
        p.port,
        match p.auth {
            AuthMode::Password => "password",
            AuthMode::Oauth2 => "oauth2",
        },
        opt(p.auth_url),
        opt(p.token_url),
        opt(p.device_url),
        if p.scopes.is_empty() {
            "-".to_string()
        } else {
            p.scopes
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(" ")
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_provider_lists_the_known_ones() {
        let err = find("gmial").unwrap_err();
        assert!(
            err.contains("`gmial`") && err.contains("gmail, outlook"),
            "{err}"
        );
        assert_eq!(find("outlook").unwrap().host, "outlook.office365.com");
    }

    #[test]
    fn readme_lists_every_preset() {
        let readme = include_str!("../../README.md");
        for p in PRESETS {
            let row = readme_row(p);
            assert!(readme.contains(&row), "README.md lacks the row\n{row}");
        }
    }
}
