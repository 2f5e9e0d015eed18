//! Standard Webhooks signatures (standardwebhooks.com, version 1.0): the
//! HMAC-SHA256 of `"{id}.{timestamp}.{body}"` under the receiver's key,
//! sent as `webhook-signature: v1,<base64>` beside `webhook-id` and
//! `webhook-timestamp` (unix seconds). Receivers verify with any of the
//! specification's libraries.
//!
//! Depends on aws-lc-rs's `hmac` and `base64`.

use aws_lc_rs::hmac;
use base64::Engine as _;

/// The `webhook-signature` value for one request: `v1,` and the base64 of
/// the HMAC-SHA256 of `"{id}.{timestamp}.{body}"` under `key` (the bytes
/// the `whsec_` secret encodes).
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

/// Decodes a `whsec_<base64>` secret into its key bytes; `None` when it is
/// not one.
pub fn decode_secret(secret: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(secret.trim().strip_prefix("whsec_")?)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's published example (the reference libraries'
    /// `test_sign_function`, also in Svix's "verifying manually" guide):
    /// an independent implementation's answer, not ours.
    #[test]
    fn signs_the_specifications_test_vector() {
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            sign(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        // Any change to id, time or body changes the signature.
        let other = sign(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_331,
            br#"{"test": 2432232314}"#,
        );
        assert_ne!(other, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn only_whsec_secrets_decode() {
        assert_eq!(decode_secret("whsec_AAEC"), Some(vec![0, 1, 2]));
        assert_eq!(decode_secret("AAEC"), None);
        assert_eq!(decode_secret("whsec_!!"), None);
    }
}
