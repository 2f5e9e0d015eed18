//! The client against LINE's official contract: the OpenAPI file
//! `channel-access-token.yml` of LINE's public `line/line-openapi`
//! repository. The tests find it through the `LINE_OPENAPI_FILE`
//! environment variable, else at `../shared/line-openapi/` beside the
//! repository; where neither exists they print how to get it and pass
//! without checking (CI, `.ci/run`, sets the variable and refuses to run
//! without the file, so there they always check).
//!
//! Client side: a recording mock answers every operation with the 200
//! example the contract itself gives, and every request the client sends is
//! checked against the file: the path and method exist, every query and
//! form key is a declared parameter or property (snake_case, exactly), every
//! required one is sent, enum values are allowed ones, GETs carry no body,
//! POSTs a form, and nothing carries an `Authorization` header. Every client
//! call must also read the contract's example answer.
//!
//! Sandbox side: every operation is called on the real sandbox with
//! requests that themselves pass the client-side check, and every 200 answer
//! must be exactly what the contract's schema defines (every field declared,
//! with its type, every required one present; revoke's body empty); error
//! answers must be one of LINE's two shapes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use linetokd::clock::Clock as _;
use linetokd::domain::{AccessToken, ChannelId, ChannelSecret};
use linetokd::line::jwt::CLIENT_ASSERTION_TYPE;
use linetokd::line::{Endpoint, LineClient, Verification};
use serde_yaml_ng::Value;

use crate::support::{self, LAB_CHANNEL, LAB_SECRET, Mock, Reply, SandboxLab, Seen};

/// The environment variable naming LINE's OpenAPI file.
pub const OPENAPI_FILE_VAR: &str = "LINE_OPENAPI_FILE";

/// LINE's OpenAPI file, parsed.
pub struct Contract {
    doc: Value,
}

/// A request body or response schema, flattened: its properties and which
/// are required.
#[derive(Debug, Clone)]
pub struct Schema {
    /// Its name under `components/schemas`, when it came from a `$ref`.
    pub name: Option<String>,
    /// Property name to property definition.
    pub properties: BTreeMap<String, Value>,
    /// Required property names.
    pub required: BTreeSet<String>,
}

