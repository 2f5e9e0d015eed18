//! The document a channel's watched long-lived token is handed out in: the
//! same for its file sinks and for `GET /v1/channels/{channel}/long-lived-token`,
//! so a consumer can switch between the two without changing its parser.
//!
//! It is the group `json` sink's document where the fields apply: LINE
//! gives a long-lived token no key ID (`key_id` is null, `fingerprint`
//! names it), no expiry (`expires_at` is null: valid until reissued or
//! revoked in the console) and it belongs to no group; `kind` is
//! `"long_lived"`. The `raw` format is the token alone; `env` is
//! `LINE_CHANNEL_ACCESS_TOKEN=...` only.
//!
//! Depends on `domain` and the sink writer's helpers.

use serde::Serialize;

use super::sink::{SinkError, SinkFormat, env_safe};
use crate::domain::{AccessToken, ChannelId};

/// The JSON document; field order is the order consumers see.
#[derive(Serialize)]
struct Document<'a> {
    access_token: &'a str,
    token_type: &'static str,
    key_id: Option<&'a str>,
    fingerprint: &'a str,
    expires_at: Option<&'a str>,
    channel: &'a str,
    kind: &'static str,
    previous: Option<()>,
}

/// The bytes of the long-lived token `token` (named `fingerprint`) of
/// `channel` in `format`.
///
/// # Errors
/// [`SinkError::UnsafeEnvToken`] when the token cannot be written unquoted
/// in an `env` file; [`SinkError::Encode`] if JSON encoding fails (a bug).
pub fn render(
    format: SinkFormat,
    channel: &ChannelId,
    token: &AccessToken,
    fingerprint: &str,
) -> Result<Vec<u8>, SinkError> {
    match format {
        SinkFormat::Raw => Ok(token.expose().as_bytes().to_vec()),
        SinkFormat::Json => {
            let mut bytes = serde_json::to_vec_pretty(&Document {
                access_token: token.expose(),
                token_type: "Bearer",
                key_id: None,
                fingerprint,
                expires_at: None,
                channel: channel.as_str(),
                kind: "long_lived",
                previous: None,
            })
            .map_err(|source| SinkError::Encode { source })?;
            bytes.push(b'\n');
            Ok(bytes)
        }
        SinkFormat::Env => {
            if !env_safe(token.expose()) {
                return Err(SinkError::UnsafeEnvToken {
                    channel: channel.clone(),
                });
            }
            Ok(format!("LINE_CHANNEL_ACCESS_TOKEN={}\n", token.expose()).into_bytes())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_holds_the_token_and_json_matches_the_api_shape() {
        let ch = ChannelId::new("1234567890");
        let t = AccessToken::new("LONG+lived/VALUE=");
        assert_eq!(
            render(SinkFormat::Raw, &ch, &t, "sha256:0123abcd").unwrap(),
            b"LONG+lived/VALUE="
        );
        let json: serde_json::Value =
            serde_json::from_slice(&render(SinkFormat::Json, &ch, &t, "sha256:0123abcd").unwrap())
                .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"access_token": "LONG+lived/VALUE=", "token_type": "Bearer",
                "key_id": null, "fingerprint": "sha256:0123abcd", "expires_at": null,
                "channel": "1234567890", "kind": "long_lived", "previous": null})
        );
        assert_eq!(
            render(SinkFormat::Env, &ch, &t, "x").unwrap(),
            b"LINE_CHANNEL_ACCESS_TOKEN=LONG+lived/VALUE=\n"
        );
        let err = render(SinkFormat::Env, &ch, &AccessToken::new("a b"), "x").unwrap_err();
        assert!(!err.to_string().contains("a b"), "{err}");
    }
}
