//! The Standard Webhooks signature OpenAI sends, checked on the raw body before anything
//! parses it.
//!
//! OpenAI signs `"{webhook-id}.{webhook-timestamp}.{body}"` with HMAC-SHA256 under the key
//! that is base64 after `whsec_` in the signing secret, and sends `v1,<base64 tag>` in
//! `webhook-signature`; several space-separated signatures may be sent (during a secret
//! rotation) and any one matching is enough. A timestamp more than [`TOLERANCE_SECONDS`] away
//! from our clock is refused, so a captured delivery cannot be replayed later.
//!
//! # Why not the `standardwebhooks` crate
//!
//! The Standard Webhooks project's own crate (1.0.1, MIT) was checked: it compares tags with a
//! hand-written XOR fold, reads the wall clock inside `verify` (no way to test the tolerance at
//! fixed instants) and would add `hmac-sha256` and a third `base64` to the build. The HMAC and
//! SHA-256 of RustCrypto are already compiled for aws-sigv4, and their `Mac::verify_slice`
//! compares in constant time (`subtle`), so the check is built on them.
//!
//! Everything here is pure: the caller passes the headers, the body and the current time.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// How far the signed timestamp may be from our clock, either way (OpenAI's and the Standard
/// Webhooks libraries' default).
pub const TOLERANCE_SECONDS: i64 = 5 * 60;

/// The prefix of a Standard Webhooks symmetric secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// Shortest key the Standard Webhooks spec allows for HMAC-SHA256 secrets (192 bits).
pub const MIN_KEY_BYTES: usize = 24;

/// More signatures than this in one header is not a rotation but an attempt to make us hash
/// in a loop; the rest are ignored.
const MAX_SIGNATURES: usize = 8;

type HmacSha256 = Hmac<Sha256>;

/// The signing key, decoded from `whsec_<base64>`. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct SigningKey {
    key: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey([REDACTED])")
    }
}

/// Configuration compares keys; nothing secret depends on the timing of this.
impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

/// Why a secret is not a signing secret. The messages never contain the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("it does not start with {SECRET_PREFIX} (copy the whole secret OpenAI shows)")]
    MissingPrefix,
    #[error("the part after {SECRET_PREFIX} is not standard base64")]
    NotBase64,
    #[error("its key is {0} bytes, fewer than the {MIN_KEY_BYTES} a Standard Webhooks secret has")]
    TooShort(usize),
}

impl SigningKey {
    /// Parses `whsec_<base64>` (surrounding whitespace, as left by `kubectl create secret
    /// --from-file`, is ignored).
    pub fn parse(secret: &str) -> Result<SigningKey, KeyError> {
        let encoded = secret
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(KeyError::MissingPrefix)?;
        let key = BASE64.decode(encoded).map_err(|_| KeyError::NotBase64)?;
        if key.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort(key.len()));
        }
        Ok(SigningKey { key })
    }

    fn mac(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// `v1,<base64 tag>`: what a sender puts in `webhook-signature` (tests and the emulator's
    /// cross-check use it; the server only verifies).
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self
            .mac(id, &timestamp.to_string(), body)
            .finalize()
            .into_bytes();
        format!("v1,{}", BASE64.encode(tag))
    }
}

/// The three headers, as received (`None` when absent or not visible ASCII).
#[derive(Debug, Clone, Copy, Default)]
pub struct SignedHeaders<'a> {
    pub id: Option<&'a str>,
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
}

/// Why a delivery is refused (all answered 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing or unreadable header {0}")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not a whole number of seconds")]
    BadTimestamp,
    #[error("webhook-timestamp is {0} s away from our clock (more than {TOLERANCE_SECONDS})")]
    StaleTimestamp(i64),
    #[error("no v1 signature matches")]
    NoMatch,
}

impl SignatureError {
    /// The `outcome` label of the metric.
    pub fn outcome(&self) -> &'static str {
        match self {
            SignatureError::MissingHeader(_) => "missing_header",
            SignatureError::BadTimestamp => "bad_timestamp",
            SignatureError::StaleTimestamp(_) => "stale_timestamp",
            SignatureError::NoMatch => "bad_signature",
        }
    }
}

