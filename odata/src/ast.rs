//! The parsed form of OData query options and `$filter` expressions.

use crate::Value;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    /// `eq`
    Eq,
    /// `ne`
    Ne,
    /// `gt`
    Gt,
    /// `ge`
    Ge,
    /// `lt`
    Lt,
    /// `le`
    Le,
}

impl CmpOp {
    /// The OData keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            CmpOp::Eq => "eq",
            CmpOp::Ne => "ne",
            CmpOp::Gt => "gt",
            CmpOp::Ge => "ge",
            CmpOp::Lt => "lt",
            CmpOp::Le => "le",
        }
    }

    /// The SQL operator.
    pub fn sql(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
        }
    }

    pub(crate) fn from_keyword(s: &str) -> Option<CmpOp> {
        Some(match s {
            "eq" => CmpOp::Eq,
            "ne" => CmpOp::Ne,
            "gt" => CmpOp::Gt,
            "ge" => CmpOp::Ge,
            "lt" => CmpOp::Lt,
            "le" => CmpOp::Le,
            _ => return None,
        })
    }
}

/// A string function usable as a predicate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Func {
    /// `contains(field, 'text')`
    Contains,
    /// `startswith(field, 'text')`
    StartsWith,
    /// `endswith(field, 'text')`
    EndsWith,
}

impl Func {
    /// The OData function name.
    pub fn name(self) -> &'static str {
        match self {
            Func::Contains => "contains",
            Func::StartsWith => "startswith",
            Func::EndsWith => "endswith",
        }
    }

    pub(crate) fn from_name(s: &str) -> Option<Func> {
        Some(match s {
            "contains" => Func::Contains,
            "startswith" => Func::StartsWith,
            "endswith" => Func::EndsWith,
            _ => return None,
        })
    }
}

/// A `$filter` expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A literal (`42`, `1.5`, `'text'`, `true`, `null`, a datetime as text).
    Literal(Value),
    /// A property path: `name`, or one navigation hop `fleet/name`.
    Path(Vec<String>),
    /// `not x` (binds tighter than comparisons, as in the OData spec).
    Not(Box<Expr>),
    /// `a and b and …`
    And(Vec<Expr>),
    /// `a or b or …`
    Or(Vec<Expr>),
    /// `left op right`
    Compare {
        /// The operator.
        op: CmpOp,
        /// Left operand.
        left: Box<Expr>,
        /// Right operand.
        right: Box<Expr>,
    },
    /// `target in (v1, v2, …)` with literal values.
    In {
        /// What is tested.
        target: Box<Expr>,
        /// The literals.
        list: Vec<Value>,
    },
    /// `func(args…)`
    Call {
        /// The function.
        func: Func,
        /// Its arguments.
        args: Vec<Expr>,
    },
}

/// One `$orderby` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderBy {
    /// Property path (`name` or `fleet/name`).
    pub path: Vec<String>,
    /// `desc` (default `asc`).
    pub desc: bool,
}

/// One `$expand` item with its nested options.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Expand {
    /// Navigation name.
    pub nav: String,
    /// Nested `$select`, `$filter`, `$expand`, `$orderby`, `$top`, `$skip`.
    pub options: QueryOptions,
}

/// The query options of one request (or of one `$expand` item).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueryOptions {
    /// `$filter`
    pub filter: Option<Expr>,
    /// `$select` (None: all fields).
    pub select: Option<Vec<String>>,
    /// `$expand`
    pub expand: Vec<Expand>,
    /// `$orderby`
    pub orderby: Vec<OrderBy>,
    /// `$top`
    pub top: Option<u64>,
    /// `$skip`
    pub skip: Option<u64>,
    /// `$count=true`
    pub count: bool,
}
