//! Configuration errors that name the file, the line and the key, as an operator needs
//! them at 3 a.m.

use std::ops::Range;
use std::path::{Path, PathBuf};

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read the configuration: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: `{key}`: {message}", path.display())]
    Invalid { path: PathBuf, line: usize, column: usize, key: String, message: String },
}

impl ConfigError {
    /// A stable label for logs and metrics.
    pub fn as_label(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "read",
            ConfigError::Invalid { .. } => "invalid",
        }
    }
}

/// The text being parsed, so errors can be placed on a line.
pub(crate) struct Source<'a> {
    pub path: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    /// 1-based line and column of a byte offset.
    fn locate(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, column)
    }

    /// An error at `span` about `key`.
    pub fn error(&self, span: Range<usize>, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.locate(span.start);
        ConfigError::Invalid { path: self.path.to_owned(), line, column, key: key.into(), message: message.into() }
    }

    /// Turns a TOML/serde error into one that names the key found on the offending line.
    pub fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let span = err.span().unwrap_or(0..0);
        let key = self.key_on_line(span.start);
        // serde quotes the offending value; a mistyped password must not reach a log or
        // page, whether its key starts the line or sits in an inline table on it.
        let message = if key.contains("password") || self.line_at(span.start).to_lowercase().contains("password") {
            redacted(err.message())
        } else {
            err.message().to_owned()
        };
        self.error(span, key, message)
    }

    /// The text of the line holding `offset`.
    fn line_at(&self, offset: usize) -> &str {
        let offset = offset.min(self.text.len());
        let start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let end = self.text[offset..].find('\n').map_or(self.text.len(), |i| offset + i);
        &self.text[start..end]
    }

    /// The key written on the line holding `offset` (`name = ...` or a `[table]` header).
    /// On a line of several pairs (an inline table), the pair the offset is in: the first
    /// `=` of `  { name = "admin", password = 5 },` named `{ name` for an error in `password`.
    fn key_on_line(&self, offset: usize) -> String {
        let offset = offset.min(self.text.len());
        let line = self.line_at(offset);
        let column = offset - (self.text[..offset].rfind('\n').map_or(0, |i| i + 1));
        let trimmed = line.trim();
        if let Some(header) = trimmed.strip_prefix('[') {
            if !trimmed.contains('=') {
                return header.trim_matches(|c| c == '[' || c == ']').trim().to_owned();
            }
        }
        // An element of an array (or a line of a table) written over several lines: the
        // key whose value opened it, on an earlier line (`5,` named itself the key).
        let opened = || {
            let before = &self.text[..offset];
            before.lines().rev().skip(1).take(200).find_map(|l| {
                let (key, value) = l.split_once('=')?;
                let value = value.trim();
                let open =
                    value.starts_with('[') && !value.ends_with(']') || value.starts_with('{') && !value.ends_with('}');
                open.then(|| key.trim().to_owned())
            })
        };
        match pair_at(line, column) {
            // The pair is in an inline table that is an element of an array opened above.
            Some((key, false)) if trimmed.starts_with('{') => match opened() {
                Some(outer) => format!("{outer}.{key}"),
                None => key,
            },
            Some((key, _)) => key,
            None => opened().unwrap_or_else(|| trimmed.chars().take(40).collect()),
        }
    }
}

/// The key of the `key = value` pair of `line` that `column` (a byte index) is in, dotted
/// with the keys of the inline tables around it on the line, and whether a key of the line
/// opened the table it is in. Quoted strings are skipped, so a `,` or `=` in a value does not
/// end or start a pair.
fn pair_at(line: &str, column: usize) -> Option<(String, bool)> {
    // The keys of the inline tables open at this point (None: a table no key of the line opened).
    let mut tables: Vec<Option<String>> = Vec::new();
    let mut start = 0;
    let mut quote: Option<char> = None;
    let mut found: Option<(String, bool)> = None;
    let mut last_key: Option<String> = None;
    let mut chars = line.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match (quote, c) {
            (Some('"'), '\\') => {
                chars.next();
            }
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '#') => break,
            (None, '{') => {
                tables.push(last_key.take());
                start = i + 1;
            }
            (None, '}') => {
                tables.pop();
                start = i + 1;
                last_key = None;
            }
            (None, ',') => {
                start = i + 1;
                last_key = None;
            }
            (None, '[') => start = i + 1,
            (None, '=') => {
                let key = line[start..i].trim().to_owned();
                if start <= column {
                    let outer: Vec<&str> = tables.iter().flatten().map(String::as_str).collect();
                    let dotted =
                        outer.iter().copied().chain(std::iter::once(key.as_str())).collect::<Vec<_>>().join(".");
                    found = Some((dotted, tables.last().is_some_and(Option::is_some) || tables.is_empty()));
                }
                last_key = Some(key);
            }
            _ => {}
        }
    }
    found
}

/// `message` with every value serde quoted (between backticks) left out.
fn redacted(message: &str) -> String {
    message.split('`').enumerate().map(|(i, part)| if i % 2 == 1 { "…" } else { part }).collect::<Vec<_>>().join("`")
}
