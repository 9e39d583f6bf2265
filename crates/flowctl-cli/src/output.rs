//! Printing: aligned tables for people, JSON and YAML (snake_case fields) for programs.

use crate::Format;
use serde_json::Value;

/// Prints `value` (an array for lists, an object otherwise) in the chosen format; `table` is
/// called for table and wide output.
pub fn print(
    format: Format,
    value: &Value,
    table: impl FnOnce(bool) -> Vec<Vec<String>>,
) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Format::Yaml => print!("{}", serde_saphyr::to_string(value)?),
        Format::Table | Format::Wide => print_table(&table(format == Format::Wide)),
        Format::Proto | Format::Descriptor => {
            anyhow::bail!("-o proto and -o descriptor are for `flowctl schemas get` only")
        }
    }
    Ok(())
}

/// Prints rows (the first is the header) with columns padded to equal width.
pub fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}   ", w = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// "3m", "2h", "5d": kubectl-style ages.
pub fn age(since_ms: u64, now_ms: u64) -> String {
    let s = now_ms.saturating_sub(since_ms) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        assert_eq!(age(0, 5_000), "5s");
        assert_eq!(age(0, 600_000), "10m");
        assert_eq!(age(0, 3 * 3600 * 1000), "3h");
        assert_eq!(age(0, 3 * 86400 * 1000), "3d");
    }
}