/// Checks a delivery at `now_unix` (seconds): headers present, timestamp within tolerance, and
/// one of the `v1,` signatures the HMAC of `id.timestamp.body` (compared in constant time).
pub fn verify(
    key: &SigningKey,
    headers: SignedHeaders<'_>,
    body: &[u8],
    now_unix: i64,
) -> Result<(), SignatureError> {
    let id = headers
        .id
        .filter(|v| !v.is_empty())
        .ok_or(SignatureError::MissingHeader(HEADER_ID))?;
    let timestamp = headers
        .timestamp
        .filter(|v| !v.is_empty())
        .ok_or(SignatureError::MissingHeader(HEADER_TIMESTAMP))?;
    let signatures = headers
        .signature
        .filter(|v| !v.trim().is_empty())
        .ok_or(SignatureError::MissingHeader(HEADER_SIGNATURE))?;
    // Digits only: the signed text is the header as sent, so " 17" or "+17" must not pass as 17.
    if timestamp.len() > 12 || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::BadTimestamp);
    }
    let sent: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    let skew = now_unix.saturating_sub(sent);
    if skew.abs() > TOLERANCE_SECONDS {
        return Err(SignatureError::StaleTimestamp(skew));
    }
    let mac = key.mac(id, timestamp, body);
    let matched = signatures
        .split(' ')
        .filter(|s| !s.is_empty())
        .take(MAX_SIGNATURES)
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|tag| BASE64.decode(tag).ok())
        // Each comparison is constant-time; stopping at the first match only tells which
        // candidate matched, which is no secret.
        .any(|tag| mac.clone().verify_slice(&tag).is_ok());
    if matched {
        Ok(())
    } else {
        Err(SignatureError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The vector of the Standard Webhooks reference libraries (spec repository,
    // libraries/*/tests): secret, message id, timestamp, payload and the expected signature.
    const SPEC_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const SPEC_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const SPEC_TS: i64 = 1_649_367_553;
    const SPEC_BODY: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SPEC_SIGNATURE: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    fn key() -> SigningKey {
        SigningKey::parse(SPEC_SECRET).unwrap()
    }

    fn headers<'a>(id: &'a str, ts: &'a str, sig: &'a str) -> SignedHeaders<'a> {
        SignedHeaders {
            id: Some(id),
            timestamp: Some(ts),
            signature: Some(sig),
        }
    }

    #[test]
    fn signs_the_spec_vector() {
        assert_eq!(key().sign(SPEC_ID, SPEC_TS, SPEC_BODY), SPEC_SIGNATURE);
    }

    #[test]
    fn verifies_the_spec_vector_at_its_time_and_within_tolerance() {
        let ts = SPEC_TS.to_string();
        for now in [
            SPEC_TS,
            SPEC_TS + TOLERANCE_SECONDS,
            SPEC_TS - TOLERANCE_SECONDS,
        ] {
            assert_eq!(
                verify(
                    &key(),
                    headers(SPEC_ID, &ts, SPEC_SIGNATURE),
                    SPEC_BODY,
                    now
                ),
                Ok(()),
                "now = {now}"
            );
        }
    }

    #[test]
    fn a_timestamp_more_than_five_minutes_off_is_refused_even_when_signed() {
        let ts = SPEC_TS.to_string();
        for (now, skew) in [
            (SPEC_TS + TOLERANCE_SECONDS + 1, TOLERANCE_SECONDS + 1),
            (SPEC_TS - TOLERANCE_SECONDS - 1, -TOLERANCE_SECONDS - 1),
        ] {
            assert_eq!(
                verify(
                    &key(),
                    headers(SPEC_ID, &ts, SPEC_SIGNATURE),
                    SPEC_BODY,
                    now
                ),
                Err(SignatureError::StaleTimestamp(skew))
            );
        }
    }

    #[test]
    fn any_of_several_signatures_may_match() {
        let ts = SPEC_TS.to_string();
        let several = format!(
            "v1,Mm7xgUVICxZfQ3bgf0h0Dof65L/IFx+PnZvnDWPCX6Q= v1a,bm90IGFuIGVkMjU1MTkgc2ln  {SPEC_SIGNATURE} v1,9DfC1c3eeOrXB6w/5dIDydLNQaEyww5KalE5jLBZucE="
        );
        assert_eq!(
            verify(&key(), headers(SPEC_ID, &ts, &several), SPEC_BODY, SPEC_TS),
            Ok(())
        );
        let none = "v1,Mm7xgUVICxZfQ3bgf0h0Dof65L/IFx+PnZvnDWPCX6Q= v1,9DfC1c3eeOrXB6w/5dIDydLNQaEyww5KalE5jLBZucE=";
        assert_eq!(
            verify(&key(), headers(SPEC_ID, &ts, none), SPEC_BODY, SPEC_TS),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn anything_changed_breaks_the_signature() {
        let ts = SPEC_TS.to_string();
        let other_key =
            SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("valid secret");
        let cases: Vec<(SigningKey, &str, String, &str, &[u8])> = vec![
            (other_key, SPEC_ID, ts.clone(), SPEC_SIGNATURE, SPEC_BODY),
            (key(), "msg_other", ts.clone(), SPEC_SIGNATURE, SPEC_BODY),
            (
                key(),
                SPEC_ID,
                (SPEC_TS + 1).to_string(),
                SPEC_SIGNATURE,
                SPEC_BODY,
            ),
            (
                key(),
                SPEC_ID,
                ts.clone(),
                SPEC_SIGNATURE,
                br#"{"email":"x@example.com","username":"test_user"}"#,
            ),
            // Truncated tags, a bare version, another scheme, no base64.
            (
                key(),
                SPEC_ID,
                ts.clone(),
                "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPe",
                SPEC_BODY,
            ),
            (key(), SPEC_ID, ts.clone(), "v1,", SPEC_BODY),
            (
                key(),
                SPEC_ID,
                ts.clone(),
                "v2,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
                SPEC_BODY,
            ),
            (key(), SPEC_ID, ts.clone(), "v1,not base64!", SPEC_BODY),
            (
                key(),
                SPEC_ID,
                ts.clone(),
                "tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=",
                SPEC_BODY,
            ),
        ];
        for (k, id, ts, sig, body) in cases {
            let now = ts.parse().unwrap();
            assert_eq!(
                verify(&k, headers(id, &ts, sig), body, now),
                Err(SignatureError::NoMatch),
                "{id} {ts} {sig}"
            );
        }
    }

    #[test]
    fn missing_or_malformed_headers_are_named() {
        let ts = SPEC_TS.to_string();
        let full = headers(SPEC_ID, &ts, SPEC_SIGNATURE);
        let cases = [
            (SignedHeaders { id: None, ..full }, HEADER_ID),
            (
                SignedHeaders {
                    id: Some(""),
                    ..full
                },
                HEADER_ID,
            ),
            (
                SignedHeaders {
                    timestamp: None,
                    ..full
                },
                HEADER_TIMESTAMP,
            ),
            (
                SignedHeaders {
                    signature: None,
                    ..full
                },
                HEADER_SIGNATURE,
            ),
            (
                SignedHeaders {
                    signature: Some("  "),
                    ..full
                },
                HEADER_SIGNATURE,
            ),
        ];
        for (h, name) in cases {
            assert_eq!(
                verify(&key(), h, SPEC_BODY, SPEC_TS),
                Err(SignatureError::MissingHeader(name))
            );
        }
        for bad in [
            "soon",
            "-1649367553",
            " 1649367553",
            "+1649367553",
            "1.5",
            "99999999999999999999",
        ] {
            assert_eq!(
                verify(
                    &key(),
                    headers(SPEC_ID, bad, SPEC_SIGNATURE),
                    SPEC_BODY,
                    SPEC_TS
                ),
                Err(SignatureError::BadTimestamp),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn secrets_are_whsec_base64_of_enough_bytes() {
        assert!(SigningKey::parse(&format!(" {SPEC_SECRET}\n")).is_ok());
        assert_eq!(
            SigningKey::parse("C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
            Err(KeyError::MissingPrefix)
        );
        assert_eq!(
            SigningKey::parse("whsec_not*base64"),
            Err(KeyError::NotBase64)
        );
        assert_eq!(
            SigningKey::parse("whsec_c2hvcnQ="),
            Err(KeyError::TooShort(5))
        );
        assert_eq!(SigningKey::parse("whsec_"), Err(KeyError::TooShort(0)));
    }

    #[test]
    fn the_key_never_shows_in_debug_or_errors() {
        let text = format!("{:?}", key());
        assert!(!text.contains("C2FVsBQ"), "{text}");
        for e in [
            KeyError::MissingPrefix,
            KeyError::NotBase64,
            KeyError::TooShort(3),
        ] {
            assert!(!e.to_string().contains("C2FVsBQ"));
        }
    }
}
