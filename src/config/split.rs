//! A config file's text cut into its `[[channel]]` entries and the rest, so
//! that each entry parses on its own.
//!
//! Why: the `toml` crate lexes a whole document into a token vector and
//! builds a table of all of it before deserializing (about 2.2 KB per group
//! at its peak, 220 MB for 100,000 groups), and the allocator keeps what a
//! daemon frees. Parsed one entry at a time, the peak is one channel's.
//!
//! The cut is made with the `toml_parser` lexer, so strings, comments and
//! multi-line values are read as TOML reads them: a table header is a `[`
//! at the start of a line outside any value. A `[[channel]]` header starts
//! an entry, and every `[channel.…]` or `[[channel.…]]` header after it
//! belongs to that entry (TOML puts them in the last `[[channel]]`); any
//! other header starts a section of the rest. A file in another shape (a
//! `[channel]` table, `channel.…` before any `[[channel]]`, a quoted key with
//! escapes in a header) is not cut: [`Parts::of`] answers `None` and the
//! caller parses the whole text. The caller also parses the whole text when
//! any part fails, so every error is reported as in the whole file.

use toml_parser::Source;
use toml_parser::lexer::TokenKind;

/// The file's `[[channel]]` entries and everything else, in file order.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Parts<'a> {
    /// Every section that is not part of a `[[channel]]` entry, with the
    /// keys before the first header, joined in file order.
    pub rest: String,
    /// Each `[[channel]]` entry's text, from its header to the next header
    /// that is not a `channel.…` one.
    pub channels: Vec<&'a str>,
}

/// A table header: whether it is an array of tables (`[[…]]`), and its
/// key's parts.
struct Header {
    array: bool,
    key: Vec<String>,
}

enum Owner {
    Rest,
    Channel,
}

impl<'a> Parts<'a> {
    /// Cuts `text`, or `None` when it is not in the shape described in the
    /// module's documentation (or is not valid TOML where the cut looks).
    pub fn of(text: &'a str) -> Option<Self> {
        let mut parts = Parts {
            rest: String::new(),
            channels: Vec::new(),
        };
        let source = Source::new(text);
        let mut tokens = source.lex().peekable();
        let mut depth = 0_usize;
        let mut line_start = true;
        let mut owner = Owner::Rest;
        let mut from = 0;
        while let Some(token) = tokens.next() {
            let kind = token.kind();
            if kind == TokenKind::LeftSquareBracket && line_start && depth == 0 {
                let at = token.span().start();
                let header = Header::read(&source, &mut tokens)?;
                let next = header.owner(&owner)?;
                // A `channel.…` header goes on with the current entry;
                // any other ends the section before it.
                if !matches!(next, Start::Continue) {
                    let section = text.get(from..at)?;
                    match owner {
                        Owner::Rest => parts.rest.push_str(section),
                        Owner::Channel => parts.channels.push(section),
                    }
                    from = at;
                }
                owner = match next {
                    Start::Entry | Start::Continue => Owner::Channel,
                    Start::Rest => Owner::Rest,
                };
                line_start = true;
                continue;
            }
            match kind {
                TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => depth += 1,
                TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => {
                    depth = depth.checked_sub(1)?;
                }
                _ => {}
            }
            line_start = match kind {
                TokenKind::Newline => true,
                TokenKind::Whitespace => line_start,
                _ => false,
            };
        }
        let last = text.get(from..)?;
        match owner {
            Owner::Rest => parts.rest.push_str(last),
            Owner::Channel => parts.channels.push(last),
        }
        Some(parts)
    }
}

/// What a header does to the cut.
enum Start {
    /// `[[channel]]`: a new entry.
    Entry,
    /// `[channel.…]` or `[[channel.…]]`: more of the current entry.
    Continue,
    /// Any other header: a section of the rest.
    Rest,
}

