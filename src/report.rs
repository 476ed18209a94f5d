//! How every command reports a run: the [`Summary`] trait (`Display` for
//! people, one line when all went well; `Serialize` for `--json`, the object
//! documented in the man page), error text and byte counts. Each command's
//! own report types live beside its executor (`sync/<command>/report.rs`).

use std::fmt;

use serde::Serialize;

/// A run's summary as every subcommand prints it: problems to stderr, then
/// JSON (`--json`) or one human line to stdout (none with `--quiet`).
pub trait Summary: fmt::Display + Serialize {
    /// One `error:` (or `warning:`) line per problem, for stderr.
    fn problems(&self) -> Vec<String>;

    fn print(&self, json: bool, quiet: bool) -> serde_json::Result<()> {
        for line in self.problems() {
            eprintln!("{line}");
        }
        if json {
            println!("{}", json_text(self)?);
        } else if !quiet {
            println!("{self}");
        }
        Ok(())
    }
}

/// An error chain as one `cause: cause: ...` line, with any `hint:` lines
/// (which context messages may carry) moved after it, so the hint is the
/// last thing the user reads. A cause of several lines (toml's caret
/// display of the offending line) keeps its lines: its first line joins
/// the chain, the rest follow as they are.
pub fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut hints = Vec::new();
    // True after a multi-line cause: the next one starts a line of its own.
    let mut block = false;
    for layer in e.chain() {
        let text = layer.to_string();
        let mut lines = text.lines().filter(|l| {
            if l.starts_with("hint:") {
                hints.push(l.to_string());
                false
            } else {
                !l.trim().is_empty()
            }
        });
        let Some(first) = lines.next() else { continue };
        if !out.is_empty() {
            out.push_str(if block { "\n" } else { ": " });
        }
        out.push_str(first);
        block = false;
        for line in lines {
            out.push('\n');
            out.push_str(line);
            block = true;
        }
    }
    for h in hints {
        out.push('\n');
        out.push_str(&h);
    }
    out
}

/// The `--json` text of a report. Every `error` field's `hint:` lines move
/// to a `hint` field beside it (null when there is none), and an `errors`
/// list of texts gets a `hints` list of the same length, so a script gets
/// the cause and the remedy apart and neither holds a line break it did not
/// ask for.
pub fn json_text<T: Serialize + ?Sized>(report: &T) -> serde_json::Result<String> {
    serde_json::to_string_pretty(&json_value(report)?)
}

/// The version of every `--json` output's shape, in its `schema` field
/// (README, "JSON output"). Raised when a field changes meaning or goes.
pub const JSON_SCHEMA: u32 = 2;

/// A report as the JSON value `--json` prints: hints split out as in
/// [`json_text`], and `"schema": N` first in the object (in each object,
/// for the outputs that are arrays: `ls`, `search`).
pub fn json_value<T: Serialize + ?Sized>(report: &T) -> serde_json::Result<serde_json::Value> {
    use serde_json::Value;
    let mut value = serde_json::to_value(report)?;
    split_hints(&mut value);
    let stamp = |v: &mut Value| {
        if let Value::Object(map) = v {
            map.shift_insert(0, "schema".into(), Value::from(JSON_SCHEMA));
        }
    };
    match &mut value {
        Value::Array(items) => items.iter_mut().for_each(stamp),
        v => stamp(v),
    }
    Ok(value)
}

