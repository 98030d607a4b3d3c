//! Durations on the command line: `90`, `90s`, `1.5m`, `2h`, `500ms`.

use std::time::Duration;

/// Parses a non-negative duration: a number with an optional unit `ms`, `s` (default),
/// `m` or `h`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let scale = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad(text)),
    };
    let value: f64 = number.parse().map_err(|_| bad(text))?;
    Duration::try_from_secs_f64(value * scale).map_err(|_| bad(text))
}

fn bad(text: &str) -> String {
    format!("invalid duration {text:?} (expected e.g. 30, 30s, 500ms, 5m, 1h)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_with_and_without_units() {
        assert_eq!(parse("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        for bad in ["", "s", "-1", "1x", "1 s", "1e3", "1..2", "ten"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
