//! Labels on profiles: the ones psample sets on every pprof sample (`pid`, `tid`, `thread`,
//! `container`) and the user's `--label KEY=VALUE`, which go on every pprof sample and into
//! the application name pushed to Pyroscope (`name{key=value,…}`).
//!
//! Keys and values are checked once, when parsed, against what both consumers accept: a
//! key like a Prometheus/Pyroscope label name, a value without the characters that
//! delimit Pyroscope's `name{k=v}` form.

/// Label keys psample sets itself on each sample; `--label` cannot take them.
pub const RESERVED: &[&str] = &["pid", "tid", "thread", "container"];

/// Longest label value accepted.
pub const MAX_VALUE: usize = 1024;

/// Parse and check `KEY=VALUE`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))?;
    check_label(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

/// A key is `[A-Za-z_][A-Za-z0-9_.]*` (at most 128 characters), not starting with `__`
/// (reserved by Prometheus and Pyroscope), and not one psample sets; a value is 1 to
/// [`MAX_VALUE`] printable characters other than `{ } , = " \`.
pub fn check_label(key: &str, value: &str) -> Result<(), String> {
    let mut chars = key.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok
        || key.len() > 128
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        return Err(format!(
            "label key {key:?}: use letters, digits, '_' and '.', starting with a letter or '_'"
        ));
    }
    if key.starts_with("__") {
        return Err(format!(
            "label key {key:?}: keys starting with __ are reserved"
        ));
    }
    if RESERVED.contains(&key) {
        return Err(format!(
            "label key {key:?} is set by psample on every sample ({})",
            RESERVED.join(", ")
        ));
    }
    if value.is_empty() || value.len() > MAX_VALUE {
        return Err(format!(
            "label {key}: the value must have 1 to {MAX_VALUE} bytes"
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| c.is_control() || matches!(c, '{' | '}' | ',' | '=' | '"' | '\\'))
    {
        return Err(format!(
            "label {key}: the value may not contain {c:?} (it delimits Pyroscope's name{{k=v}} form)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values_both_consumers_accept() {
        assert_eq!(
            parse_label("env=prod").unwrap(),
            ("env".to_string(), "prod".to_string())
        );
        assert!(parse_label("region.zone=eu-west-1a").is_ok());
        assert!(parse_label("_k=v v").is_ok());
        for bad in [
            "env",
            "=v",
            "1x=v",
            "a-b=v",
            "__name__=x",
            "pid=3",
            "thread=x",
            "k=",
            "k=a,b",
            "k=a}b",
            "k=a=b",
            "k=\"q\"",
            "k=a\nb",
        ] {
            assert!(parse_label(bad).is_err(), "{bad}");
        }
        assert!(parse_label(&format!("k={}", "x".repeat(MAX_VALUE + 1))).is_err());
    }
}
