//! The sandbox's LINE Login endpoints, driven by the real LINE Login client
//! and judged from the outside (the inspection route and in-process
//! inspection): code exchange, the 90-day horizon to the millisecond,
//! rotation, the web-app secret rule, verify, both revoke forms,
//! deauthorize, faults, and the channel-token endpoints still answering on
//! the shared paths.

use std::time::Duration;

use chrono::{DateTime, Utc};
use linetokd::domain::{AccessToken, ChannelId, ChannelSecret, RefreshToken};
use linetokd::line::login::{LoginClient, LoginEndpoint};
use linetokd::line::{Deauthorization, LineError, Verification};
use linetokd::sandbox::{
    GrantState, LoginAppType, LoginChannelConfig, LoginTokenState, SandboxConfig,
};
use serde_json::{Value, json};

use crate::support::{self, LAB_CHANNEL, LAB_SECRET, SandboxLab};

/// A native-app Login channel that rotates refresh tokens.
const NATIVE: &str = "1660000000";
const NATIVE_SECRET: &str = "native-login-SECRET";
const REDIRECT: &str = "https://app.example/cb";

fn native() -> ChannelId {
    ChannelId::new(NATIVE)
}

/// The lab, with its channel also a web-app Login channel (same secret,
/// so its v2.1 and stateless tokens are channel tokens of the Login
/// channel), and [`NATIVE`].
async fn lab() -> (SandboxLab, LoginClient) {
    let lab = support::sandbox_lab().await;
    lab.sandbox
        .register_login_channel(LoginChannelConfig {
            id: lab.channel(),
            secret: lab.secret(),
            app_type: LoginAppType::Web,
            rotate_refresh_tokens: false,
        })
        .unwrap();
    lab.sandbox
        .register_login_channel(LoginChannelConfig {
            id: native(),
            secret: ChannelSecret::new(NATIVE_SECRET),
            app_type: LoginAppType::Native,
            rotate_refresh_tokens: true,
        })
        .unwrap();
    let login = LoginClient::new(lab.client.clone(), None);
    (lab, login)
}

