//! Small helpers for human-readable output: aligned tables, times and
//! durations. JSON output goes through serde instead.

use std::io::Write;

use super::stdout_error;
use crate::error::Result;
pub use crate::logging::terminal_safe;

/// Writes rows as left-aligned columns separated by two spaces; the first
/// row is the header. Cells come from the database (queue names, errors),
/// so control characters are escaped: a value cannot forge a row or drive
/// the terminal.
pub fn table(out: &mut dyn Write, rows: &[Vec<String>]) -> Result<()> {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|c| terminal_safe(c).into_owned()).collect())
        .collect();
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        writeln!(out, "{}", line.trim_end()).map_err(stdout_error)?;
    }
    Ok(())
}

/// An epoch-ms time as `2026-11-25 14:00:00.123 UTC`: times are stored
/// and shown in UTC, and say so (`list`, `show`, `tail`, the dashboard).
pub fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// An optional time, `-` when absent.
pub fn opt_time(ms: Option<i64>) -> String {
    ms.map(time).unwrap_or_else(|| "-".to_string())
}

/// Milliseconds as a short human duration: `35ms`, `1.5s`, `2m 3s`, `4h 5m`.
pub fn millis(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    let text = if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1_000.0)
    } else if ms < 3_600_000 {
        format!("{}m {}s", ms / 60_000, ms % 60_000 / 1_000)
    } else if ms < 86_400_000 {
        format!("{}h {}m", ms / 3_600_000, ms % 3_600_000 / 60_000)
    } else {
        format!("{}d {}h", ms / 86_400_000, ms % 86_400_000 / 3_600_000)
    };
    format!("{sign}{text}")
}

/// Cuts `text` to `max` characters on one line, marking the cut with `…`.
pub fn clip(text: &str, max: usize) -> String {
    let one_line = text.replace(['\n', '\r'], " ");
    let one_line = terminal_safe(&one_line);
    if one_line.chars().count() <= max {
        return one_line.into_owned();
    }
    let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_say_they_are_utc() {
        assert_eq!(time(1_764_079_200_123), "2025-11-25 14:00:00.123 UTC");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(millis(35), "35ms");
        assert_eq!(millis(1_500), "1.5s");
        assert_eq!(millis(123_000), "2m 3s");
        assert_eq!(millis(3_900_000), "1h 5m");
        assert_eq!(millis(-2_000), "-2.0s");
    }

    #[test]
    fn clip_keeps_one_line() {
        assert_eq!(clip("a\nb", 10), "a b");
        assert_eq!(clip("abcdef", 4), "abc…");
    }
}
