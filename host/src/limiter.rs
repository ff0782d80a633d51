//! Rate-limit policies: the five algorithms, their parameters, the bounds on
//! those parameters, and the manifest syntax.
//!
//! A plugin names its policies in its manifest entry:
//!
//! ```toml
//! [plugins.api.limiters.api]
//! algorithm = "gcra"
//! rate = "100/min"
//! burst = 20
//! ```
//!
//! Each policy is a [`Limits`] value; the same type describes a per-key
//! override set at runtime. [`Limits::validate`] is the one place the bounds
//! below are enforced, for the manifest (errors name the key, such as
//! `plugins.api.limiters.api.burst`) and for overrides (errors are the
//! guest's `invalid-argument`). The algorithms themselves are the scripts
//! `lua/limiter_*.lua`; what each admits is documented in the README
//! ("Rate limits").

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Largest count in a rate, and largest burst, capacity or fixed-window
/// limit: far above any real limit, and small enough that every quantity
/// the scripts compute stays exact in a Lua number (a double).
pub const MAX_COUNT: u64 = 1_000_000_000;

/// Largest sliding-window limit and concurrency slot count. Both keep one
/// sorted-set member per admitted unit (per held slot), so this bounds the
/// memory of one limited key (about 100 bytes per member) and the work of one
/// check.
pub const MAX_LOGGED: u64 = 10_000;

/// Shortest period or window. Decisions are reported in milliseconds.
pub const MIN_PERIOD: Duration = Duration::from_millis(1);

/// Longest period or window, and longest time a GCRA burst or a token
/// bucket may take to refill: a year. Longer periods are almost certainly
/// a unit mistake, and limited keys expire only after that long.
pub const MAX_PERIOD: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Fastest rate: one unit per microsecond. The scripts keep time in
/// microseconds from Redis `TIME`; a shorter emission interval would be
/// lost in rounding.
pub const MAX_RATE_PER_SECOND: u64 = 1_000_000;

/// Longest concurrency lease. Slots are released when the invocation that
/// holds them ends (at most 5 minutes of wall time); the lease only matters
/// when a host dies holding them, and a longer lease only delays recovery.
pub const MAX_LEASE: Duration = Duration::from_secs(60 * 60);

/// The five algorithms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Gcra,
    TokenBucket,
    SlidingWindow,
    FixedWindow,
    Concurrency,
}

impl Algorithm {
    pub const ALL: [Algorithm; 5] = [
        Algorithm::Gcra,
        Algorithm::TokenBucket,
        Algorithm::SlidingWindow,
        Algorithm::FixedWindow,
        Algorithm::Concurrency,
    ];

    /// The manifest (and WIT) name: `gcra`, `token-bucket`, `sliding-window`,
    /// `fixed-window`, `concurrency`.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::TokenBucket => "token-bucket",
            Algorithm::SlidingWindow => "sliding-window",
            Algorithm::FixedWindow => "fixed-window",
            Algorithm::Concurrency => "concurrency",
        }
    }

    /// The short code naming the algorithm's state key (`…:gcra`) and
    /// stored in overrides: `gcra`, `tb`, `sw`, `fw`, `cc`.
    pub fn code(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::TokenBucket => "tb",
            Algorithm::SlidingWindow => "sw",
            Algorithm::FixedWindow => "fw",
            Algorithm::Concurrency => "cc",
        }
    }

    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    pub fn from_code(code: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.code() == code)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `count` units per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub count: u64,
    pub period: Duration,
}

impl Rate {
    pub fn new(count: u64, period: Duration) -> Rate {
        Rate { count, period }
    }

    /// Parses `"100/min"`, `"20/s"`, `"5/15min"`, `"1/3s"`: an integer
    /// count, `/`, and a period — a unit (`ms`, `s`, `min`, `h`, `d`, …) or a
    /// duration (`15min`, `1h30m`).
    pub fn parse(text: &str) -> Result<Rate, String> {
        let expected = || {
            format!("expected a rate such as \"100/min\", \"20/s\" or \"5/15min\", found {text:?}")
        };
        let (count, period) = text.split_once('/').ok_or_else(expected)?;
        let count: u64 = count.trim().parse().map_err(|_| expected())?;
        let period = period.trim();
        let period = if period.starts_with(|c: char| c.is_ascii_digit()) {
            humantime::parse_duration(period)
        } else {
            humantime::parse_duration(&format!("1{period}"))
        }
        .map_err(|_| expected())?;
        Ok(Rate { count, period })
    }

