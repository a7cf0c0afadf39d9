//! Parsers for the value syntaxes the configuration file uses: durations (`250ms`, `30s`, `5m`)
//! and rates (`60/min`). Kept apart from the key layout so each rule is tested once.

use std::num::NonZeroU32;
use std::time::Duration;

/// A sustained rate: `count` events per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// How many events the period allows.
    pub count: NonZeroU32,
    /// The period the count is spread over.
    pub period: Duration,
}

impl Rate {
    /// The time one event "costs" under GCRA: `period / count`.
    pub fn emission_interval(&self) -> Duration {
        self.period / self.count.get()
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.period.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        write!(f, "{}/{}", self.count, unit)
    }
}

/// Parses `250ms`, `30s`, `5m`, `1h` (and combinations such as `1m 30s`).
/// A zero duration is refused: every duration in the file is a timeout or an interval.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let value = humantime::parse_duration(text.trim())
        .map_err(|e| format!("`{text}` is not a duration like 250ms, 30s, 5m ({e})"))?;
    if value.is_zero() {
        return Err(format!("`{text}` must be greater than zero"));
    }
    Ok(value)
}

/// Parses `N/s`, `N/min` or `N/h` with N a positive whole number.
pub fn parse_rate(text: &str) -> Result<Rate, String> {
    let invalid = || format!("`{text}` is not a rate like 10/s, 60/min or 1000/h");
    let (count, unit) = text.trim().split_once('/').ok_or_else(invalid)?;
    let count: u32 = count.trim().parse().map_err(|_| invalid())?;
    let count = NonZeroU32::new(count).ok_or_else(|| format!("`{text}`: the count must be at least 1"))?;
    let period = match unit.trim() {
        "s" | "sec" => Duration::from_secs(1),
        "min" | "m" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        _ => return Err(invalid()),
    };
    Ok(Rate { count, period })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_the_documented_forms_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn bad_durations_are_refused_with_the_text() {
        for bad in ["", "30", "soon", "0s", "-5s"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
    }

    #[test]
    fn rates_parse_to_count_and_period() {
        let rate = parse_rate("60/min").unwrap();
        assert_eq!(rate.count.get(), 60);
        assert_eq!(rate.period, Duration::from_secs(60));
        assert_eq!(rate.emission_interval(), Duration::from_secs(1));
        assert_eq!(parse_rate("10/s").unwrap().emission_interval(), Duration::from_millis(100));
        assert_eq!(parse_rate("3600/h").unwrap().to_string(), "3600/h");
    }

    #[test]
    fn bad_rates_are_refused() {
        for bad in ["60", "0/s", "x/min", "10/day", "-1/s", "10/"] {
            assert!(parse_rate(bad).is_err(), "{bad} parsed");
        }
    }
}
