//! Where a problem in the pipeline file is and what to do about it: [`Loc`] (file:line:col),
//! [`Diagnostic`] (location, message, hint), [`ConfigError`] (all of them), and the locator that
//! maps the TOML parser's byte offsets to lines and columns.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use toml::Spanned;

/// A place in the pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    /// The pipeline file.
    pub file: Arc<Path>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub col: usize,
}

impl Loc {
    /// The file as a whole (line 0), for a problem with no place in it.
    pub fn file(path: &Path) -> Loc {
        Loc {
            file: Arc::from(path),
            line: 0,
            col: 0,
        }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            return write!(f, "{}", self.file.display());
        }
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.col)
    }
}

/// One problem: where, what, and (when there is one) what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Where it was written.
    pub location: Loc,
    /// What is wrong.
    pub message: String,
    /// What to change.
    pub hint: Option<String>,
}

impl Diagnostic {
    /// A problem at `location`.
    pub fn new(location: Loc, message: String) -> Diagnostic {
        Diagnostic {
            location,
            message,
            hint: None,
        }
    }

    /// With what to change.
    pub fn hint(mut self, hint: &str) -> Diagnostic {
        self.hint = Some(hint.to_owned());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)?;
        match &self.hint {
            Some(hint) => write!(f, "; {hint}"),
            None => Ok(()),
        }
    }
}

/// Everything wrong with a pipeline file, each with its place.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// One per problem, each shown as `file:line:col: what; what to do`.
    pub problems: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.problems.iter().map(Diagnostic::to_string).collect();
        write!(f, "{}", lines.join("\n"))
    }
}

impl ConfigError {
    pub(super) fn one(problem: Diagnostic) -> Self {
        ConfigError {
            problems: vec![problem],
        }
    }
}

/// Maps byte offsets of the file to lines and columns.
pub(super) struct Locator {
    file: Arc<Path>,
    line_starts: Vec<usize>,
    text: String,
}

impl Locator {
    pub(super) fn new(file: Arc<Path>, text: &str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Locator {
            file,
            line_starts,
            text: text.to_owned(),
        }
    }

    pub(super) fn loc(&self, offset: usize) -> Loc {
        let line = self.line_starts.partition_point(|&s| s <= offset).max(1);
        let start = self.line_starts[line - 1];
        let col = self
            .text
            .get(start..offset)
            .map(|s| s.chars().count())
            .unwrap_or(0)
            + 1;
        Loc {
            file: self.file.clone(),
            line,
            col,
        }
    }

    pub(super) fn at<T>(&self, spanned: &Spanned<T>) -> Loc {
        self.loc(spanned.span().start)
    }
}