    /// The rate in units per second.
    pub fn per_second(&self) -> f64 {
        self.count as f64 / self.period.as_secs_f64()
    }

    fn check(&self) -> Result<(), String> {
        if self.count == 0 {
            return Err(format!(
                "{self} admits nothing; the count must be at least 1"
            ));
        }
        if self.count > MAX_COUNT {
            return Err(format!(
                "the count {} is above the maximum of {MAX_COUNT}",
                self.count
            ));
        }
        check_period(self.period)?;
        if self.per_second() > MAX_RATE_PER_SECOND as f64 {
            return Err(format!(
                "{self} is faster than the maximum of {MAX_RATE_PER_SECOND}/s"
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.count,
            humantime::format_duration(self.period)
        )
    }
}

fn check_period(period: Duration) -> Result<(), String> {
    if period < MIN_PERIOD {
        return Err(format!(
            "the period {} is shorter than the minimum of 1ms",
            humantime::format_duration(period)
        ));
    }
    if period > MAX_PERIOD {
        return Err(format!(
            "the period {} is longer than the maximum of 365 days",
            humantime::format_duration(period)
        ));
    }
    Ok(())
}

/// A policy's parameters (or a per-key override's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limits {
    /// Generic cell rate algorithm (redis-cell's `CL.THROTTLE`): `rate`
    /// sustained, up to `burst` units at once. `CL.THROTTLE key B N P` is
    /// `rate = N/P, burst = B + 1`.
    Gcra { rate: Rate, burst: u64 },
    /// A bucket of `capacity` tokens, refilled continuously (fractionally)
    /// at `refill`.
    TokenBucket { capacity: u64, refill: Rate },
    /// At most `limit` units in any interval of length `window` (a log of
    /// admitted units: exact).
    SlidingWindow { limit: u64, window: Duration },
    /// At most `limit` units per window; windows are aligned to multiples of
    /// `window` since the Unix epoch (Redis time).
    FixedWindow { limit: u64, window: Duration },
    /// At most `slots` units held at once; each acquisition is a lease that
    /// expires after `lease` unless released earlier.
    Concurrency { slots: u64, lease: Duration },
}

/// Why [`Limits::validate`] refused a policy: the manifest field at fault
/// and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsError {
    /// `rate`, `burst`, `capacity`, `slots` or `lease`.
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for LimitsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for LimitsError {}

/// The three numbers every script takes (`ARGV[2..4]`) and every override
/// stores: see the headers of `lua/limiter_*.lua`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptParams {
    /// Rate count, capacity refill count, window limit or slots.
    pub limit: u64,
    /// Rate period, refill period, window or lease, in microseconds.
    pub period_us: u64,
    /// GCRA burst, token-bucket capacity; 0 for the others.
    pub burst: u64,
}

