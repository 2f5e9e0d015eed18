//! The optional files a channel's stateless token is written to, rewritten
//! with every new token through the group sinks' atomic writer
//! ([`crate::delivery::sink::write_bytes`]).
//!
//! Formats, as for group sinks but without a key ID (stateless tokens
//! have none) or a previous token (they cannot be revoked, and the new one
//! is valid at once):
//! - `raw`: the token alone, no trailing newline;
//! - `json`: `access_token`, `token_type`, `expires_at` (RFC 3339, UTC),
//!   `channel`;
//! - `env`: `LINE_CHANNEL_ACCESS_TOKEN=...` and
//!   `LINE_CHANNEL_ACCESS_TOKEN_EXPIRES_AT=...`, unquoted.
//!
//! A failed write is logged (path and step, never the token) and does not
//! fail the request: the API answer does not depend on the files.

use serde::Serialize;

use super::Cached;
use crate::delivery::sink::{self, SinkFormat, SinkSpec};
use crate::domain::ChannelId;

/// The JSON document; field order is the order consumers see.
#[derive(Serialize)]
struct JsonDocument<'a> {
    access_token: &'a str,
    token_type: &'a str,
    expires_at: String,
    channel: &'a str,
}

/// The bytes of a sink in `format`, or `None` when the token cannot be
/// written in it (an `env` value that would need quoting).
pub(super) fn render(format: SinkFormat, channel: &ChannelId, token: &Cached) -> Option<Vec<u8>> {
    let expires_at = sink::timestamp(token.expires_at);
    match format {
        SinkFormat::Raw => Some(token.token.expose().as_bytes().to_vec()),
        SinkFormat::Json => {
            let doc = JsonDocument {
                access_token: token.token.expose(),
                token_type: &token.token_type,
                expires_at,
                channel: channel.as_str(),
            };
            let mut bytes = serde_json::to_vec_pretty(&doc).ok()?;
            bytes.push(b'\n');
            Some(bytes)
        }
        SinkFormat::Env => {
            let value = token.token.expose();
            (sink::env_safe(value) && sink::env_safe(&expires_at)).then(|| {
                format!(
                    "LINE_CHANNEL_ACCESS_TOKEN={value}\n\
                     LINE_CHANNEL_ACCESS_TOKEN_EXPIRES_AT={expires_at}\n"
                )
                .into_bytes()
            })
        }
    }
}

/// Writes every sink (on the blocking pool: fsyncs), logging failures.
pub(super) async fn write_all(channel: &ChannelId, specs: &[SinkSpec], token: &Cached) {
    for spec in specs {
        let Some(bytes) = render(spec.format, channel, token) else {
            tracing::warn!(channel = %channel, path = %spec.path.display(), "the stateless token holds characters an env file cannot carry unquoted; use the json format for this sink");
            continue;
        };
        let owned = spec.clone();
        let written = tokio::task::spawn_blocking(move || sink::write_bytes(&owned, &bytes)).await;
        match written {
            Ok(Ok(())) => {
                tracing::debug!(channel = %channel, path = %spec.path.display(), "stateless sink written");
            }
            Ok(Err(e)) => {
                tracing::warn!(channel = %channel, error = %e, "could not write a stateless sink");
            }
            Err(e) => {
                tracing::warn!(channel = %channel, path = %spec.path.display(), error = %e, "the stateless sink writer stopped");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AccessToken;

    fn cached() -> Cached {
        Cached {
            token: AccessToken::new("eyJhbGciOiJIUzI1NiJ9.c3RhdGVsZXNz.sig"),
            token_type: "Bearer".to_owned(),
            expires_at: chrono::DateTime::from_timestamp(1_772_324_100, 0).unwrap(),
        }
    }

    #[test]
    fn formats() {
        let ch = ChannelId::new("1234567890");
        let raw = render(SinkFormat::Raw, &ch, &cached()).unwrap();
        assert_eq!(raw, b"eyJhbGciOiJIUzI1NiJ9.c3RhdGVsZXNz.sig");
        let json: serde_json::Value =
            serde_json::from_slice(&render(SinkFormat::Json, &ch, &cached()).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "access_token": "eyJhbGciOiJIUzI1NiJ9.c3RhdGVsZXNz.sig",
                "token_type": "Bearer",
                "expires_at": "2026-03-01T00:15:00Z",
                "channel": "1234567890",
            })
        );
        let env = String::from_utf8(render(SinkFormat::Env, &ch, &cached()).unwrap()).unwrap();
        assert_eq!(
            env,
            "LINE_CHANNEL_ACCESS_TOKEN=eyJhbGciOiJIUzI1NiJ9.c3RhdGVsZXNz.sig\n\
             LINE_CHANNEL_ACCESS_TOKEN_EXPIRES_AT=2026-03-01T00:15:00Z\n"
        );
        let mut odd = cached();
        odd.token = AccessToken::new("needs quoting");
        assert!(render(SinkFormat::Env, &ch, &odd).is_none());
    }
}