impl Header {
    /// Reads a header after its first `[`, up to its line's end.
    fn read(
        source: &Source<'_>,
        tokens: &mut impl Iterator<Item = toml_parser::lexer::Token>,
    ) -> Option<Self> {
        let mut array = false;
        let mut key = Vec::new();
        let mut closed = 0;
        let mut opened = 1;
        for token in tokens.by_ref() {
            let raw = source.get(token.span())?.as_str();
            match token.kind() {
                TokenKind::LeftSquareBracket if key.is_empty() && opened == 1 => {
                    array = true;
                    opened = 2;
                }
                TokenKind::Whitespace | TokenKind::Dot if closed == 0 => {}
                TokenKind::Atom if closed == 0 => key.push(raw.to_owned()),
                TokenKind::BasicString | TokenKind::LiteralString if closed == 0 => {
                    // A quoted key part; one with escapes is left to the
                    // whole-file parse rather than decoded here.
                    let inner = raw.get(1..raw.len().checked_sub(1)?)?;
                    if inner.contains('\\') {
                        return None;
                    }
                    key.push(inner.to_owned());
                }
                TokenKind::RightSquareBracket if closed < opened => closed += 1,
                TokenKind::Whitespace | TokenKind::Comment if closed == opened => {}
                TokenKind::Newline | TokenKind::Eof if closed == opened => break,
                _ => return None,
            }
        }
        (closed == opened && !key.is_empty()).then_some(Header { array, key })
    }

    /// Where this header starts, given what the cut is in: `None` for a
    /// shape the cut does not handle.
    fn owner(&self, current: &Owner) -> Option<Start> {
        if self.key[0] != "channel" {
            return Some(Start::Rest);
        }
        match (self.array, self.key.len(), current) {
            (true, 1, _) => Some(Start::Entry),
            (_, 2.., Owner::Channel) => Some(Start::Continue),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_cut_at_their_headers_and_the_rest_joined() {
        let text = "[daemon]\nstate_dir = \"/x\"\n\
                    [[channel]]\nid = \"1\"\n[[channel.group]]\nname = \"a\"\n\
                    [alerts]\nx = 1\n\
                    [[channel]]\nid = \"2\"\n  [[ channel . group ]] # c\nname = \"b\"\n";
        let parts = Parts::of(text).unwrap();
        assert_eq!(
            parts.rest,
            "[daemon]\nstate_dir = \"/x\"\n[alerts]\nx = 1\n"
        );
        assert_eq!(
            parts.channels,
            [
                "[[channel]]\nid = \"1\"\n[[channel.group]]\nname = \"a\"\n",
                "[[channel]]\nid = \"2\"\n  [[ channel . group ]] # c\nname = \"b\"\n"
            ]
        );
    }

    #[test]
    fn brackets_inside_values_strings_and_comments_are_not_headers() {
        let text = "[[channel]]\nid = \"1\"\nx = [\n[[1]],\n]\n\
                    s = \"\"\"\n[[channel]]\n\"\"\"\n# [[channel]]\n\
                    t = { a = [\n1] }\n[[channel]]\nid = '2'\n";
        let parts = Parts::of(text).unwrap();
        assert_eq!(parts.rest, "");
        assert_eq!(parts.channels.len(), 2);
        assert!(parts.channels[1].starts_with("[[channel]]\nid = '2'"));
    }

    #[test]
    fn quoted_keys_count_as_bare_ones() {
        let parts = Parts::of("[[\"channel\"]]\nid = \"1\"\n['channel'.group]\n").unwrap();
        assert_eq!(parts.channels.len(), 1);
        assert_eq!(parts.rest, "");
    }

    #[test]
    fn other_shapes_are_not_cut() {
        for text in [
            "[channel]\nid = \"1\"\n",
            "[channel.group]\nname = \"a\"\n",
            "[[\"chan\\u006eel\"]]\n",
            "[[channel]\n",
            "x = ]\n",
        ] {
            assert_eq!(Parts::of(text), None, "{text:?}");
        }
    }
}