impl Limits {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Limits::Gcra { .. } => Algorithm::Gcra,
            Limits::TokenBucket { .. } => Algorithm::TokenBucket,
            Limits::SlidingWindow { .. } => Algorithm::SlidingWindow,
            Limits::FixedWindow { .. } => Algorithm::FixedWindow,
            Limits::Concurrency { .. } => Algorithm::Concurrency,
        }
    }

    /// What a decision reports as `limit`: the burst, the capacity, the
    /// window's limit or the slots.
    pub fn limit(&self) -> u64 {
        match *self {
            Limits::Gcra { burst, .. } => burst,
            Limits::TokenBucket { capacity, .. } => capacity,
            Limits::SlidingWindow { limit, .. } | Limits::FixedWindow { limit, .. } => limit,
            Limits::Concurrency { slots, .. } => slots,
        }
    }

    /// Checks every parameter against the bounds above.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let err = |field, message: String| Err(LimitsError { field, message });
        let at_least_one = |field: &'static str, n: u64, max: u64, what: &str| {
            if n == 0 {
                return err(field, format!("must be at least 1 ({what})"));
            }
            if n > max {
                return err(field, format!("{n} is above the maximum of {max}"));
            }
            Ok(())
        };
        match *self {
            Limits::Gcra { rate, burst } => {
                rate.check().or_else(|m| err("rate", m))?;
                at_least_one("burst", burst, MAX_COUNT, "requests allowed at once")?;
                refill_time("burst", burst, rate)
            }
            Limits::TokenBucket { capacity, refill } => {
                refill.check().or_else(|m| err("rate", m))?;
                at_least_one("capacity", capacity, MAX_COUNT, "tokens the bucket holds")?;
                refill_time("capacity", capacity, refill)
            }
            Limits::SlidingWindow { limit, window } => {
                let rate = Rate::new(limit, window);
                rate.check().or_else(|m| err("rate", m))?;
                if limit > MAX_LOGGED {
                    return err(
                        "rate",
                        format!(
                            "a sliding window keeps one entry per admitted unit, so its limit is at most {MAX_LOGGED} (found {limit}); use gcra or token-bucket for larger limits"
                        ),
                    );
                }
                Ok(())
            }
            Limits::FixedWindow { limit, window } => {
                Rate::new(limit, window).check().or_else(|m| err("rate", m))
            }
            Limits::Concurrency { slots, lease } => {
                at_least_one("slots", slots, MAX_LOGGED, "slots that may be held at once")?;
                if lease < MIN_PERIOD || lease > MAX_LEASE {
                    return err(
                        "lease",
                        format!("{} is outside 1ms..=1h", humantime::format_duration(lease)),
                    );
                }
                Ok(())
            }
        }
    }

    /// The numbers the scripts take.
    pub fn script_params(&self) -> ScriptParams {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        let (limit, period, burst) = match *self {
            Limits::Gcra { rate, burst } => (rate.count, rate.period, burst),
            Limits::TokenBucket { capacity, refill } => (refill.count, refill.period, capacity),
            Limits::SlidingWindow { limit, window } | Limits::FixedWindow { limit, window } => {
                (limit, window, 0)
            }
            Limits::Concurrency { slots, lease } => (slots, lease, 0),
        };
        ScriptParams {
            limit,
            period_us: us(period),
            burst,
        }
    }

    /// The inverse of [`Limits::script_params`].
    pub fn from_script_params(algorithm: Algorithm, p: ScriptParams) -> Limits {
        let period = Duration::from_micros(p.period_us);
        match algorithm {
            Algorithm::Gcra => Limits::Gcra {
                rate: Rate::new(p.limit, period),
                burst: p.burst,
            },
            Algorithm::TokenBucket => Limits::TokenBucket {
                capacity: p.burst,
                refill: Rate::new(p.limit, period),
            },
            Algorithm::SlidingWindow => Limits::SlidingWindow {
                limit: p.limit,
                window: period,
            },
            Algorithm::FixedWindow => Limits::FixedWindow {
                limit: p.limit,
                window: period,
            },
            Algorithm::Concurrency => Limits::Concurrency {
                slots: p.limit,
                lease: period,
            },
        }
    }
}

/// A burst (or capacity) must refill within [`MAX_PERIOD`].
fn refill_time(field: &'static str, units: u64, rate: Rate) -> Result<(), LimitsError> {
    let secs = units as f64 / rate.per_second();
    if secs > MAX_PERIOD.as_secs_f64() {
        return Err(LimitsError {
            field,
            message: format!(
                "{units} at {rate} takes longer than the maximum of 365 days to refill"
            ),
        });
    }
    Ok(())
}

