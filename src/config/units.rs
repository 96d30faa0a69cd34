//! How durations, sizes and lists are spelled in the configuration, for serde.
//!
//! Durations are parsed by `humantime` (`500ms`, `30s`, `10m`, `1h`, `7d`, `1h 30m`), sizes by
//! `bytesize` (`512KiB`, `256MiB`, `10GiB`, `4096`; `KB`/`MB`/`GB` are powers of 1000). A bare
//! number is seconds or bytes, so `CACHE_TTL_CAP=604800` keeps working. Both are written back
//! in the largest unit that divides them exactly (`7d`, `256MiB`), which parses again.
//! Lists accept a TOML array or, for environment variables, one comma-separated string.

use std::fmt;
use std::time::Duration;

use bytesize::ByteSize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serializer};

const DURATION_HINT: &str = "a duration like 500ms, 30s, 10m, 1h or 7d";
const SIZE_HINT: &str = "a size like 512KiB, 256MiB or 10GiB";

/// Parses a duration as the configuration spells it: humantime units, or bare seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().map(Duration::from_secs).map_err(|_| format!("`{s}` is too large"));
    }
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not {DURATION_HINT} ({e})"))
}

/// Parses a size as the configuration spells it (`bytesize` units, or bare bytes).
pub fn parse_size(s: &str) -> Result<ByteSize, String> {
    s.trim().parse::<ByteSize>().map_err(|_| format!("`{s}` is not {SIZE_HINT}"))
}

/// `7d`, `1h`, `90s`, `250ms`: the largest unit that divides `d` exactly (humantime otherwise).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return humantime::format_duration(d).to_string();
    }
    if ms == 0 {
        return "0s".into();
    }
    for (unit, len) in [("d", 86_400_000u128), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms.is_multiple_of(len) {
            return format!("{}{unit}", ms / len);
        }
    }
    format!("{ms}ms")
}

/// `256MiB`, `10GiB`: the largest binary unit that divides `b` exactly, else bare bytes.
pub fn format_size(b: ByteSize) -> String {
    let n = b.as_u64();
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n != 0 && n.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", n >> shift);
        }
    }
    n.to_string()
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(DURATION_HINT)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v).map(Duration::from_secs).map_err(|_| E::custom(format!("`{v}` is negative")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }
}

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SIZE_HINT)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
        Ok(ByteSize(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
        u64::try_from(v).map(ByteSize).map_err(|_| E::custom(format!("`{v}` is negative")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
        parse_size(v).map_err(E::custom)
    }
}

/// `#[serde(with = "units::decimal")]`: an `f64` written as a number or a string. The
/// environment's strings of up to 7 characters reach serde as `f32` (figment reads them so):
/// `0.83` would become 0.8299999833106995. Such an `f32` is read back through its shortest
/// decimal form, which is the one written, so `0.83` stays 0.83.
pub mod decimal {
    use super::*;

    struct DecimalVisitor;

    impl de::Visitor<'_> for DecimalVisitor {
        type Value = f64;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a number such as 0.83")
        }

        fn visit_f32<E: de::Error>(self, v: f32) -> Result<f64, E> {
            v.to_string().parse().map_err(E::custom)
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<f64, E> {
            Ok(v)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<f64, E> {
            Ok(v as f64)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<f64, E> {
            Ok(v as f64)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<f64, E> {
            v.trim().parse().map_err(|_| E::custom(format!("`{v}` is not a number")))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        d.deserialize_any(DecimalVisitor)
    }

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(*v)
    }
}

/// `#[serde(with = "units::opt_decimal")]`: [`decimal`] for an optional value.
pub mod opt_decimal {
    use super::*;

    struct OptVisitor;

    impl<'de> Visitor<'de> for OptVisitor {
        type Value = Option<f64>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number such as 0.83")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            decimal::deserialize(d).map(Some)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        d.deserialize_option(OptVisitor)
    }

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(v),
            None => s.serialize_none(),
        }
    }
}

/// `#[serde(with = "units::duration")]`
pub mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*d))
    }
}

