//! CPU and memory quantities, as Kubernetes writes them (`"500m"`, `"1.5"`, `"256Mi"`, `"1G"`).
//!
//! Only the forms a resource limit needs are accepted: no exponents (`1e9`), no signs, no
//! units beyond tebibytes, and nothing that would have to be rounded (`"0.0005"` CPU,
//! `"1.5"` bytes). Every error is one line that quotes the value.

/// The least memory limit: 6 MiB, what Docker accepts at the least (it refuses smaller
/// limits with "Minimum memory limit allowed is 6MB", meaning 6 MiB).
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;
/// The least CPU limit with the `docker` driver: 10m. Docker gives a container
/// `cpu / 1000` of each 100 ms scheduling period, and Linux refuses a quota under 1 ms.
pub const MIN_DOCKER_CPU_MILLIS: u64 = 10;

/// Memory units and what they multiply by.
const MEMORY_UNITS: &[(&str, u128)] = &[
    ("Ki", 1 << 10),
    ("Mi", 1 << 20),
    ("Gi", 1 << 30),
    ("Ti", 1 << 40),
    ("k", 1_000),
    ("M", 1_000_000),
    ("G", 1_000_000_000),
    ("T", 1_000_000_000_000),
];

enum Decimal {
    /// Not `digits` or `digits.digits`.
    Syntax,
    /// More digits than 128 bits hold.
    TooLong,
}

/// Reads `digits` or `digits.digits` as its digits (an integer) and the number of digits after
/// the point, with trailing zeros of the fraction dropped (`"1.50"` → `(15, 1)`).
fn decimal(s: &str) -> Result<(u128, u32), Decimal> {
    let (int, frac) = match s.split_once('.') {
        Some((int, frac)) if !frac.is_empty() => (int, frac),
        Some(_) => return Err(Decimal::Syntax),
        None => (s, ""),
    };
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || !digits(int) || !digits(frac) {
        return Err(Decimal::Syntax);
    }
    let frac = frac.trim_end_matches('0');
    let mut v: u128 = 0;
    for b in int.bytes().chain(frac.bytes()) {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u128::from(b - b'0')))
            .ok_or(Decimal::TooLong)?;
    }
    let scale = u32::try_from(frac.len()).map_err(|_| Decimal::TooLong)?;
    Ok((v, scale))
}

fn too_large(s: &str, what: &str) -> String {
    format!("{s:?} is too large: {what}")
}

/// Parses a CPU quantity into thousandths of a core ("millicores"): `"500m"` → 500,
/// `"2"` → 2000, `"1.5"` → 1500, `"0.25"` → 250. At least `1m`; finer than `1m` is an error.
pub fn parse_cpu(s: &str) -> Result<u64, String> {
    let syntax = || {
        format!(
            "{s:?} is not a CPU quantity: write cores (\"2\", \"0.5\") or millicores (\"500m\")"
        )
    };
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    let millis = if let Some(n) = s.strip_suffix('m') {
        if n.contains('.') {
            return Err(format!(
                "{s:?}: millicores are whole numbers; 1m (0.001 CPU) is the finest unit"
            ));
        }
        match decimal(n) {
            Ok((v, _)) => v,
            Err(Decimal::Syntax) => return Err(syntax()),
            Err(Decimal::TooLong) => return Err(too_large(s, "it has too many digits")),
        }
    } else {
        match decimal(s) {
            Ok((_, scale)) if scale > 3 => {
                return Err(format!(
                    "{s:?} is finer than 1m (0.001 CPU), the finest unit"
                ))
            }
            Ok((v, scale)) => v
                .checked_mul(10u128.pow(3 - scale))
                .ok_or_else(|| too_large(s, "it has too many digits"))?,
            Err(Decimal::Syntax) => return Err(syntax()),
            Err(Decimal::TooLong) => return Err(too_large(s, "it has too many digits")),
        }
    };
    let millis =
        u64::try_from(millis).map_err(|_| too_large(s, &format!("the most is {}m", u64::MAX)))?;
    if millis == 0 {
        return Err(format!("must be at least 1m (0.001 CPU), got {s:?}"));
    }
    Ok(millis)
}

