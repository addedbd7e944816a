//! Keeping API keys out of logs, errors and `Debug` output.
//!
//! Keys are held as [`secrecy::SecretString`] (whose `Debug` prints `[REDACTED]`); these helpers
//! cover the two places a key can still leak: the request header carrying it, and error text a
//! server or proxy echoes back.

use reqwest::header::{HeaderValue, InvalidHeaderValue};
/// Re-exported so that users of the clients' configs need no direct `secrecy` dependency.
pub use secrecy::{ExposeSecret, SecretString};

/// Replaces every occurrence of the secret in `text` by `[REDACTED]`.
///
/// Error bodies are passed through this before they are stored in an error: some proxies and
/// misconfigured gateways echo request headers back, and an error message ends up in logs and
/// in dead-letter message attributes.
pub fn scrub(text: &str, secret: &SecretString) -> String {
    let key = secret.expose_secret();
    // A very short "key" would redact ordinary words and make errors unreadable; such a key is a
    // configuration error that the server reports anyway.
    if key.len() < 8 {
        return text.to_owned();
    }
    text.replace(key, "[REDACTED]")
}

/// A header value built from a secret, marked sensitive so that `http`'s `Debug` prints
/// `Sensitive` instead of the value (and HTTP/2 HPACK never indexes it).
///
/// The error of an invalid value does not contain the value.
pub fn sensitive_header(
    prefix: &str,
    secret: &SecretString,
) -> Result<HeaderValue, InvalidHeaderValue> {
    let mut value = HeaderValue::from_str(&format!("{prefix}{}", secret.expose_secret()))?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_replaces_every_occurrence() {
        let key = SecretString::from("sk-test-1234567890");
        assert_eq!(
            scrub("bad key sk-test-1234567890 (sk-test-1234567890)", &key),
            "bad key [REDACTED] ([REDACTED])"
        );
        assert_eq!(scrub("nothing here", &key), "nothing here");
        // Too short to redact safely: left alone.
        assert_eq!(scrub("a b", &SecretString::from("a")), "a b");
    }

    #[test]
    fn sensitive_header_hides_the_value_in_debug() {
        let key = SecretString::from("sk-test-1234567890");
        let value = sensitive_header("Bearer ", &key).expect("valid");
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("sk-test"));
        let err = sensitive_header("", &SecretString::from("bad\nsk-test-1234567890"))
            .expect_err("newline is invalid");
        assert!(!format!("{err:?} {err}").contains("sk-test"));
    }
}
