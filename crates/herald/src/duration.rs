//! Human durations for flags and the config file: `15s`, `500ms`, `5m`,
//! `1h`, `2d` (anything `humantime` reads), plain seconds (`15`), and
//! fractions (`0.5s`, `1.5`).

use std::time::Duration;

/// The longest duration a setting takes, in seconds (about 317 years): far
/// beyond any useful value, and short enough that adding it to an
/// `Instant` cannot overflow.
const MAX_SECS: f64 = 1e10;

/// Reads a duration as `humantime` does, falling back to a plain or
/// fractional number with an optional unit (`15`, `0.5s`, `1.5m`): a bare
/// number is seconds.
///
/// Errors: a message naming the input, saying whether the number, the unit
/// or the range is wrong.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match humantime::parse_duration(s) {
        Ok(d) => d,
        // humantime reads whole numbers with a unit only.
        Err(_) => scaled_unit(s)?,
    };
    if d.as_secs_f64() > MAX_SECS {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(d)
}

/// `s` as a number (whole or fractional) times one of its unit (seconds
/// when none is given).
fn scaled_unit(s: &str) -> Result<Duration, String> {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 15s, 500ms, 5m, 1h)"))?;
    let one = match unit.trim() {
        "" => Duration::from_secs(1),
        unit => humantime::parse_duration(&format!("1{unit}")).map_err(|_| {
            format!("unknown duration unit {unit:?} in {s:?} (use ms, s, m, h or d)")
        })?,
    };
    let secs = n * one.as_secs_f64();
    if !secs.is_finite() || !(0.0..=MAX_SECS).contains(&secs) {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_duration("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("0.5s").unwrap(), Duration::from_millis(500));
        for bad in ["", "s", "5x", "-1s", "1e400"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn days_fractions_and_spaces() {
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration(" 15 s ").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(
            parse_duration("soon").unwrap_err(),
            r#""soon" is not a duration (try 15s, 500ms, 5m, 1h)"#
        );
        assert_eq!(
            parse_duration("5x").unwrap_err(),
            r#"unknown duration unit "x" in "5x" (use ms, s, m, h or d)"#
        );
        assert_eq!(
            parse_duration("99999999999").unwrap_err(),
            r#""99999999999" is out of range"#
        );
        assert_eq!(
            parse_duration("400000y").unwrap_err(),
            r#""400000y" is out of range"#
        );
    }
}