impl fmt::Display for Limits {
    /// The manifest form, e.g. `gcra rate=100/1m burst=20`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = |d: Duration| humantime::format_duration(d).to_string();
        match *self {
            Limits::Gcra { rate, burst } => write!(f, "gcra rate={rate} burst={burst}"),
            Limits::TokenBucket { capacity, refill } => {
                write!(f, "token-bucket rate={refill} capacity={capacity}")
            }
            Limits::SlidingWindow { limit, window } => {
                write!(f, "sliding-window rate={limit}/{}", d(window))
            }
            Limits::FixedWindow { limit, window } => {
                write!(f, "fixed-window rate={limit}/{}", d(window))
            }
            Limits::Concurrency { slots, lease } => {
                write!(f, "concurrency slots={slots} lease={}", d(lease))
            }
        }
    }
}

/// Longest policy name.
pub const MAX_POLICY_NAME: usize = 64;

/// Checks a policy name: 1–64 of `a-z`, `0-9`, `-`, `_`. Names appear in
/// Redis keys between `/` separators (see
/// [`Namespace::limiter`](crate::namespace::Namespace::limiter)), so `/`,
/// `{` and `}` must never be part of one.
pub fn check_policy_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_POLICY_NAME {
        return Err(format!(
            "invalid policy name {name:?}: use 1 to {MAX_POLICY_NAME} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "invalid policy name {name:?}: use only lowercase letters, digits, `-` and `_`"
        ));
    }
    Ok(())
}

/// A plugin's named policies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policies(BTreeMap<String, Limits>);

