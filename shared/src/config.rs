//! Typed settings read from flags and the environment, validated at start.
//!
//! Values come from two places: flags (which win) and a [`ConfigSource`], the process
//! environment in the binaries and a plain map in tests, so no test ever calls `set_var`.
//! Every problem is collected, so one run of a misconfigured binary names them all; the
//! binaries turn a [`ConfigError`] into exit code 64.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use secrecy::SecretString;

/// Exit code for bad configuration or usage (BSD `EX_USAGE`).
pub const EXIT_USAGE: i32 = 64;

/// Where settings not given as flags come from.
pub trait ConfigSource {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Environment;

impl ConfigSource for Environment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl ConfigSource for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl<const N: usize> ConfigSource for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// All problems found in one configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration:")?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// `json` (default, for clusters) or `text` (for people).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            _ => Err("expected json or text".to_owned()),
        }
    }
}

/// Reads settings by environment-variable name: the flag value when given, else the source.
/// Errors accumulate; call [`Lookup::finish`] at the end.
pub struct Lookup<'a> {
    flags: HashMap<&'static str, String>,
    source: &'a dyn ConfigSource,
    errors: Vec<String>,
}

impl<'a> Lookup<'a> {
    /// `flags` maps environment-variable names to the values of their flags, when given.
    pub fn new(
        flags: impl IntoIterator<Item = (&'static str, Option<String>)>,
        source: &'a dyn ConfigSource,
    ) -> Self {
        Lookup {
            flags: flags
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect(),
            source,
            errors: Vec::new(),
        }
    }

    fn raw(&self, name: &str) -> Option<String> {
        self.flags
            .get(name)
            .cloned()
            .or_else(|| self.source.var(name))
            .filter(|v| !v.trim().is_empty())
    }

    pub fn problem(&mut self, message: impl Into<String>) {
        self.errors.push(message.into());
    }

    pub fn optional(&mut self, name: &str) -> Option<String> {
        self.raw(name)
    }

    pub fn required(&mut self, name: &str) -> String {
        self.raw(name).unwrap_or_else(|| {
            self.errors.push(format!("{name} is required but not set"));
            String::new()
        })
    }

    pub fn string_or(&mut self, name: &str, default: &str) -> String {
        self.raw(name).unwrap_or_else(|| default.to_owned())
    }

    /// A secret: its value never appears in an error message.
    pub fn secret(&mut self, name: &str) -> SecretString {
        SecretString::from(self.required(name))
    }

    pub fn parsed_or<T: FromStr>(&mut self, name: &str, default: T) -> T
    where
        T::Err: fmt::Display,
    {
        match self.raw(name) {
            None => default,
            Some(v) => match v.trim().parse::<T>() {
                Ok(t) => t,
                Err(e) => {
                    self.errors.push(format!("{name}={v:?}: {e}"));
                    default
                }
            },
        }
    }

    /// A whole number within `min..=max`.
    pub fn number_in(&mut self, name: &str, default: u64, min: u64, max: u64) -> u64 {
        match self.raw(name) {
            None => default,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => n,
                Ok(n) => {
                    self.errors
                        .push(format!("{name}={n} is out of range ({min}..={max})"));
                    default
                }
                Err(_) => {
                    self.errors
                        .push(format!("{name}={v:?} is not a whole number"));
                    default
                }
            },
        }
    }

    /// A positive decimal number within `min..=max`.
    pub fn float_in(&mut self, name: &str, default: f64, min: f64, max: f64) -> f64 {
        match self.raw(name) {
            None => default,
            Some(v) => match v.trim().parse::<f64>() {
                Ok(n) if n.is_finite() && n >= min && n <= max => n,
                Ok(_) => {
                    self.errors
                        .push(format!("{name}={v} is out of range ({min}..={max})"));
                    default
                }
                Err(_) => {
                    self.errors.push(format!("{name}={v:?} is not a number"));
                    default
                }
            },
        }
    }