/// `#[serde(with = "units::opt_duration")]`
pub mod opt_duration {
    use super::*;

    struct OptVisitor;

    impl<'de> Visitor<'de> for OptVisitor {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(DURATION_HINT)
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(DurationVisitor).map(Some)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        d.deserialize_option(OptVisitor)
    }

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }
}

/// `#[serde(with = "units::size")]`
pub mod size {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        d.deserialize_any(SizeVisitor)
    }

    pub fn serialize<S: Serializer>(b: &ByteSize, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_size(*b))
    }
}

/// `#[serde(deserialize_with = "units::list")]`: a list of strings, or one string holding
/// comma-separated items (optionally in `[...]`, items optionally quoted), as an environment
/// variable would give it.
pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct ListVisitor;

    impl<'de> Visitor<'de> for ListVisitor {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of strings, or one comma-separated string")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            let v = v.trim();
            let inner = v.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(v);
            Ok(inner
                .split(',')
                .map(|item| item.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
                .filter(|item| !item.is_empty())
                .collect())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            Vec::<String>::deserialize(de::value::SeqAccessDeserializer::new(seq))
        }
    }

    d.deserialize_any(ListVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases = [
            ("500ms", Some(Duration::from_millis(500))),
            ("30s", Some(Duration::from_secs(30))),
            ("45", Some(Duration::from_secs(45))),
            ("10m", Some(Duration::from_secs(600))),
            ("2h", Some(Duration::from_secs(7200))),
            ("7d", Some(Duration::from_secs(604800))),
            ("1h 30m", Some(Duration::from_secs(5400))),
            ("", None),
            ("s", None),
            ("3 parsecs", None),
            ("-1s", None),
            ("99999999999999999999", None),
            ("99999999999999999999d", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_duration(input).ok(), want, "{input}");
        }
    }

    #[test]
    fn sizes() {
        let cases = [
            ("256MiB", Some(256u64 << 20)),
            ("10GiB", Some(10 << 30)),
            ("512kib", Some(512 << 10)),
            ("4096", Some(4096)),
            ("1MB", Some(1_000_000)),
            ("12 MiB", Some(12 << 20)),
            ("MiB", None),
            ("-1", None),
            ("3 parsecs", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_size(input).ok().map(|b| b.as_u64()), want, "{input}");
        }
        // Absurd values do not overflow: they saturate, and validation bounds them.
        assert_eq!(parse_size("99999999999999TiB").unwrap().as_u64(), u64::MAX);
    }

    #[test]
    fn written_back_in_a_form_that_parses_to_the_same_value() {
        for d in ["0s", "250ms", "1500ms", "90s", "10m", "1h", "25h", "7d", "365d"] {
            let parsed = parse_duration(d).unwrap();
            assert_eq!(format_duration(parsed), d);
        }
        let odd = Duration::from_micros(1_500);
        assert_eq!(parse_duration(&format_duration(odd)).unwrap(), odd);
        for s in ["0", "4095", "64KiB", "256MiB", "1536MiB", "10GiB", "1TiB"] {
            assert_eq!(format_size(parse_size(s).unwrap()), s);
        }
    }

    #[test]
    fn lists_from_arrays_or_comma_separated_strings() {
        #[derive(Deserialize)]
        struct L {
            #[serde(deserialize_with = "list")]
            l: Vec<String>,
        }
        let from = |toml_text: &str| toml::from_str::<L>(toml_text).unwrap().l;
        assert_eq!(from(r#"l = ["a", "b"]"#), ["a", "b"]);
        assert_eq!(from(r#"l = "a, b,""#), ["a", "b"]);
        assert_eq!(from(r#"l = "[\"a\", b]""#), ["a", "b"]);
        assert!(from(r#"l = """#).is_empty());
        assert!(toml::from_str::<L>("l = 3").is_err());
    }
}
