//! Formatting shared by the command line and the web pages: times (in UTC,
//! and saying so), short durations, one-line clips, and text made safe for a
//! terminal. It imports nothing of jobd.

use std::fmt::Write as _;

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
    cut(&terminal_safe(&one_line), max)
}

/// Cuts `text` to `max` characters, marking the cut with `…`.
pub fn cut(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `text` safe to print on a terminal: control characters (C0, DEL, C1:
/// an `ESC ]0;` retitles the terminal, a `\r` or `\n` forges a table row)
/// and the bidirectional overrides (which reorder what is shown) are
/// written as escapes; everything else is kept.
pub fn terminal_safe(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        push_escaped(&mut out, c);
    }
    std::borrow::Cow::Owned(out)
}

pub(crate) fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Pushes `c`, escaped if it is a control or bidi character.
pub(crate) fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if needs_escape(c) => {
            let _ = write!(out, "\\u{{{:04x}}}", c as u32);
        }
        c => out.push(c),
    }
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
