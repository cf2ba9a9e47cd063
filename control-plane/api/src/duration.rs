//! Go `time.Duration` strings (`metav1.Duration` in the CRDs: `30s`, `1m`, `1h30m`, `-1s`).

use std::time::Duration;

/// A parse failure with the offending input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}")]
pub struct DurationError(pub String);

/// A signed duration as Go writes it. `negative` keeps `-1s` meaningful (`ttlAfterCompleted < 0`
/// means never delete).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GoDuration {
    pub negative: bool,
    pub magnitude: Duration,
}

impl GoDuration {
    pub fn is_negative(&self) -> bool {
        self.negative && !self.magnitude.is_zero()
    }
}

/// Parses Go's duration syntax: an optional sign and a sequence of decimal numbers with units
/// `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`. `"0"` alone is allowed.
pub fn parse_go_duration(input: &str) -> Result<GoDuration, DurationError> {
    let err = || DurationError(input.to_string());
    let mut s = input;
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        negative = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(GoDuration {
            negative,
            magnitude: Duration::ZERO,
        });
    }
    if s.is_empty() {
        return Err(err());
    }
    let mut total_nanos: u128 = 0;
    while !s.is_empty() {
        let num_end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        if num_end == 0 {
            return Err(err());
        }
        let num = &s[..num_end];
        s = &s[num_end..];
        let unit_end = s
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(s.len());
        let unit = &s[..unit_end];
        s = &s[unit_end..];
        let per_unit: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(err()),
        };
        let (int_part, frac_part) = match num.split_once('.') {
            Some((i, f)) => (i, f),
            None => (num, ""),
        };
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(err());
        }
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| err())?
        };
        let mut nanos = int.checked_mul(per_unit).ok_or_else(err)?;
        let mut scale = per_unit;
        for d in frac_part.chars() {
            scale /= 10;
            let digit = d.to_digit(10).ok_or_else(err)? as u128;
            nanos += digit * scale;
        }
        total_nanos = total_nanos.checked_add(nanos).ok_or_else(err)?;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| err())?;
    Ok(GoDuration {
        negative,
        magnitude: Duration::new(secs, (total_nanos % 1_000_000_000) as u32),
    })
}

/// Formats like Go's `Duration.String()` for whole seconds and above (`1h0m0s`, `30s`).
pub fn format_go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_forms() {
        let ok = |s: &str| parse_go_duration(s).unwrap();
        assert_eq!(ok("30s").magnitude, Duration::from_secs(30));
        assert_eq!(ok("1m").magnitude, Duration::from_secs(60));
        assert_eq!(ok("60m").magnitude, Duration::from_secs(3600));
        assert_eq!(ok("1h30m").magnitude, Duration::from_secs(5400));
        assert_eq!(ok("1.5s").magnitude, Duration::from_millis(1500));
        assert_eq!(ok("250ms").magnitude, Duration::from_millis(250));
        assert_eq!(ok("0").magnitude, Duration::ZERO);
        assert!(ok("-1s").is_negative());
        assert!(!ok("0s").is_negative());
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "1", "s", "1d", "abc", "1.s.", "--1s", "1m-", "."] {
            assert!(parse_go_duration(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format_go_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_go_duration(Duration::from_secs(5)), "5s");
    }
}
