//! Durations and byte sizes as the configuration and the manifest write
//! them (`"500ms"`, `"64KiB"`), as serde helpers for `#[serde(with = …)]`.
//! Depends on nothing else in the crate.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Durations as humantime strings: `"500ms"`, `"10s"`, `"2m"`.
pub mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    pub fn parse(s: &str) -> Result<Duration, String> {
        humantime::parse_duration(s.trim()).map_err(|e| {
            format!("expected a duration such as \"500ms\" or \"10s\", found {s:?} ({e})")
        })
    }

    pub mod option {
        use super::*;
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            super::deserialize(d).map(Some)
        }
    }
}

/// Byte sizes as integers or strings: `65536`, `"64KiB"`, `"64 MiB"`.
pub mod bytes {
    use super::*;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IntOrString {
        Int(u64),
        String(String),
    }

    pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        option(d).map(|v| v.unwrap_or_default())
    }

    pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match IntOrString::deserialize(d)? {
            IntOrString::Int(n) => Ok(Some(n)),
            IntOrString::String(s) => parse(&s).map(Some).map_err(serde::de::Error::custom),
        }
    }

    pub fn parse(s: &str) -> Result<u64, String> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| b.as_u64())
            .map_err(|_| {
                format!("expected a size such as 65536, \"64KiB\" or \"16MiB\", found {s:?}")
            })
    }
}

/// Now, in milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
