//! The token values free text is screened against (docs/design.md
//! invariant 5): every value the store holds, kept in memory as keyed
//! hashes, never in the clear and never on disk.
//!
//! A stored value is made of LINE's token characters, so it can only sit
//! inside a run of them at least as long as itself. [`Screen::holds`]
//! hashes every window of such a run that has the length of some stored
//! value and looks it up; texts the engine writes on every issue ("expires
//! at 2026-…") have short runs and cost one pass over their characters.
//! A value with other characters (none LINE issues today) is kept whole
//! and searched for directly.
//!
//! The set only grows while the store is open: a value added by a
//! transaction that then rolled back stays in it, which only means a text
//! holding that value (which LINE may well have issued) is withheld too.
//! The hash key is random per store, so the hashes say nothing outside
//! this process. A false match (two different windows with one 64-bit
//! hash) withholds a harmless text; it never lets a value through.
//!
//! Before schema-neutral screening the values lived in a SQLite temporary
//! table on the writer's connection, which PostgreSQL's pooled connections
//! cannot share, at about 470 bytes per group; the hashes take about 20.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashSet};
use std::hash::BuildHasher as _;
use std::sync::{Mutex, PoisonError};

use crate::domain::is_line_char;

/// The screening set of one store.
#[derive(Debug, Default)]
pub struct Screen {
    set: Mutex<Set>,
}

#[derive(Debug, Default)]
struct Set {
    key: RandomState,
    /// Per value length, the hashes of the values of that length.
    by_len: BTreeMap<usize, HashSet<u64>>,
    /// Values with a character outside LINE's set, kept whole.
    odd: Vec<Box<str>>,
}

impl Screen {
    /// Adds a stored value.
    pub fn remember(&self, value: &str) {
        if value.is_empty() {
            return;
        }
        let mut set = self.set.lock().unwrap_or_else(PoisonError::into_inner);
        if value.chars().all(is_line_char) {
            let hash = set.key.hash_one(value.as_bytes());
            set.by_len.entry(value.len()).or_default().insert(hash);
        } else if !set.odd.iter().any(|v| &**v == value) {
            set.odd.push(value.into());
        }
    }

    /// Whether `text` contains any value remembered.
    pub fn holds(&self, text: &str) -> bool {
        let set = self.set.lock().unwrap_or_else(PoisonError::into_inner);
        if set.odd.iter().any(|v| text.contains(&**v)) {
            return true;
        }
        let Some(shortest) = set.by_len.keys().next().copied() else {
            return false;
        };
        // LINE's characters are ASCII, so a run's byte offsets are
        // character boundaries.
        text.split(|c: char| !is_line_char(c))
            .filter(|run| run.len() >= shortest)
            .any(|run| {
                set.by_len.range(..=run.len()).any(|(&len, hashes)| {
                    run.as_bytes()
                        .windows(len)
                        .any(|window| hashes.contains(&set.key.hash_one(window)))
                })
            })
    }

    /// How many values are remembered.
    pub fn len(&self) -> usize {
        let set = self.set.lock().unwrap_or_else(PoisonError::into_inner);
        set.by_len.values().map(HashSet::len).sum::<usize>() + set.odd.len()
    }

    /// True when no value is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_value_anywhere_in_a_run_and_nothing_else() {
        let screen = Screen::default();
        assert!(!screen.holds("anything at all"));
        let value = "eyJhbGciOiJIUzI1NiJ9.abc-DEF_ghi~jkl+mno/pqr=";
        screen.remember(value);
        screen.remember("short1");
        assert_eq!(screen.len(), 2);
        assert!(screen.holds(value));
        assert!(screen.holds(&format!("error: token {value} refused")));
        // Inside a longer run of LINE characters, at either end.
        assert!(screen.holds(&format!("Bearer=xx{value}yy")));
        assert!(screen.holds("id short1."));
        assert!(!screen.holds(&value[..value.len() - 1]));
        assert!(!screen.holds("short2 shor t1"));
        // Split by a character LINE never uses: not the value.
        let (a, b) = value.split_at(10);
        assert!(!screen.holds(&format!("{a} {b}")));
    }

    #[test]
    fn values_with_other_characters_are_searched_whole() {
        let screen = Screen::default();
        screen.remember("odd value with spaces");
        screen.remember("odd value with spaces");
        assert_eq!(screen.len(), 1);
        assert!(screen.holds("x odd value with spaces y"));
        assert!(!screen.holds("odd value"));
    }
}
