//! The daily download budget, per account per UTC day:
//! `state/download-budget.json` says how many bytes pulls fetched on which
//! day, so a pull stopped at the budget and the next one the same day
//! share it, and the next day starts afresh.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::archive::ArchiveError;

pub const BUDGET: &str = "download-budget.json";

/// Bytes fetched on `day` (UTC, `YYYY-MM-DD`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DayUse {
    pub day: String,
    pub bytes: u64,
}

/// Today, UTC.
pub fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

/// Bytes already fetched today by earlier runs.
pub fn used_today(state: &Path) -> Result<u64, ArchiveError> {
    let u: DayUse = crate::archive::read_record(&state.join(BUDGET))?;
    Ok(if u.day == today() { u.bytes } else { 0 })
}

/// Records that `bytes` were fetched today in all.
pub fn save_used(state: &Path, bytes: u64) -> Result<(), ArchiveError> {
    let u = DayUse {
        day: today(),
        bytes,
    };
    crate::archive::write_record(&state.join(BUDGET), &u, false)
}

/// How much of `batch` (sizes in order) fits in `left` bytes: the length
/// of the longest prefix that does.
pub fn fitting(sizes: &[u64], left: u64) -> usize {
    let mut sum = 0u64;
    sizes
        .iter()
        .take_while(|s| {
            sum += **s;
            sum <= left
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_cut_where_the_budget_ends() {
        assert_eq!(fitting(&[10, 20, 30], 35), 2);
        assert_eq!(fitting(&[10, 20, 30], 5), 0);
        assert_eq!(fitting(&[10, 20, 30], 60), 3);
    }

    #[test]
    fn another_day_starts_afresh() {
        let d = tempfile::tempdir().unwrap();
        save_used(d.path(), 500).unwrap();
        assert_eq!(used_today(d.path()).unwrap(), 500);
        let old = DayUse {
            day: "2000-01-01".into(),
            bytes: 900,
        };
        std::fs::write(d.path().join(BUDGET), serde_json::to_vec(&old).unwrap()).unwrap();
        assert_eq!(used_today(d.path()).unwrap(), 0);
    }
}
