//! What can be wrong with a configuration, named by key.
//!
//! A [`Problem`] is one broken rule at one key (`channel[1].id "123"
//! duplicates channel[0].id`). Validation collects every problem before it
//! gives up, so an operator fixes the file in one pass; [`ConfigError`]
//! prints them one per line. No message ever carries the contents of a
//! secret file: problems name the file, its mode or its size, never what is
//! inside.

use std::fmt;
use std::path::PathBuf;

/// One broken rule, at one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where: a dotted key path such as `rotation.rotate_before`,
    /// `channel[0].group[2].name`, or an environment variable's name.
    pub key: String,
    /// What is wrong, as a sentence fragment that follows the key.
    pub message: String,
}

impl Problem {
    /// A problem at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.key, self.message)
    }
}

/// Why a configuration could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file itself could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },

    /// The file is not valid TOML, or a value has the wrong type, or a key
    /// is unknown. Serde stops at the first of these, so there is one.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The config file.
        path: PathBuf,
        /// The parser's complaint, naming the key where it knows it.
        message: String,
    },

    /// The file parsed but breaks one or more rules; every one is listed.
    #[error("{}", Problems(problems))]
    Invalid {
        /// Every broken rule, in file order.
        problems: Vec<Problem>,
    },

    /// A secret file (channel secret, API key) cannot be used. The message
    /// names the file and why, never its contents.
    #[error("secret file {}: {reason}", path.display())]
    Secret {
        /// The file.
        path: PathBuf,
        /// Why it cannot be used.
        reason: String,
    },
}

impl ConfigError {
    /// The individual problems: all of them for [`ConfigError::Invalid`],
    /// none for the other variants (which are one error each).
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Invalid { problems } => problems,
            _ => &[],
        }
    }
}

/// Prints one problem per line, with a count header when there are several.
struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [one] => write!(f, "{one}"),
            many => {
                write!(f, "{} problems in the configuration:", many.len())?;
                for p in many {
                    write!(f, "\n  {p}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_problem_is_one_line_and_many_are_one_per_line() {
        let one = ConfigError::Invalid {
            problems: vec![Problem::new("channel[0].kid", "is empty")],
        };
        assert_eq!(one.to_string(), "channel[0].kid is empty");
        let two = ConfigError::Invalid {
            problems: vec![
                Problem::new("rotation.max_issues_per_hour", "must be at least 1"),
                Problem::new("channel[0].kid", "is empty"),
            ],
        };
        assert_eq!(
            two.to_string(),
            "2 problems in the configuration:\n  rotation.max_issues_per_hour must be at least 1\n  channel[0].kid is empty"
        );
        assert_eq!(two.problems().len(), 2);
    }
}
