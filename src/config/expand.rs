//! `${NAME}` in path values, expanded from the environment at load.
//!
//! systemd's `LoadCredential=` puts secrets in a directory it names in
//! `$CREDENTIALS_DIRECTORY`, which differs per boot, so a config file says
//! `key_file = "${CREDENTIALS_DIRECTORY}/shop-bot.pem"`. Any variable works
//! the same way (`${STATE_DIRECTORY}`, `${RUNTIME_DIRECTORY}`), in path
//! values only: a hook's argv is passed as written. A lone `$` is kept as
//! is; `$${` writes a literal `${`.
//!
//! The environment is a parameter, never read here, so tests pass their own.

use std::collections::HashMap;

/// Replaces every `${NAME}` in `text` with `env[NAME]`.
///
/// # Errors
///
/// A sentence fragment (to follow the key) naming the first variable that is
/// unset, or an unclosed or malformed `${`.
pub fn expand(text: &str, env: &HashMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(literal) = after.strip_prefix("${") {
            out.push_str("${");
            rest = literal;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err(format!("{text:?} has a \"${{\" without a closing \"}}\""));
            };
            let name = &body[..end];
            if !is_variable_name(name) {
                return Err(format!(
                    "{text:?} has \"${{{name}}}\", which is not a variable name (letters, digits, _)"
                ));
            }
            let Some(value) = env.get(name) else {
                return Err(format!(
                    "{text:?} uses ${{{name}}}, which is not set in the environment{}",
                    hint(name)
                ));
            };
            out.push_str(value);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn hint(name: &str) -> &'static str {
    if name == "CREDENTIALS_DIRECTORY" {
        " (systemd sets it for units with LoadCredential=; elsewhere set it yourself, e.g. to /run/secrets)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn expands_variables_and_keeps_other_dollars() {
        let e = env(&[("CREDENTIALS_DIRECTORY", "/run/credentials/linetokd.service")]);
        assert_eq!(
            expand("${CREDENTIALS_DIRECTORY}/shop-bot.pem", &e).unwrap(),
            "/run/credentials/linetokd.service/shop-bot.pem"
        );
        assert_eq!(expand("/a/$b/c$", &e).unwrap(), "/a/$b/c$");
        assert_eq!(expand("/a/$${X}", &e).unwrap(), "/a/${X}");
        assert_eq!(expand("/plain/path", &e).unwrap(), "/plain/path");
    }

    #[test]
    fn unset_or_malformed_variables_are_errors() {
        let e = env(&[]);
        let err = expand("${CREDENTIALS_DIRECTORY}/k.pem", &e).unwrap_err();
        assert!(
            err.contains("${CREDENTIALS_DIRECTORY}, which is not set"),
            "{err}"
        );
        assert!(err.contains("LoadCredential"), "{err}");
        assert!(
            expand("${OPEN/k.pem", &e)
                .unwrap_err()
                .contains("without a closing")
        );
        assert!(
            expand("${1X}/k", &e)
                .unwrap_err()
                .contains("not a variable name")
        );
        assert!(
            expand("${}/k", &e)
                .unwrap_err()
                .contains("not a variable name")
        );
    }
}