impl Contract {
    /// Reads LINE's OpenAPI file from `LINE_OPENAPI_FILE`, else from
    /// `../shared/line-openapi/` beside the repository. `None`, after one
    /// printed line saying how to get the file, where neither exists: the
    /// caller skips its checks. A path that is set but unreadable or a file
    /// that does not parse is a failure, not a skip.
    pub fn load() -> Option<Self> {
        let path = match std::env::var_os(OPENAPI_FILE_VAR) {
            Some(path) => PathBuf::from(path),
            None => {
                let beside = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../shared/line-openapi/channel-access-token.yml");
                if !beside.exists() {
                    println!(
                        "skipping the contract checks: no LINE OpenAPI file; get \
                         channel-access-token.yml from LINE's public line/line-openapi \
                         repository and set {OPENAPI_FILE_VAR}=/path/to/channel-access-token.yml"
                    );
                    return None;
                }
                beside
            }
        };
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} ({OPENAPI_FILE_VAR} or ../shared/line-openapi/ names LINE's OpenAPI file)",
                path.display()
            )
        });
        let doc = serde_yaml_ng::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
        Some(Self { doc })
    }

    /// Every `(METHOD, path, operationId)` the file defines.
    pub fn operations(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for (path, item) in self.doc["paths"].as_mapping().unwrap() {
            for (method, op) in item.as_mapping().unwrap() {
                out.push((
                    method.as_str().unwrap().to_uppercase(),
                    path.as_str().unwrap().to_owned(),
                    op["operationId"].as_str().unwrap().to_owned(),
                ));
            }
        }
        out
    }

    /// The operation at `method` `path`, if the file defines it.
    pub fn operation(&self, method: &str, path: &str) -> Option<&Value> {
        self.doc["paths"]
            .get(path)?
            .get(method.to_lowercase().as_str())
    }

    /// Follows a local `$ref`, returning the target and its schema name.
    fn resolve<'a>(&'a self, value: &'a Value) -> (&'a Value, Option<String>) {
        match value.get("$ref").and_then(Value::as_str) {
            Some(reference) => {
                let name = reference.strip_prefix("#/components/schemas/").unwrap();
                (
                    &self.doc["components"]["schemas"][name],
                    Some(name.to_owned()),
                )
            }
            None => (value, None),
        }
    }

    fn schema(&self, value: &Value) -> Schema {
        let (schema, name) = self.resolve(value);
        let properties = schema
            .get("properties")
            .and_then(Value::as_mapping)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.as_str().unwrap().to_owned(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let required = schema
            .get("required")
            .and_then(Value::as_sequence)
            .map(|s| s.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        Schema {
            name,
            properties,
            required,
        }
    }

    /// The query parameters of an operation: name to required.
    pub fn query_parameters(&self, op: &Value) -> BTreeMap<String, bool> {
        op.get("parameters")
            .and_then(Value::as_sequence)
            .map(|params| {
                params
                    .iter()
                    .filter(|p| p["in"].as_str() == Some("query"))
                    .map(|p| {
                        (
                            p["name"].as_str().unwrap().to_owned(),
                            p["required"].as_bool().unwrap_or(false),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The form body schemas an operation accepts (several for `oneOf`).
    pub fn form_schemas(&self, op: &Value) -> Vec<Schema> {
        let Some(schema) = op
            .get("requestBody")
            .and_then(|b| b["content"].get("application/x-www-form-urlencoded"))
            .map(|c| &c["schema"])
        else {
            return Vec::new();
        };
        match schema.get("oneOf").and_then(Value::as_sequence) {
            Some(alternatives) => alternatives.iter().map(|a| self.schema(a)).collect(),
            None => vec![self.schema(schema)],
        }
    }

    /// The JSON schema of an operation's 200 answer, if it has a body.
    pub fn ok_schema(&self, op: &Value) -> Option<Schema> {
        let schema = op["responses"]["200"]
            .get("content")?
            .get("application/json")?
            .get("schema")?;
        Some(self.schema(schema))
    }

    /// The example of an operation's 200 answer, as JSON.
    pub fn ok_example(&self, op: &Value) -> Option<serde_json::Value> {
        let example = op["responses"]["200"]
            .get("content")?
            .get("application/json")?
            .get("example")?;
        Some(serde_json::to_value(example).unwrap())
    }
}

/// Returns `Err(message)` from the enclosing function unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($message:tt)+) => {
        if !$cond {
            return Err(format!($($message)+));
        }
    };
}

/// Checks that a property value sent in a request fits its definition.
fn check_value(what: &str, key: &str, value: &str, property: &Value) -> Result<(), String> {
    ensure!(!value.is_empty(), "{what}: `{key}` sent empty");
    if let Some(allowed) = property.get("enum").and_then(Value::as_sequence) {
        ensure!(
            allowed.iter().any(|a| a.as_str() == Some(value)),
            "{what}: `{key}` = {value:?} is not one of {allowed:?}"
        );
    }
    Ok(())
}

/// Checks one recorded request against the contract; returns the name of
/// the form schema it matched, if it sent a form.
fn check_request(contract: &Contract, seen: &Seen) -> Result<Option<String>, String> {
    let what = format!("{} {}", seen.method, seen.path);
    let Some(op) = contract.operation(&seen.method, &seen.path) else {
        return Err(format!("{what}: not an operation of the contract"));
    };
    ensure!(!seen.authorization, "{what}: sends an Authorization header");

    // Query: only declared keys, every required one, each once, none empty.
    let declared = contract.query_parameters(op);
    let sent: Vec<&str> = seen.query.iter().map(|(k, _)| k.as_str()).collect();
    let unique: BTreeSet<&str> = sent.iter().copied().collect();
    ensure!(
        unique.len() == sent.len(),
        "{what}: a query key sent twice: {sent:?}"
    );
    for key in &sent {
        ensure!(
            declared.contains_key(*key),
            "{what}: query key `{key}` is not declared"
        );
    }
    for (key, required) in &declared {
        ensure!(
            !*required || unique.contains(key.as_str()),
            "{what}: required query key `{key}` not sent"
        );
    }
    for (key, value) in &seen.query {
        ensure!(!value.is_empty(), "{what}: `{key}` sent empty");
    }

    let alternatives = contract.form_schemas(op);
    if alternatives.is_empty() {
        ensure!(seen.method == "GET", "{what}: has no form body schema");
        ensure!(
            seen.form.is_empty(),
            "{what}: sends a body the contract does not define"
        );
        return Ok(None);
    }
    ensure!(
        seen.content_type.as_deref() == Some("application/x-www-form-urlencoded"),
        "{what}: content type {:?} is not a form",
        seen.content_type
    );
    ensure!(
        seen.query.is_empty(),
        "{what}: sends a query string besides its form"
    );
    let keys: Vec<&str> = seen.form.iter().map(|(k, _)| k.as_str()).collect();
    let key_set: BTreeSet<&str> = keys.iter().copied().collect();
    ensure!(
        key_set.len() == keys.len(),
        "{what}: a form key sent twice: {keys:?}"
    );
    let matching: Vec<&Schema> = alternatives
        .iter()
        .filter(|schema| {
            key_set.iter().all(|k| schema.properties.contains_key(*k))
                && schema.required.iter().all(|r| key_set.contains(r.as_str()))
        })
        .collect();
    ensure!(
        matching.len() == 1,
        "{what}: form keys {keys:?} must match exactly one of {alternatives:?}"
    );
    let schema = matching[0];
    for (key, value) in &seen.form {
        check_value(&what, key, value, &schema.properties[key])?;
    }
    Ok(Some(schema.name.clone().unwrap_or_else(|| "inline".into())))
}

/// Checks a JSON value against a property definition's `type` (and int32
/// range, and array item type).
fn check_type(
    what: &str,
    key: &str,
    value: &serde_json::Value,
    property: &Value,
) -> Result<(), String> {
    match property["type"].as_str() {
        Some("string") => ensure!(
            value.is_string(),
            "{what}: `{key}` is not a string: {value}"
        ),
        Some("integer") => {
            ensure!(value.is_i64(), "{what}: `{key}` is not an integer: {value}");
            if property["format"].as_str() == Some("int32") {
                ensure!(
                    value.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
                    "{what}: `{key}` exceeds int32: {value}"
                );
            }
        }
        Some("array") => {
            let Some(items) = value.as_array() else {
                return Err(format!("{what}: `{key}` is not an array: {value}"));
            };
            for item in items {
                check_type(what, key, item, &property["items"])?;
            }
        }
        other => {
            return Err(format!(
                "{what}: `{key}` has a type the checker does not know: {other:?}"
            ));
        }
    }
    Ok(())
}

/// Checks a 200 answer of `method` `path` against its schema: a JSON object
/// whose every field is declared, with its declared type, and every
/// required field present. An operation without an answer schema (revoke)
/// must answer with an empty body.
fn check_answer(contract: &Contract, method: &str, path: &str, body: &[u8]) -> Result<(), String> {
    let what = format!("answer of {method} {path}");
    let Some(op) = contract.operation(method, path) else {
        return Err(format!("{what}: not an operation of the contract"));
    };
    let Some(schema) = contract.ok_schema(op) else {
        ensure!(
            body.is_empty(),
            "{what}: the contract defines no body, got {} bytes",
            body.len()
        );
        return Ok(());
    };
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("{what}: not JSON: {e}"))?;
    let Some(object) = json.as_object() else {
        return Err(format!("{what}: not a JSON object"));
    };
    for (key, value) in object {
        let Some(property) = schema.properties.get(key) else {
            return Err(format!(
                "{what}: field `{key}` is not declared in {:?}",
                schema.name
            ));
        };
        check_type(&what, key, value, property)?;
    }
    for key in &schema.required {
        ensure!(
            object.contains_key(key),
            "{what}: required field `{key}` is missing"
        );
    }
    Ok(())
}

#[test]
fn every_endpoint_is_an_operation_of_the_contract_and_back() {
    let Some(contract) = Contract::load() else {
        return;
    };
    for endpoint in Endpoint::ALL {
        let op = contract
            .operation(endpoint.method().as_str(), endpoint.path())
            .unwrap_or_else(|| panic!("{endpoint}: not in the contract"));
        assert_eq!(
            op["operationId"].as_str(),
            Some(endpoint.operation_id()),
            "{endpoint}"
        );
    }
    // And the client covers the whole file.
    for (method, path, operation_id) in contract.operations() {
        assert!(
            Endpoint::ALL.iter().any(|e| e.method().as_str() == method
                && e.path() == path
                && e.operation_id() == operation_id),
            "{method} {path} ({operation_id}) has no Endpoint"
        );
    }
}

#[tokio::test]
async fn every_request_the_client_sends_is_the_one_the_contract_defines() {
    let Some(contract) = Contract::load() else {
        return;
    };
    // Answer every operation with the contract's own 200 example (revoke:
    // the contract defines no body, so an empty one).
    let mut examples = BTreeMap::new();
    for (method, path, _) in contract.operations() {
        let op = contract.operation(&method, &path).unwrap();
        let reply = match contract.ok_example(op) {
            Some(example) => Reply::json(200, &example.to_string()),
            None => Reply::empty(200),
        };
        examples.insert((method, path), reply);
    }
    let mock = Mock::start(move |seen| {
        examples
            .get(&(seen.method.clone(), seen.path.clone()))
            .cloned()
            .unwrap_or_else(|| Reply::empty(404))
    })
    .await;
    let client: LineClient = support::line_client(
        &mock.base_url,
        &support::manual_clock(),
        Duration::from_secs(10),
    );
    let signer = support::signer("1234567890", "kid-1");
    let channel = ChannelId::new("1234567890");
    let secret = ChannelSecret::new("channel-secret");
    let token = AccessToken::new("eyJhbGciOiJIUz.token.sig");

    // Each call must read the contract's example answer.
    let issued = client
        .issue_v21(&signer, chrono::Duration::days(30))
        .await
        .unwrap();
    assert_eq!(issued.key_id.as_str(), "sDTOzw5wIfxxxxPEzcmeQA");
    assert!(matches!(
        client.verify_v21(&token).await.unwrap(),
        Verification::Valid(_)
    ));
    assert_eq!(client.valid_key_ids(&signer).await.unwrap().len(), 6);
    client.revoke_v21(&channel, &secret, &token).await.unwrap();
    client.issue_short_lived(&channel, &secret).await.unwrap();
    match client.verify_short_lived(&token).await.unwrap() {
        Verification::Valid(v) => assert_eq!(v.expires_in, 3_138_007_490),
        other => panic!("{other:?}"),
    }
    client.revoke_short_lived(&token).await.unwrap();
    assert_eq!(
        client
            .issue_stateless_with_assertion(&signer)
            .await
            .unwrap()
            .expires_in,
        899
    );
    client
        .issue_stateless_with_secret(&channel, &secret)
        .await
        .unwrap();

    let seen = mock.seen();
    assert_eq!(seen.len(), 9);
    let matched: Vec<Option<String>> = seen
        .iter()
        .map(|s| check_request(&contract, s).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    // The two stateless forms are the two `oneOf` alternatives, each whole.
    assert_eq!(
        matched[7].as_deref(),
        Some("IssueStatelessChannelTokenByJWTAssertionRequest")
    );
    assert_eq!(
        matched[8].as_deref(),
        Some("IssueStatelessChannelTokenByClientSecretRequest")
    );
    // Every operation of the file was exercised.
    let hit: BTreeSet<(String, String)> = seen
        .iter()
        .map(|s| (s.method.clone(), s.path.clone()))
        .collect();
    assert_eq!(hit.len(), contract.operations().len());
    // The credentials went where LINE expects them.
    assert_eq!(seen[1].param("access_token"), Some(token.expose()));
    assert_eq!(seen[3].param("client_secret"), Some(secret.expose()));
    assert_eq!(seen[3].param("access_token"), Some(token.expose()));
}

#[test]
fn the_contract_examples_pass_the_answer_checker_and_mistakes_do_not() {
    let Some(contract) = Contract::load() else {
        return;
    };
    for (method, path, _) in contract.operations() {
        let op = contract.operation(&method, &path).unwrap();
        let body = contract
            .ok_example(op)
            .map(|e| e.to_string())
            .unwrap_or_default();
        // Includes short-lived verify's expires_in beyond int32: int64 there.
        check_answer(&contract, &method, &path, body.as_bytes()).unwrap();
    }
    let issue = "/oauth2/v2.1/token";
    let wrong = [
        // camelCase, as an SDK typing once had it (docs/line-api.md 10.6).
        r#"{"accessToken":"t","expires_in":1,"token_type":"Bearer","key_id":"k"}"#,
        // key_id missing.
        r#"{"access_token":"t","expires_in":1,"token_type":"Bearer"}"#,
        // expires_in as a string.
        r#"{"access_token":"t","expires_in":"1","token_type":"Bearer","key_id":"k"}"#,
        // beyond int32.
        r#"{"access_token":"t","expires_in":3000000000,"token_type":"Bearer","key_id":"k"}"#,
    ];
    for body in wrong {
        assert!(
            check_answer(&contract, "POST", issue, body.as_bytes()).is_err(),
            "{body}"
        );
    }
    assert!(check_answer(&contract, "POST", "/oauth2/v2.1/revoke", b"{}").is_err());
}

#[test]
fn the_checker_catches_what_the_sdks_got_wrong() {
    // The camelCase keys LINE's generated Go and Node SDKs once sent
    // (docs/line-api.md 10.1), and the empty assertion fields of 10.3, must fail.
    let Some(contract) = Contract::load() else {
        return;
    };
    let camel = Seen {
        method: "GET".into(),
        path: "/oauth2/v2.1/verify".into(),
        query: vec![("accessToken".into(), "t".into())],
        form: Vec::new(),
        content_type: None,
        authorization: false,
        ..Seen::default()
    };
    let empty_fields = Seen {
        method: "POST".into(),
        path: "/oauth2/v3/token".into(),
        query: Vec::new(),
        form: vec![
            ("grant_type".into(), "client_credentials".into()),
            ("client_id".into(), "1".into()),
            ("client_secret".into(), "s".into()),
            ("client_assertion_type".into(), String::new()),
            ("client_assertion".into(), String::new()),
        ],
        content_type: Some("application/x-www-form-urlencoded".into()),
        authorization: false,
        ..Seen::default()
    };
    let camel = check_request(&contract, &camel).unwrap_err();
    assert!(camel.contains("`accessToken` is not declared"), "{camel}");
    let empty = check_request(&contract, &empty_fields).unwrap_err();
    assert!(empty.contains("must match exactly one"), "{empty}");
}

/// Checks an error answer's body: `{"error", "error_description"}` (the
/// contract's `ErrorResponse`, fields optional but not both absent) or
/// `{"message"}`, nothing else.
fn check_error_answer(contract: &Contract, what: &str, body: &[u8]) -> Result<(), String> {
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("{what}: error body is not JSON: {e}"))?;
    let Some(object) = json.as_object() else {
        return Err(format!("{what}: error body is not an object"));
    };
    let error_response = contract.schema(&contract.doc["components"]["schemas"]["ErrorResponse"]);
    let oauth = !object.is_empty()
        && object
            .iter()
            .all(|(k, v)| error_response.properties.contains_key(k) && v.is_string());
    let message = object.len() == 1
        && object
            .get("message")
            .is_some_and(serde_json::Value::is_string);
    ensure!(
        oauth || message,
        "{what}: error body in neither of LINE's shapes: {json}"
    );
    Ok(())
}

/// Sends one request to the sandbox after checking it against the contract
/// itself; returns the status and body.
async fn call(
    contract: &Contract,
    lab: &SandboxLab,
    method: &str,
    path: &str,
    params: &[(&str, String)],
) -> (u16, Vec<u8>) {
    let pairs: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let get = method == "GET";
    let seen = Seen {
        method: method.to_owned(),
        path: path.to_owned(),
        query: if get { pairs.clone() } else { Vec::new() },
        form: if get { Vec::new() } else { pairs.clone() },
        content_type: (!get).then(|| "application/x-www-form-urlencoded".to_owned()),
        authorization: false,
        ..Seen::default()
    };
    check_request(contract, &seen).unwrap_or_else(|e| panic!("the test's own request: {e}"));
    let http = reqwest::Client::new();
    let url = format!("{}{path}", lab.base_url);
    let request = if get {
        http.get(url).query(&pairs)
    } else {
        http.post(url).form(&pairs)
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    assert!(
        response.headers().contains_key("x-line-request-id"),
        "{method} {path}: no X-Line-Request-Id"
    );
    (status, response.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn every_answer_the_sandbox_gives_is_the_one_the_contract_defines() {
    let Some(contract) = Contract::load() else {
        return;
    };
    let lab = support::sandbox_lab().await;
    let now = lab.clock.now();
    let issue_assertion = lab
        .signer
        .sign(now, Some(chrono::Duration::days(30)))
        .unwrap();
    let plain_assertion = lab.signer.sign(now, None).unwrap();
    let jwt_form = |assertion: &str| {
        vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_assertion_type", CLIENT_ASSERTION_TYPE.to_owned()),
            ("client_assertion", assertion.to_owned()),
        ]
    };
    let secret_form = || {
        vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", LAB_CHANNEL.to_owned()),
            ("client_secret", LAB_SECRET.to_owned()),
        ]
    };
    let ok = |what: &str, (status, body): (u16, Vec<u8>)| {
        assert_eq!(status, 200, "{what}: {}", String::from_utf8_lossy(&body));
        body
    };
    let token_of = |body: &[u8]| -> String {
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        json["access_token"].as_str().unwrap().to_owned()
    };
    let mut answers: Vec<(&str, &str, Vec<u8>)> = Vec::new();

    // v2.1
    let issued = ok(
        "issue",
        call(
            &contract,
            &lab,
            "POST",
            "/oauth2/v2.1/token",
            &jwt_form(&issue_assertion),
        )
        .await,
    );
    let v21 = token_of(&issued);
    answers.push(("POST", "/oauth2/v2.1/token", issued));
    let verified = ok(
        "verify",
        call(
            &contract,
            &lab,
            "GET",
            "/oauth2/v2.1/verify",
            &[("access_token", v21.clone())],
        )
        .await,
    );
    answers.push(("GET", "/oauth2/v2.1/verify", verified));
    let kid_query = vec![
        ("client_assertion_type", CLIENT_ASSERTION_TYPE.to_owned()),
        ("client_assertion", plain_assertion.clone()),
    ];
    let kids = ok(
        "kids",
        call(
            &contract,
            &lab,
            "GET",
            "/oauth2/v2.1/tokens/kid",
            &kid_query,
        )
        .await,
    );
    answers.push(("GET", "/oauth2/v2.1/tokens/kid", kids));
    let revoke_form = vec![
        ("client_id", LAB_CHANNEL.to_owned()),
        ("client_secret", LAB_SECRET.to_owned()),
        ("access_token", v21.clone()),
    ];
    let revoked = ok(
        "revoke",
        call(&contract, &lab, "POST", "/oauth2/v2.1/revoke", &revoke_form).await,
    );
    answers.push(("POST", "/oauth2/v2.1/revoke", revoked));

    // short-lived
    let short = ok(
        "short issue",
        call(
            &contract,
            &lab,
            "POST",
            "/v2/oauth/accessToken",
            &secret_form(),
        )
        .await,
    );
    let short_token = token_of(&short);
    answers.push(("POST", "/v2/oauth/accessToken", short));
    let verified = ok(
        "short verify",
        call(
            &contract,
            &lab,
            "POST",
            "/v2/oauth/verify",
            &[("access_token", short_token.clone())],
        )
        .await,
    );
    answers.push(("POST", "/v2/oauth/verify", verified));
    let revoked = ok(
        "short revoke",
        call(
            &contract,
            &lab,
            "POST",
            "/v2/oauth/revoke",
            &[("access_token", short_token.clone())],
        )
        .await,
    );
    answers.push(("POST", "/v2/oauth/revoke", revoked));

    // stateless, both forms
    let by_jwt = ok(
        "stateless jwt",
        call(
            &contract,
            &lab,
            "POST",
            "/oauth2/v3/token",
            &jwt_form(&plain_assertion),
        )
        .await,
    );
    answers.push(("POST", "/oauth2/v3/token", by_jwt));
    let by_secret = ok(
        "stateless secret",
        call(&contract, &lab, "POST", "/oauth2/v3/token", &secret_form()).await,
    );
    answers.push(("POST", "/oauth2/v3/token", by_secret));

    let operations: BTreeSet<(&str, &str)> = answers.iter().map(|(m, p, _)| (*m, *p)).collect();
    assert_eq!(
        operations.len(),
        contract.operations().len(),
        "every operation answered"
    );
    for (method, path, body) in &answers {
        check_answer(&contract, method, path, body).unwrap_or_else(|e| panic!("{e}"));
    }

    // Refusals: a dead token, a wrong secret, an unknown kid.
    let stranger = support::signer(LAB_CHANNEL, "kid-never-registered")
        .sign(now, None)
        .unwrap();
    let wrong_secret = vec![
        ("client_id", LAB_CHANNEL.to_owned()),
        ("client_secret", "wrong-secret".to_owned()),
        ("access_token", short_token.clone()),
    ];
    let refusals = [
        (
            "dead v2.1 token",
            call(
                &contract,
                &lab,
                "GET",
                "/oauth2/v2.1/verify",
                &[("access_token", v21.clone())],
            )
            .await,
            400,
        ),
        (
            "dead short-lived token",
            call(
                &contract,
                &lab,
                "POST",
                "/v2/oauth/verify",
                &[("access_token", short_token.clone())],
            )
            .await,
            400,
        ),
        (
            "wrong secret",
            call(
                &contract,
                &lab,
                "POST",
                "/oauth2/v2.1/revoke",
                &wrong_secret,
            )
            .await,
            400,
        ),
        (
            "unknown kid",
            call(
                &contract,
                &lab,
                "POST",
                "/oauth2/v3/token",
                &jwt_form(&stranger),
            )
            .await,
            404,
        ),
    ];
    for (what, (status, body), want) in refusals {
        assert_eq!(status, want, "{what}");
        check_error_answer(&contract, what, &body).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn the_error_checker_accepts_lines_two_shapes_only() {
    let Some(contract) = Contract::load() else {
        return;
    };
    for good in [
        r#"{"error":"invalid_client","error_description":"Invalid exp"}"#,
        r#"{"error":"invalid_request"}"#,
        r#"{"message":"Cannot find channel key that satisfies the conditions"}"#,
    ] {
        check_error_answer(&contract, good, good.as_bytes()).unwrap();
    }
    for bad in [
        r#"{}"#,
        r#"{"err":"x"}"#,
        r#"{"message":"x","error":"y"}"#,
        r#"{"error":5}"#,
        "<html/>",
    ] {
        assert!(
            check_error_answer(&contract, bad, bad.as_bytes()).is_err(),
            "{bad}"
        );
    }
}
