//! Principal and namespace patterns: exact, `*`, `prefix*`, `*suffix`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    Any,
    Exact(String),
    Prefix(String),
    Suffix(String),
}

impl Pattern {
    /// Parses a pattern: `check_exact` validates a whole value, `check_part(part, is_prefix)`
    /// the fixed part of a prefix or suffix pattern.
    pub fn parse(
        text: &str,
        check_exact: impl Fn(&str) -> Result<(), String>,
        check_part: impl Fn(&str, bool) -> Result<(), String>,
    ) -> Result<Self, String> {
        let stars = text.matches('*').count();
        match (stars, text) {
            (0, t) => check_exact(t).map(|()| Self::Exact(t.into())),
            (1, "*") => Ok(Self::Any),
            (1, t) if t.ends_with('*') => {
                let part = t.trim_end_matches('*');
                check_part(part, true).map(|()| Self::Prefix(part.into()))
            }
            (1, t) if t.starts_with('*') => {
                let part = t.trim_start_matches('*');
                check_part(part, false).map(|()| Self::Suffix(part.into()))
            }
            _ => Err(format!("{text:?}: a `*` may only stand alone, end a prefix or start a suffix")),
        }
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(e) => value == e,
            Self::Prefix(p) => value.starts_with(p.as_str()),
            Self::Suffix(s) => value.ends_with(s.as_str()),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("*"),
            Self::Exact(e) => f.write_str(e),
            Self::Prefix(p) => write!(f, "{p}*"),
            Self::Suffix(s) => write!(f, "*{s}"),
        }
    }
}
