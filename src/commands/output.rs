//! Aligned tables for the command line (times, durations and escaping are
//! in [`crate::fmt`]). JSON output goes through serde instead.

use std::io::Write;

use crate::error::{Error, Result};
pub use crate::fmt::{clip, millis, opt_time, terminal_safe, time};

/// Writes rows as left-aligned columns separated by two spaces; the first
/// row is the header. Cells come from the database (queue names, errors),
/// so control characters are escaped: a value cannot forge a row or drive
/// the terminal.
/// A cell longer than [`MAX_CELL`] characters is cut (`…`): SQL may
/// write a queue name or a kind of a megabyte, and every row would be
/// padded to it; `--json` prints it whole.
pub fn table(out: &mut dyn Write, rows: &[Vec<String>]) -> Result<()> {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|c| crate::fmt::cut(&terminal_safe(c), MAX_CELL))
                .collect()
        })
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
                line.push_str(cell);
                let pad = widths[i] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{}", line.trim_end()).map_err(stdout_error)?;
    }
    Ok(())
}

/// The widest cell a table prints whole.
const MAX_CELL: usize = 200;

/// Maps a failed write to the output.
pub(crate) fn stdout_error(source: std::io::Error) -> Error {
    Error::Io {
        what: "cannot write the output".to_string(),
        source,
    }
}