async fn post_json(lab: &SandboxLab, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", lab.base_url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn grants(lab: &SandboxLab, channel: &str) -> Value {
    reqwest::get(format!("{}/_sandbox/login/{channel}/grants", lab.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn at(v: &Value) -> DateTime<Utc> {
    v.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_grant_refreshes_until_its_horizon_to_the_millisecond() {
    let (lab, login) = lab().await;
    let login_at = lab.sandbox.now();
    let (status, code) = post_json(
        &lab,
        &format!("/_sandbox/login/{LAB_CHANNEL}/codes"),
        json!({"subject": "U1", "redirect_uri": REDIRECT, "scope": "profile openid"}),
    )
    .await;
    assert_eq!(status, 201, "{code}");
    let first = login
        .exchange_code(
            &lab.channel(),
            &lab.secret(),
            code["code"].as_str().unwrap(),
            REDIRECT,
            None,
        )
        .await
        .unwrap();
    assert_eq!(first.expires_in, 2_592_000);
    assert_eq!(first.scope.as_deref(), Some("profile openid"));
    assert!(first.id_token.is_some());
    let refresh = first.refresh_token.clone().unwrap();

    match login.verify(&first.access_token).await.unwrap() {
        Verification::Valid(v) => {
            assert_eq!(v.client_id, lab.channel());
            assert_eq!(v.expires_in, 2_592_000);
            assert_eq!(v.scope.as_deref(), Some("profile openid"));
        }
        other => panic!("{other:?}"),
    }

    // Three refreshes 29 days apart: same refresh token, fresh 30 days.
    for _ in 0..3 {
        lab.clock.advance(chrono::Duration::days(29));
        let r = login
            .refresh(&lab.channel(), Some(&lab.secret()), &refresh)
            .await
            .unwrap();
        assert_eq!(r.refresh_token.as_ref(), Some(&refresh), "echoed");
        assert_eq!(r.expires_in, 2_592_000);
        assert!(matches!(
            login.verify(&r.access_token).await.unwrap(),
            Verification::Valid(_)
        ));
    }
    let horizon = login_at + chrono::Duration::days(90);
    lab.clock.set(horizon - chrono::Duration::milliseconds(1));
    let last = login
        .refresh(&lab.channel(), Some(&lab.secret()), &refresh)
        .await
        .unwrap();
    lab.clock.set(horizon);
    let err = login
        .refresh(&lab.channel(), Some(&lab.secret()), &refresh)
        .await
        .unwrap_err();
    assert!(err.is_invalid_grant(), "{err}");
    assert!(!err.is_transient() && !err.is_invalid_client());
    assert_eq!(err.endpoint(), LoginEndpoint::Refresh);

    let listed = grants(&lab, LAB_CHANNEL).await;
    let grant = &listed[0];
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(grant["subject"], "U1");
    assert_eq!(at(&grant["login_at"]), login_at);
    assert_eq!(at(&grant["horizon_at"]), horizon);
    assert_eq!(grant["state"], "expired");
    assert_eq!(grant["refreshes"], 4);
    assert_eq!(grant["refresh_token"], refresh.expose());
    let tokens = grant["access_tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 5);
    // The last access token outlives the horizon by its own 30 days.
    let newest = tokens.last().unwrap();
    assert_eq!(newest["access_token"], last.access_token.expose());
    assert_eq!(newest["state"], "live");
    assert_eq!(
        at(&newest["expires_at"]),
        horizon - chrono::Duration::milliseconds(1) + chrono::Duration::days(30)
    );
    assert_eq!(tokens[0]["state"], "expired");
}

#[tokio::test]
async fn a_used_or_mismatched_code_is_invalid_grant() {
    let (lab, login) = lab().await;
    let code = lab
        .sandbox
        .create_login_code(&lab.channel(), "U1", "profile", REDIRECT)
        .unwrap();
    let err = login
        .exchange_code(
            &lab.channel(),
            &lab.secret(),
            &code.code,
            "https://evil/",
            None,
        )
        .await
        .unwrap_err();
    assert!(err.is_invalid_grant(), "{err}");
    let err = login
        .exchange_code(
            &lab.channel(),
            &ChannelSecret::new("wrong"),
            &code.code,
            REDIRECT,
            None,
        )
        .await
        .unwrap_err();
    assert!(err.is_invalid_client(), "{err}");
    login
        .exchange_code(&lab.channel(), &lab.secret(), &code.code, REDIRECT, None)
        .await
        .unwrap();
    let err = login
        .exchange_code(&lab.channel(), &lab.secret(), &code.code, REDIRECT, None)
        .await
        .unwrap_err();
    assert!(err.is_invalid_grant(), "used: {err}");
    let (status, body) = post_json(
        &lab,
        "/_sandbox/login/999/codes",
        json!({"subject": "U1", "redirect_uri": REDIRECT}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn a_web_app_needs_its_secret_and_a_native_app_does_not() {
    let (lab, login) = lab().await;
    let web = lab.sandbox.login(&lab.channel(), "U1", "profile").unwrap();
    let web_refresh = RefreshToken::new(web.refresh_token);
    for secret in [None, Some(ChannelSecret::new("wrong"))] {
        let err = login
            .refresh(&lab.channel(), secret.as_ref(), &web_refresh)
            .await
            .unwrap_err();
        assert!(err.is_invalid_client(), "{err}");
        assert!(!err.is_invalid_grant());
        let err = login
            .revoke(
                &lab.channel(),
                secret.as_ref(),
                &AccessToken::new(web.access_token.clone()),
            )
            .await
            .unwrap_err();
        assert!(err.is_invalid_client(), "{err}");
    }
    login
        .refresh(&lab.channel(), Some(&lab.secret()), &web_refresh)
        .await
        .unwrap();

    let app = lab.sandbox.login(&native(), "U2", "profile").unwrap();
    // Ignored, even a wrong one.
    let r = login
        .refresh(
            &native(),
            Some(&ChannelSecret::new("wrong")),
            &RefreshToken::new(app.refresh_token),
        )
        .await
        .unwrap();
    login
        .refresh(&native(), None, &r.refresh_token.unwrap())
        .await
        .unwrap();
    // A refresh token on another channel's client_id is not a grant there.
    let err = login
        .refresh(&native(), None, &web_refresh)
        .await
        .unwrap_err();
    assert!(err.is_invalid_grant(), "{err}");
}

#[tokio::test]
async fn rotation_retires_each_refresh_token_once_used() {
    let (lab, login) = lab().await;
    let first = lab.sandbox.login(&native(), "U1", "profile").unwrap();
    let first_refresh = RefreshToken::new(first.refresh_token);
    let second = login
        .refresh(&native(), None, &first_refresh)
        .await
        .unwrap();
    let second_refresh = second.refresh_token.clone().unwrap();
    assert_ne!(second_refresh, first_refresh);
    let err = login
        .refresh(&native(), None, &first_refresh)
        .await
        .unwrap_err();
    assert!(err.is_invalid_grant(), "rotated out: {err}");
    login
        .refresh(&native(), None, &second_refresh)
        .await
        .unwrap();
    let grant = &lab.sandbox.login_grants(&native())[0];
    assert_eq!(grant.state, GrantState::Active);
    assert_eq!(grant.retired_refresh_tokens.len(), 2);
    assert_eq!(grant.retired_refresh_tokens[0], first_refresh.expose());
    assert_eq!(grant.retired_refresh_tokens[1], second_refresh.expose());
    // The horizon stays the login's.
    assert_eq!(
        grant.horizon_at,
        grant.login_at + chrono::Duration::days(90)
    );
}

#[tokio::test]
async fn an_expired_access_token_is_refused_with_lines_text() {
    let (lab, login) = lab().await;
    let g = lab.sandbox.login(&native(), "U1", "profile").unwrap();
    let token = AccessToken::new(g.access_token);
    lab.clock.advance(chrono::Duration::days(30));
    match login.verify(&token).await.unwrap() {
        Verification::Rejected {
            code, description, ..
        } => {
            assert_eq!(code.as_deref(), Some("invalid_request"));
            assert_eq!(description.as_deref(), Some("access token expired"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn revoking_an_access_token_ends_it_and_the_refresh_form_ends_the_grant() {
    let (lab, login) = lab().await;
    let g = lab.sandbox.login(&native(), "U1", "profile").unwrap();
    let first = AccessToken::new(g.access_token);
    let refresh = RefreshToken::new(g.refresh_token);
    login.revoke(&native(), None, &first).await.unwrap();
    assert!(!login.verify(&first).await.unwrap().is_valid());
    // Revoking again, or an unknown token, is still 200.
    login.revoke(&native(), None, &first).await.unwrap();
    // The grant lives on.
    let r = login.refresh(&native(), None, &refresh).await.unwrap();
    assert!(login.verify(&r.access_token).await.unwrap().is_valid());

    let current = r.refresh_token.unwrap();
    login
        .revoke_refresh_token(&native(), None, &current)
        .await
        .unwrap();
    assert!(!login.verify(&r.access_token).await.unwrap().is_valid());
    let err = login.refresh(&native(), None, &current).await.unwrap_err();
    assert!(err.is_invalid_grant(), "{err}");
    let grant = &lab.sandbox.login_grants(&native())[0];
    assert_eq!(grant.state, GrantState::Revoked);
    assert_eq!(grant.ended_at, Some(lab.sandbox.now()));
    assert!(
        grant
            .access_tokens
            .iter()
            .all(|t| t.state != LoginTokenState::Live)
    );
}

#[tokio::test]
async fn deauthorize_takes_a_channel_token_of_the_login_channel_once() {
    let (lab, login) = lab().await;
    let g = lab.sandbox.login(&lab.channel(), "U1", "profile").unwrap();
    let user = AccessToken::new(g.access_token);
    let stateless = lab
        .client
        .issue_stateless_with_secret(&lab.channel(), &lab.secret())
        .await
        .unwrap()
        .access_token;
    // Another Login channel's token: the user token is not that
    // channel's, so LINE does not accept it.
    let other = lab
        .client
        .issue_stateless_with_secret(&native(), &ChannelSecret::new(NATIVE_SECRET))
        .await
        .unwrap()
        .access_token;
    assert!(matches!(
        login.deauthorize(&native(), &other, &user).await.unwrap(),
        Deauthorization::NotAccepted { .. }
    ));
    // A Messaging API channel's token, a user token, garbage: 401.
    let plain = ChannelId::new("1999999999");
    lab.sandbox
        .register_channel(plain.clone(), ChannelSecret::new("plain-secret"), vec![])
        .unwrap();
    let not_login = lab
        .client
        .issue_stateless_with_secret(&plain, &ChannelSecret::new("plain-secret"))
        .await
        .unwrap()
        .access_token;
    for bearer in [not_login, user.clone(), AccessToken::new("garbage")] {
        let err = login
            .deauthorize(&lab.channel(), &bearer, &user)
            .await
            .unwrap_err();
        assert!(
            matches!(err, LineError::Permanent { status, .. } if status == 401),
            "{err}"
        );
    }
    assert!(login.verify(&user).await.unwrap().is_valid());

    let done = login
        .deauthorize(&lab.channel(), &stateless, &user)
        .await
        .unwrap();
    assert_eq!(done, Deauthorization::Deauthorized);
    match login
        .deauthorize(&lab.channel(), &stateless, &user)
        .await
        .unwrap()
    {
        Deauthorization::NotAccepted { description, .. } => {
            assert_eq!(description.as_deref(), Some("invalid token"));
        }
        other => panic!("{other:?}"),
    }
    assert!(!login.verify(&user).await.unwrap().is_valid());
    let err = login
        .refresh(
            &lab.channel(),
            Some(&lab.secret()),
            &RefreshToken::new(g.refresh_token),
        )
        .await
        .unwrap_err();
    assert!(err.is_invalid_grant(), "{err}");
    assert_eq!(
        lab.sandbox.login_grants(&lab.channel())[0].state,
        GrantState::Deauthorized
    );

    // A v2.1 channel token of the Login channel works too.
    let v21 = lab
        .client
        .issue_v21(&lab.signer, chrono::Duration::days(1))
        .await
        .unwrap()
        .access_token;
    let g2 = lab.sandbox.login(&lab.channel(), "U2", "profile").unwrap();
    let done = login
        .deauthorize(&lab.channel(), &v21, &AccessToken::new(g2.access_token))
        .await
        .unwrap();
    assert_eq!(done, Deauthorization::Deauthorized);
}

#[tokio::test]
async fn channel_tokens_keep_their_endpoints_on_the_shared_paths() {
    let (lab, _login) = lab().await;
    let issued = lab
        .client
        .issue_v21(&lab.signer, chrono::Duration::days(1))
        .await
        .unwrap();
    match lab.client.verify_v21(&issued.access_token).await.unwrap() {
        Verification::Valid(v) => assert_eq!(v.client_id, lab.channel()),
        other => panic!("{other:?}"),
    }
    lab.client
        .revoke_v21(&lab.channel(), &lab.secret(), &issued.access_token)
        .await
        .unwrap();
    assert!(
        !lab.client
            .verify_v21(&issued.access_token)
            .await
            .unwrap()
            .is_valid()
    );
    assert!(lab.sandbox.live_tokens(&lab.channel()).is_empty());
    assert!(lab.sandbox.login_grants(&lab.channel()).is_empty());
}

#[tokio::test]
async fn fault_rules_apply_to_the_login_endpoints() {
    let (lab, login) = lab().await;
    let g = lab.sandbox.login(&native(), "U1", "profile").unwrap();
    let refresh = RefreshToken::new(g.refresh_token);
    let user = AccessToken::new(g.access_token);
    let stateless = lab
        .client
        .issue_stateless_with_secret(&native(), &ChannelSecret::new(NATIVE_SECRET))
        .await
        .unwrap()
        .access_token;
    let faults = json!({
        "endpoints": {
            "/oauth2/v2.1/token": {"rate_limit_rate": 1.0, "retry_after_secs": 9},
            "/user/v1/deauthorize": {"error_rate": 1.0},
        }
    });
    let response = reqwest::Client::new()
        .put(format!("{}/_sandbox/faults", lab.base_url))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);

    let err = login.refresh(&native(), None, &refresh).await.unwrap_err();
    assert!(err.is_rate_limited(), "{err}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(9)));
    let err = login
        .deauthorize(&native(), &stateless, &user)
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
    // Nothing happened behind the faults.
    let grant = &lab.sandbox.login_grants(&native())[0];
    assert_eq!(grant.refreshes, 0);
    assert_eq!(grant.state, GrantState::Active);

    // A dropped answer after LINE acted: the rotation happened, the client
    // may not treat it as nothing.
    lab.sandbox
        .set_faults(
            serde_json::from_value(json!({
                "endpoints": {"/oauth2/v2.1/token": {"drop_after_rate": 1.0}}
            }))
            .unwrap(),
        )
        .unwrap();
    let err = login.refresh(&native(), None, &refresh).await.unwrap_err();
    assert!(err.may_have_issued(), "{err}");
    lab.sandbox.set_faults(Default::default()).unwrap();
    let err = login.refresh(&native(), None, &refresh).await.unwrap_err();
    assert!(err.is_invalid_grant(), "the old one was rotated out: {err}");
    assert_eq!(lab.sandbox.login_grants(&native())[0].refreshes, 1);
}

#[tokio::test]
async fn the_config_file_registers_login_channels() {
    let config = SandboxConfig::parse(
        "[[login_channels]]\nid = \"1660000009\"\nsecret = \"s\"\napp_type = \"native\"\n",
        std::path::Path::new("."),
    )
    .unwrap();
    let clock = support::manual_clock();
    let sandbox = linetokd::sandbox::Sandbox::new(config, std::sync::Arc::new(clock)).unwrap();
    let channel = ChannelId::new("1660000009");
    assert!(sandbox.has_login_channel(&channel));
    assert!(
        sandbox.has_channel(&channel),
        "its secret issues channel tokens"
    );
    let g = sandbox.login(&channel, "U1", "profile").unwrap();
    assert_eq!(
        sandbox.login_grants(&channel)[0].refresh_token,
        g.refresh_token
    );
    // Another secret for a channel already registered is refused.
    let err = sandbox
        .register_login_channel(LoginChannelConfig {
            id: ChannelId::new(LAB_CHANNEL),
            secret: ChannelSecret::new("x"),
            app_type: LoginAppType::Web,
            rotate_refresh_tokens: false,
        })
        .and_then(|()| {
            sandbox.register_login_channel(LoginChannelConfig {
                id: ChannelId::new(LAB_CHANNEL),
                secret: ChannelSecret::new(LAB_SECRET),
                app_type: LoginAppType::Web,
                rotate_refresh_tokens: false,
            })
        })
        .unwrap_err();
    assert!(err.to_string().contains("another secret"), "{err}");
}