/// The memory unit closest to `unit`, for a "did you mean" hint: `MiB` → `Mi`, `MB` → `M`,
/// `gi` → `Gi`.
fn unit_hint(unit: &str) -> Option<&'static str> {
    let unit = unit.trim();
    let bare = unit
        .strip_suffix(['B', 'b'])
        .filter(|b| !b.is_empty())
        .unwrap_or(unit);
    MEMORY_UNITS
        .iter()
        .map(|(u, _)| *u)
        .find(|u| *u == bare)
        .or_else(|| {
            MEMORY_UNITS
                .iter()
                .map(|(u, _)| *u)
                .find(|u| u.eq_ignore_ascii_case(bare))
        })
}

/// Parses a memory quantity into bytes: a plain number of bytes (`"1000000"`), or a number
/// with a unit, `Ki`, `Mi`, `Gi`, `Ti` (powers of 1024) or `k`, `M`, `G`, `T` (powers of
/// 1000): `"256Mi"`, `"1.5Gi"`, `"512M"`. At least [`MIN_MEMORY_BYTES`]; the result must be a
/// whole number of bytes that fits in a `u64`.
pub fn parse_memory(s: &str) -> Result<u64, String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let syntax = || {
        format!(
            "{s:?} is not a memory quantity: write bytes (\"1000000\") or a number with a unit (\"256Mi\", \"1Gi\", \"512M\")"
        )
    };
    if number.is_empty() {
        return Err(syntax());
    }
    let factor = if unit.is_empty() {
        Some(1)
    } else {
        MEMORY_UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, f)| *f)
    };
    let Some(factor) = factor else {
        let hint = unit_hint(unit).map_or(String::new(), |u| format!(" (did you mean {u:?}?)"));
        return Err(format!(
            "{s:?} has an unknown unit {unit:?}{hint}; use Ki, Mi, Gi, Ti (powers of 1024), k, M, G, T (powers of 1000), or none for bytes"
        ));
    };
    let (v, scale) = match decimal(number) {
        Ok(d) => d,
        Err(Decimal::Syntax) => return Err(syntax()),
        Err(Decimal::TooLong) => return Err(too_large(s, "it has too many digits")),
    };
    let most = format!("the most is {} bytes", u64::MAX);
    let scaled = v.checked_mul(factor).ok_or_else(|| too_large(s, &most))?;
    let bytes = match 10u128.checked_pow(scale) {
        Some(div) if scaled % div == 0 => scaled / div,
        _ => return Err(format!("{s:?} is not a whole number of bytes")),
    };
    let bytes = u64::try_from(bytes).map_err(|_| too_large(s, &most))?;
    if bytes < MIN_MEMORY_BYTES {
        return Err(format!(
            "must be at least 6Mi ({MIN_MEMORY_BYTES} bytes), the least Docker accepts; got {s:?} ({bytes} bytes)"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quantities() {
        let ok: &[(&str, u64)] = &[
            ("500m", 500),
            ("1m", 1),
            ("2", 2000),
            ("1.5", 1500),
            ("0.25", 250),
            ("0.001", 1),
            ("1.500", 1500),
            ("0.1000000", 100),
            ("007", 7000),
            ("18446744073709551615m", u64::MAX),
        ];
        for (s, want) in ok {
            assert_eq!(parse_cpu(s), Ok(*want), "{s}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "must not be empty"),
            ("0", "must be at least 1m"),
            ("0m", "must be at least 1m"),
            ("0.0", "must be at least 1m"),
            ("0.0005", "finer than 1m"),
            ("1.5m", "millicores are whole numbers"),
            ("abc", "is not a CPU quantity"),
            ("m", "is not a CPU quantity"),
            ("-1", "is not a CPU quantity"),
            ("+1", "is not a CPU quantity"),
            (" 1", "is not a CPU quantity"),
            ("1.", "is not a CPU quantity"),
            (".5", "is not a CPU quantity"),
            ("1e3", "is not a CPU quantity"),
            ("2 cores", "is not a CPU quantity"),
            ("500M", "is not a CPU quantity"),
            ("18446744073709551616m", "is too large"),
            ("18446744073709552", "is too large"),
            ("99999999999999999999999999999999999999999", "is too large"),
            ("9999999999999999999999999999999999999999m", "is too large"),
        ];
        for (s, want) in bad {
            let e = parse_cpu(s).expect_err(s);
            assert!(e.contains(want), "{s}: {e}");
            assert!(!e.contains('\n'), "{s}: {e}");
        }
    }

    #[test]
    fn memory_quantities() {
        const MI: u64 = 1 << 20;
        let ok: &[(&str, u64)] = &[
            ("256Mi", 256 * MI),
            ("1Gi", 1 << 30),
            ("1.5Gi", 3 << 29),
            ("0.5Gi", 1 << 29),
            ("6Mi", MIN_MEMORY_BYTES),
            ("6144Ki", MIN_MEMORY_BYTES),
            ("1Ti", 1 << 40),
            ("512M", 512_000_000),
            ("7000k", 7_000_000),
            ("2G", 2_000_000_000),
            ("1T", 1_000_000_000_000),
            ("1000000000", 1_000_000_000),
            ("6291456", MIN_MEMORY_BYTES),
            ("16777215Ti", ((1 << 24) - 1) << 40),
            ("18446744073709551615", u64::MAX),
        ];
        for (s, want) in ok {
            assert_eq!(parse_memory(s), Ok(*want), "{s}");
        }
        let bad: &[(&str, &str)] = &[
            ("", "must not be empty"),
            ("1000000", "must be at least 6Mi (6291456 bytes)"),
            ("4Mi", "must be at least 6Mi"),
            ("0", "must be at least 6Mi"),
            ("256MB", "unknown unit \"MB\" (did you mean \"M\"?)"),
            ("256MiB", "unknown unit \"MiB\" (did you mean \"Mi\"?)"),
            ("1gi", "(did you mean \"Gi\"?)"),
            ("1K", "(did you mean \"k\"?)"),
            ("128974848000m", "(did you mean \"M\"?)"),
            ("1Pi", "unknown unit \"Pi\";"),
            ("1 Gi", "unknown unit \" Gi\" (did you mean \"Gi\"?)"),
            ("1e9", "unknown unit \"e9\""),
            ("Gi", "is not a memory quantity"),
            ("-1Gi", "is not a memory quantity"),
            ("1..5Gi", "is not a memory quantity"),
            (".5Gi", "is not a memory quantity"),
            ("1.Gi", "is not a memory quantity"),
            ("10000000.5", "is not a whole number of bytes"),
            ("6291.4565k", "is not a whole number of bytes"),
            ("99999999999999Ti", "is too large"),
            ("16777216Ti", "is too large"),
            ("18446744073709551616", "is too large"),
        ];
        for (s, want) in bad {
            let e = parse_memory(s).expect_err(s);
            assert!(e.contains(want), "{s}: {e}");
            assert!(!e.contains('\n'), "{s}: {e}");
        }
        let huge = "9".repeat(60) + "Ti";
        assert!(parse_memory(&huge)
            .expect_err(&huge)
            .contains("is too large"));
        let fine = format!("6291456.{}", "0".repeat(60));
        assert_eq!(parse_memory(&fine), Ok(MIN_MEMORY_BYTES));
        let fine = format!("6291456.{}1", "0".repeat(60));
        assert!(parse_memory(&fine).is_err());
    }
}
