//! The one duration grammar of the config file, written out so the README can state it
//! exactly and every other spelling is refused with the accepted forms:
//!
//! - a whole number of seconds: `30` (a YAML number, or the same digits as text);
//! - one or more terms `NUMBER UNIT` with no space between or inside them: `500ms`,
//!   `1.5s`, `2m`, `1h30m`, `365d`. NUMBER is digits, optionally `.` and more digits;
//!   UNIT is `ms`, `s`, `m`, `h` or `d` (lower case).
//!
//! It is deliberately smaller than humantime's, which the file used to accept: `2 seconds`,
//! `2sec` or `1y` worked without being documented, `1M` is a month there but reads as a
//! minute to many, and a grammar nobody wrote down cannot be kept stable.

use std::time::Duration;

/// What the error messages offer instead.
pub const FORMS: &str =
    "write a number and a unit (ms, s, m, h or d) with no space, such as 500ms, 1.5s, 2m, 1h30m or 365d, or a whole number of seconds";

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses `text` by the grammar above. The error says what is wrong, without the value
/// (the caller quotes it).
pub fn parse(text: &str) -> Result<Duration, String> {
    if text.is_empty() {
        return Err(format!("empty; {FORMS}"));
    }
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    if digits(text) == text.len() {
        return text
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| "too long".to_owned());
    }
    let mut nanos: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let (whole, after) = rest.split_at(digits(rest));
        let (fraction, after) = match after.strip_prefix('.') {
            Some(f) if digits(f) > 0 => f.split_at(digits(f)),
            Some(_) => return Err(FORMS.to_owned()),
            None => ("", after),
        };
        if whole.is_empty() {
            return Err(FORMS.to_owned());
        }
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        let scale = match unit {
            "ms" => NANOS_PER_SEC / 1000,
            "s" => NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3600 * NANOS_PER_SEC,
            "d" => 86_400 * NANOS_PER_SEC,
            "" if after.is_empty() && rest.len() == text.len() => {
                return Err(format!(
                    "a number without a unit must be whole seconds; {FORMS}"
                ))
            }
            "" => return Err(FORMS.to_owned()),
            other => return Err(format!("unknown unit {other:?}; {FORMS}")),
        };
        nanos = term(whole, fraction, scale)
            .and_then(|t| nanos.checked_add(t))
            .ok_or_else(|| "too long".to_owned())?;
        rest = after;
    }
    let secs = u64::try_from(nanos / NANOS_PER_SEC).map_err(|_| "too long".to_owned())?;
    // Below one second: always fits.
    Ok(Duration::new(secs, (nanos % NANOS_PER_SEC) as u32))
}

/// `whole.fraction` × `scale` nanoseconds, the fraction cut after 18 digits (far below a
/// nanosecond for every unit); `None` on overflow.
fn term(whole: &str, fraction: &str, scale: u128) -> Option<u128> {
    let whole: u128 = whole.parse().ok()?;
    let fraction = &fraction[..fraction.len().min(18)];
    let part = match fraction {
        "" => 0,
        f => scale.checked_mul(f.parse().ok()?)? / 10u128.pow(f.len() as u32),
    };
    whole.checked_mul(scale)?.checked_add(part)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_form_is_accepted() {
        let ms = Duration::from_millis;
        for (text, want) in [
            ("30", ms(30_000)),
            ("0", ms(0)),
            ("500ms", ms(500)),
            ("2s", ms(2000)),
            ("1.5s", ms(1500)),
            ("0.25m", ms(15_000)),
            ("2m", ms(120_000)),
            ("1h30m", ms(5_400_000)),
            ("1m30s500ms", ms(90_500)),
            ("365d", ms(365 * 86_400_000)),
            ("1.0001ms", Duration::from_nanos(1_000_100)),
        ] {
            assert_eq!(parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn other_spellings_are_refused_with_the_accepted_forms() {
        for text in [
            "2 seconds",
            "2sec",
            "2 s",
            " 2s",
            "2s ",
            "1y",
            "1M",
            "2S",
            "1.5",
            "1.s",
            ".5s",
            "-1s",
            "+1s",
            "s",
            "1h 30m",
            "1_000ms",
            "",
        ] {
            let why = parse(text).expect_err(text);
            assert!(
                why.contains("500ms, 1.5s, 2m, 1h30m or 365d"),
                "{text}: {why}"
            );
        }
        assert!(parse("2sec")
            .unwrap_err()
            .starts_with("unknown unit \"sec\""));
        assert!(parse("1.5")
            .unwrap_err()
            .starts_with("a number without a unit must be whole seconds"));
    }

    #[test]
    fn huge_values_are_refused_not_wrapped() {
        for text in [
            "99999999999999999999999",
            "99999999999999999999999s",
            "99999999999999999999999999999999999999999d",
            "18446744073709551616s",
            "9999999999999999999999d",
        ] {
            assert_eq!(parse(text), Err("too long".to_owned()), "{text}");
        }
    }
}