    pub fn socket_addr_or(&mut self, name: &str, default: &str) -> SocketAddr {
        let v = self.string_or(name, default);
        v.parse().unwrap_or_else(|_| {
            self.errors
                .push(format!("{name}={v:?} is not an address like 0.0.0.0:9090"));
            SocketAddr::from(([0, 0, 0, 0], 0))
        })
    }

    /// An http(s) URL (trailing slash removed).
    pub fn url(&mut self, name: &str, value: String) -> String {
        if value.is_empty() {
            return value;
        }
        match reqwest::Url::parse(&value) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                value.trim_end_matches('/').to_owned()
            }
            _ => {
                self.errors
                    .push(format!("{name}={value:?} is not an http(s) URL"));
                value
            }
        }
    }

    pub fn finish(self) -> Result<(), ConfigError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(self.errors))
        }
    }
}

/// Settings both binaries share: where the table and queues are, and how to log.
#[derive(Debug, Clone)]
pub struct CommonSettings {
    pub table_name: String,
    pub queue_url: String,
    pub dead_letter_queue_url: Option<String>,
    pub log_format: LogFormat,
    pub log_filter: String,
}

impl CommonSettings {
    pub fn read(l: &mut Lookup<'_>) -> Self {
        let queue_url = l.required("QUEUE_URL");
        let queue_url = l.url("QUEUE_URL", queue_url);
        let dlq = l.optional("DEAD_LETTER_QUEUE_URL");
        let dead_letter_queue_url = dlq.map(|v| l.url("DEAD_LETTER_QUEUE_URL", v));
        CommonSettings {
            table_name: l.required("DYNAMODB_TABLE_NAME"),
            queue_url,
            dead_letter_queue_url,
            log_format: l.parsed_or("LOG_FORMAT", LogFormat::Json),
            log_filter: l.string_or("RUST_LOG", "info"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn flags_win_over_the_source() {
        let env = [
            ("DYNAMODB_TABLE_NAME", "from-env"),
            ("QUEUE_URL", "http://q/1"),
        ];
        let mut l = Lookup::new([("DYNAMODB_TABLE_NAME", Some("from-flag".into()))], &env);
        let c = CommonSettings::read(&mut l);
        l.finish().unwrap();
        assert_eq!(c.table_name, "from-flag");
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.log_filter, "info");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let env = [
            ("LOG_FORMAT", "xml"),
            ("MAX_IN_FLIGHT", "0"),
            ("N", "ten"),
            ("QUEUE_URL", "not a url"),
            ("ADDR", "nowhere"),
            ("RATE", "-1"),
        ];
        let mut l = Lookup::new([], &env);
        let _ = CommonSettings::read(&mut l);
        l.number_in("MAX_IN_FLIGHT", 16, 1, 1000);
        l.number_in("N", 1, 1, 10);
        l.socket_addr_or("ADDR", "0.0.0.0:9090");
        l.float_in("RATE", 90.0, 0.1, 10_000.0);
        let err = l.finish().unwrap_err();
        let text = err.to_string();
        for needle in [
            "DYNAMODB_TABLE_NAME is required",
            "LOG_FORMAT=\"xml\": expected json or text",
            "MAX_IN_FLIGHT=0 is out of range",
            "N=\"ten\" is not a whole number",
            "QUEUE_URL=\"not a url\" is not an http(s) URL",
            "ADDR=\"nowhere\"",
            "RATE=-1 is out of range",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in {text}");
        }
        assert_eq!(err.0.len(), 7);
    }

    #[test]
    fn secrets_are_never_echoed() {
        let env = [("OPENAI_API_KEY", "sk-very-secret")];
        let mut l = Lookup::new([], &env);
        let key = l.secret("OPENAI_API_KEY");
        assert_eq!(key.expose_secret(), "sk-very-secret");
        assert!(!format!("{key:?}").contains("sk-very-secret"));
        let mut l = Lookup::new([], &env);
        let _ = l.secret("PINECONE_API_KEY");
        assert_eq!(
            l.finish().unwrap_err().0,
            ["PINECONE_API_KEY is required but not set"]
        );
    }
}