impl Policies {
    /// Adds (or replaces) the policy `name`; the name and limits must be
    /// valid (they are checked).
    pub fn insert(&mut self, name: &str, limits: Limits) -> Result<(), String> {
        check_policy_name(name)?;
        limits.validate().map_err(|e| e.to_string())?;
        self.0.insert(name.to_string(), limits);
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Limits> {
        self.0.get(name)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Limits)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The names, comma-separated, for messages.
    pub fn names(&self) -> String {
        if self.0.is_empty() {
            return "none".into();
        }
        self.0
            .keys()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// ---- the manifest ----------------------------------------------------------

/// One `[plugins.NAME.limiters.POLICY]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawPolicy {
    algorithm: RawAlgorithm,
    #[serde(default, deserialize_with = "rate_option")]
    rate: Option<Rate>,
    #[serde(default)]
    burst: Option<u64>,
    #[serde(default)]
    capacity: Option<u64>,
    #[serde(default)]
    slots: Option<u64>,
    #[serde(default, with = "crate::units::duration::option")]
    lease: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawAlgorithm {
    Gcra,
    TokenBucket,
    SlidingWindow,
    FixedWindow,
    Concurrency,
}

fn rate_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Rate>, D::Error> {
    let s = String::deserialize(d)?;
    Rate::parse(&s).map(Some).map_err(serde::de::Error::custom)
}

impl RawPolicy {
    /// Applies the algorithm's required and forbidden fields and validates;
    /// errors name the field.
    fn resolve(self) -> Result<Limits, LimitsError> {
        let algorithm = match self.algorithm {
            RawAlgorithm::Gcra => Algorithm::Gcra,
            RawAlgorithm::TokenBucket => Algorithm::TokenBucket,
            RawAlgorithm::SlidingWindow => Algorithm::SlidingWindow,
            RawAlgorithm::FixedWindow => Algorithm::FixedWindow,
            RawAlgorithm::Concurrency => Algorithm::Concurrency,
        };
        let (needs, takes): (&[&str], &str) = match algorithm {
            Algorithm::Gcra => (&["rate", "burst"], "`rate` and `burst`"),
            Algorithm::TokenBucket => (
                &["rate", "capacity"],
                "`rate` (the refill rate) and `capacity`",
            ),
            Algorithm::SlidingWindow | Algorithm::FixedWindow => (
                &["rate"],
                "only `rate` (the limit per window, e.g. \"100/min\")",
            ),
            Algorithm::Concurrency => (&["slots", "lease"], "`slots` and `lease`"),
        };
        let given = [
            ("rate", self.rate.is_some()),
            ("burst", self.burst.is_some()),
            ("capacity", self.capacity.is_some()),
            ("slots", self.slots.is_some()),
            ("lease", self.lease.is_some()),
        ];
        for (field, present) in given {
            if present && !needs.contains(&field) {
                return Err(LimitsError {
                    field,
                    message: format!("a {algorithm} policy takes {takes}, not `{field}`"),
                });
            }
            if !present && needs.contains(&field) {
                return Err(LimitsError {
                    field,
                    message: format!("a {algorithm} policy needs `{field}` ({})", about(field)),
                });
            }
        }
        let rate = self.rate.unwrap_or(Rate::new(0, Duration::ZERO));
        let limits = match algorithm {
            Algorithm::Gcra => Limits::Gcra {
                rate,
                burst: self.burst.unwrap_or(0),
            },
            Algorithm::TokenBucket => Limits::TokenBucket {
                capacity: self.capacity.unwrap_or(0),
                refill: rate,
            },
            Algorithm::SlidingWindow => Limits::SlidingWindow {
                limit: rate.count,
                window: rate.period,
            },
            Algorithm::FixedWindow => Limits::FixedWindow {
                limit: rate.count,
                window: rate.period,
            },
            Algorithm::Concurrency => Limits::Concurrency {
                slots: self.slots.unwrap_or(0),
                lease: self.lease.unwrap_or(Duration::ZERO),
            },
        };
        limits.validate()?;
        Ok(limits)
    }
}

fn about(field: &str) -> &'static str {
    match field {
        "rate" => "e.g. rate = \"100/min\"",
        "burst" => "requests allowed at once, e.g. burst = 20",
        "capacity" => "tokens the bucket holds, e.g. capacity = 20",
        "slots" => "how many may hold a slot at once, e.g. slots = 4",
        _ => "how long a slot is held at most if never released, e.g. lease = \"30s\"",
    }
}

/// Resolves a plugin's `limiters` table. `plugin_key` is `plugins.NAME`;
/// errors are `(key, message)` with the full key, e.g.
/// `plugins.api.limiters.login.rate`.
pub fn resolve_manifest(
    plugin_key: &str,
    raw: BTreeMap<String, RawPolicy>,
) -> Result<Policies, (String, String)> {
    let mut policies = Policies::default();
    for (name, p) in raw {
        let key = format!("{plugin_key}.limiters.{name}");
        check_policy_name(&name).map_err(|m| (key.clone(), m))?;
        let limits = p
            .resolve()
            .map_err(|e| (format!("{key}.{}", e.field), e.message))?;
        policies.0.insert(name, limits);
    }
    Ok(policies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(text: &str) -> Result<Policies, (String, String)> {
        let raw: BTreeMap<String, RawPolicy> =
            toml::from_str(text).map_err(|e| ("toml".to_string(), e.message().to_string()))?;
        resolve_manifest("plugins.api", raw)
    }

    /// Rates parse with a unit or a duration after the slash.
    #[test]
    fn rates_parse() {
        let r = |s| Rate::parse(s).unwrap();
        assert_eq!(r("100/min"), Rate::new(100, Duration::from_secs(60)));
        assert_eq!(r("20/s"), Rate::new(20, Duration::from_secs(1)));
        assert_eq!(r("5/15min"), Rate::new(5, Duration::from_secs(900)));
        assert_eq!(r("1/3s"), Rate::new(1, Duration::from_secs(3)));
        assert_eq!(r(" 7 / 1h "), Rate::new(7, Duration::from_secs(3600)));
        assert_eq!(r("10/ms"), Rate::new(10, Duration::from_millis(1)));
        assert_eq!(r("3/day"), Rate::new(3, Duration::from_secs(86400)));
        for bad in ["100", "/s", "x/s", "-1/s", "1.5/s", "10/fortnight", "10/"] {
            assert!(Rate::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    /// Every algorithm's manifest form resolves; script parameters round-trip.
    #[test]
    fn manifest_policies_resolve() {
        let p = manifest(
            r#"
api = { algorithm = "gcra", rate = "100/min", burst = 20 }
upload = { algorithm = "token-bucket", rate = "5/s", capacity = 20 }
search = { algorithm = "sliding-window", rate = "100/min" }
login = { algorithm = "fixed-window", rate = "5/15min" }
export = { algorithm = "concurrency", slots = 2, lease = "30s" }
"#,
        )
        .unwrap();
        let min = Duration::from_secs(60);
        assert_eq!(
            p.get("api"),
            Some(&Limits::Gcra {
                rate: Rate::new(100, min),
                burst: 20
            })
        );
        assert_eq!(
            p.get("login"),
            Some(&Limits::FixedWindow {
                limit: 5,
                window: Duration::from_secs(900)
            })
        );
        assert_eq!(
            p.get("export"),
            Some(&Limits::Concurrency {
                slots: 2,
                lease: Duration::from_secs(30)
            })
        );
        for (_, l) in p.iter() {
            assert_eq!(
                Limits::from_script_params(l.algorithm(), l.script_params()),
                *l
            );
        }
        assert_eq!(p.names(), "`api`, `export`, `login`, `search`, `upload`");
    }

    /// Manifest mistakes name the policy's field.
    #[test]
    fn manifest_errors_name_the_field() {
        let e = |text: &str| manifest(text).unwrap_err();
        let (k, m) = e(r#"login = { algorithm = "fixed-window", rate = "0/min" }"#);
        assert_eq!(k, "plugins.api.limiters.login.rate");
        assert!(m.contains("at least 1"), "{m}");
        let (k, m) = e(r#"api = { algorithm = "gcra", rate = "10/s", burst = 0 }"#);
        assert_eq!(k, "plugins.api.limiters.api.burst");
        assert!(m.contains("at least 1"), "{m}");
        let (k, m) = e(r#"api = { algorithm = "gcra", rate = "10/s" }"#);
        assert_eq!(k, "plugins.api.limiters.api.burst");
        assert!(m.contains("needs `burst`"), "{m}");
        let (k, m) = e(r#"w = { algorithm = "fixed-window", rate = "10/s", burst = 3 }"#);
        assert_eq!(k, "plugins.api.limiters.w.burst");
        assert!(m.contains("takes only `rate`"), "{m}");
        let (k, m) = e(r#"w = { algorithm = "sliding-window", rate = "10/500y" }"#);
        assert_eq!(k, "plugins.api.limiters.w.rate");
        assert!(m.contains("365 days"), "{m}");
        let (k, _) = e(r#"w = { algorithm = "sliding-window", rate = "100000/h" }"#);
        assert_eq!(k, "plugins.api.limiters.w.rate");
        let (k, m) = e(r#"c = { algorithm = "concurrency", slots = 2, lease = "2h" }"#);
        assert_eq!(k, "plugins.api.limiters.c.lease");
        assert!(m.contains("1h"), "{m}");
        let (k, m) = e(r#"Bad = { algorithm = "concurrency", slots = 2, lease = "2s" }"#);
        assert_eq!(k, "plugins.api.limiters.Bad");
        assert!(m.contains("lowercase"), "{m}");
        let (k, m) = e(r#"t = { algorithm = "token-bucket", rate = "1/365d", capacity = 2 }"#);
        assert_eq!(k, "plugins.api.limiters.t.capacity");
        assert!(m.contains("refill"), "{m}");
        let (k, m) = e(r#"g = { algorithm = "gcra", rate = "2000000/s", burst = 1 }"#);
        assert_eq!(k, "plugins.api.limiters.g.rate");
        assert!(m.contains("faster"), "{m}");
    }

    /// Overrides are validated by the same rules.
    #[test]
    fn limits_validate() {
        let ok = Limits::TokenBucket {
            capacity: 3,
            refill: Rate::new(10, Duration::from_secs(3)),
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = Limits::Concurrency {
            slots: 0,
            lease: Duration::from_secs(1),
        };
        assert_eq!(bad.validate().unwrap_err().field, "slots");
        let bad = Limits::Gcra {
            rate: Rate::new(1, Duration::ZERO),
            burst: 1,
        };
        assert_eq!(bad.validate().unwrap_err().field, "rate");
        let bad = Limits::SlidingWindow {
            limit: MAX_LOGGED + 1,
            window: Duration::from_secs(1),
        };
        assert_eq!(bad.validate().unwrap_err().field, "rate");
    }
}
