//! The errors of parsing and rendering; both mean "bad request" to the cloud.

use std::fmt;

/// A query option that could not be parsed. Its `Display` names the option
/// and, where there is one, the 1-based character position in the option's
/// (percent-decoded) value: `$filter: expected ')' at position 17`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The option, e.g. `$filter`, or `$expand/device/$filter` when nested.
    pub option: String,
    /// 1-based character position within the option's decoded value.
    pub position: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(option: &str, position: Option<usize>, message: impl Into<String>) -> Self {
        ParseError {
            option: option.to_string(),
            position,
            message: message.into(),
        }
    }

    /// An error at byte offset `offset` of `src`, converted to a character position.
    pub(crate) fn at(option: &str, src: &str, offset: usize, message: impl Into<String>) -> Self {
        let offset = offset.min(src.len());
        let chars = src.char_indices().take_while(|(i, _)| *i < offset).count();
        Self::new(option, Some(chars + 1), message)
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.option, self.message)?;
        if let Some(p) = self.position {
            write!(f, " at position {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseError {}

/// A parsed query that cannot be rendered against the schema.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// No entity set of that name.
    #[error("unknown entity set '{0}'")]
    UnknownSet(String),
    /// No field of that name.
    #[error("'{set}' has no field '{field}'")]
    UnknownField {
        /// The entity set.
        set: String,
        /// The field asked for.
        field: String,
    },
    /// No navigation of that name.
    #[error("'{set}' has no navigation '{nav}'")]
    UnknownNavigation {
        /// The entity set.
        set: String,
        /// The navigation asked for.
        nav: String,
    },
    /// The field may not be used in `$filter`/`$orderby`.
    #[error("field '{field}' of '{set}' cannot be used in $filter or $orderby")]
    NotFilterable {
        /// The entity set.
        set: String,
        /// The field.
        field: String,
    },
    /// The field may not be selected.
    #[error("field '{field}' of '{set}' cannot be selected")]
    NotSelectable {
        /// The entity set.
        set: String,
        /// The field.
        field: String,
    },
    /// A to-many navigation used where only to-one works.
    #[error("navigation '{nav}' of '{set}' is to-many and cannot be used in {context} (any/all are not supported)")]
    ToMany {
        /// The entity set.
        set: String,
        /// The navigation.
        nav: String,
        /// Where it was used (`$filter`, `$orderby`).
        context: String,
    },
    /// Operand types that do not fit together.
    #[error("type mismatch: {0}")]
    TypeMismatch(String),
    /// Valid OData this renderer does not support.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The access rule the cloud supplied is malformed (a server bug).
    #[error("access rule for '{set}' is invalid: {reason}")]
    BadRowFilter {
        /// The entity set.
        set: String,
        /// What is wrong.
        reason: String,
    },
    /// The static schema is inconsistent (a server bug).
    #[error("schema error: {0}")]
    BadSchema(String),
}