fn split_hints(value: &mut serde_json::Value) {
    use serde_json::Value;
    /// Takes the hint out of a text value: the hint, or null.
    fn take(v: &mut Value) -> Value {
        match v {
            Value::String(text) => {
                let (cause, hint) = split_hint(text);
                *text = cause;
                hint.map_or(Value::Null, Value::String)
            }
            _ => Value::Null,
        }
    }
    match value {
        Value::Object(map) => {
            for child in map.values_mut() {
                split_hints(child);
            }
            for (field, beside) in [
                ("error", "hint"),
                ("errors", "hints"),
                ("server_error", "server_hint"),
            ] {
                let Some(at) = map.keys().position(|k| k == field) else {
                    continue;
                };
                if map.contains_key(beside) {
                    continue;
                }
                let hint = match (field, map.get_mut(field)) {
                    ("error" | "server_error", Some(v)) => take(v),
                    ("errors", Some(Value::Array(items))) if items.iter().all(Value::is_string) => {
                        Value::Array(items.iter_mut().map(take).collect())
                    }
                    // `errors` as a count, not a list of texts.
                    _ => continue,
                };
                map.shift_insert(at + 1, beside.into(), hint);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(split_hints),
        _ => {}
    }
}

/// A `text\nhint: ...` error string as (text, hint): what `--json` shows
/// as separate `error` and `hint` fields.
pub fn split_hint(text: &str) -> (String, Option<String>) {
    let mut rest = Vec::new();
    let mut hints = Vec::new();
    for line in text.lines() {
        match line.strip_prefix("hint:") {
            Some(h) => hints.push(h.trim().to_string()),
            None => rest.push(line),
        }
    }
    let hint = (!hints.is_empty()).then(|| hints.join("; "));
    (rest.join("\n"), hint)
}

/// Bytes in human units (base 1000, as `ls -h --si`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_come_after_the_whole_cause_chain() {
        let e = anyhow::anyhow!("no such file")
            .context("cannot read `x.toml`\nhint: pass --config PATH");
        assert_eq!(
            error_text(&e),
            "cannot read `x.toml`: no such file\nhint: pass --config PATH"
        );
    }

    #[test]
    fn a_multi_line_cause_keeps_its_lines_and_the_hint_stays_last() {
        let toml = "TOML parse error at line 2, column 1\n  |\n2 | pasword-command = \"x\"\n  | ^^^^^^^^^^^^^^^\nunknown field `pasword-command`\n";
        let e = anyhow::anyhow!(toml.to_string())
            .context("invalid configuration `c.toml`\nhint: did you mean `password-command`?");
        assert_eq!(
            error_text(&e),
            "invalid configuration `c.toml`: TOML parse error at line 2, column 1\n  |\n2 | pasword-command = \"x\"\n  | ^^^^^^^^^^^^^^^\nunknown field `pasword-command`\nhint: did you mean `password-command`?"
        );
    }

    #[test]
    fn json_error_fields_get_a_hint_field_beside_them() {
        let report = serde_json::json!({
            "accounts": [
                {"account": "a", "error": "cannot connect\nhint: check `host`", "n": 1},
                {"account": "b", "error": null},
            ]
        });
        let v: serde_json::Value = serde_json::from_str(&json_text(&report).unwrap()).unwrap();
        assert_eq!(v["accounts"][0]["error"], "cannot connect");
        assert_eq!(v["accounts"][0]["hint"], "check `host`");
        assert!(v["accounts"][1]["hint"].is_null());
        let keys: Vec<&String> = v["accounts"][0].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["account", "error", "hint", "n"]);
    }

    #[test]
    fn every_json_output_starts_with_its_schema_also_in_array_items() {
        let v = json_value(&serde_json::json!({"a": 1})).unwrap();
        assert_eq!(v.as_object().unwrap().keys().next().unwrap(), "schema");
        assert_eq!(v["schema"], JSON_SCHEMA);
        let v = json_value(&serde_json::json!([{"a": 1}, {"b": 2}])).unwrap();
        assert!(v
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["schema"] == JSON_SCHEMA));
    }

    #[test]
    fn json_error_lists_get_a_hints_list_of_the_same_length() {
        let report = serde_json::json!({
            "errors": 2,
            "mailboxes": [{"name": "x", "errors": ["bad name\nhint: rename it", "boom"]}],
        });
        let v: serde_json::Value = serde_json::from_str(&json_text(&report).unwrap()).unwrap();
        assert_eq!(v["errors"], 2);
        assert!(v.get("hints").is_none());
        let m = &v["mailboxes"][0];
        assert_eq!(m["errors"], serde_json::json!(["bad name", "boom"]));
        assert_eq!(m["hints"], serde_json::json!(["rename it", null]));
    }

    #[test]
    fn split_hint_separates_text_and_hint() {
        assert_eq!(
            split_hint("cannot connect\nhint: check `host`"),
            ("cannot connect".into(), Some("check `host`".into()))
        );
        assert_eq!(split_hint("boom"), ("boom".into(), None));
    }

    #[test]
    fn human_bytes_uses_si_units() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
    }
}
