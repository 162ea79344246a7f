//! The static description of the entity sets the cloud serves: tables,
//! columns, types, and the navigations between sets.

/// The type of a field, as stored and as rendered in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldType {
    /// 64-bit integer (JSON number).
    Int,
    /// Double (JSON number).
    Float,
    /// Boolean: BOOLEAN in PostgreSQL, 0/1 in SQLite; JSON true/false.
    Bool,
    /// Text (JSON string).
    Text,
    /// RFC 3339 timestamp stored as TEXT (JSON string); compared as text.
    Timestamp,
    /// A JSON document stored as TEXT, embedded as JSON (not as a string).
    Json,
}

impl FieldType {
    /// A short name of the type, for error messages.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::Int => "integer",
            FieldType::Float => "decimal",
            FieldType::Bool => "boolean",
            FieldType::Text => "string",
            FieldType::Timestamp => "timestamp",
            FieldType::Json => "json",
        }
    }
}

/// One field of an entity set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// The name clients use (JSON key, `$filter`, `$select`, `$orderby`).
    pub name: &'static str,
    /// Its type.
    pub ty: FieldType,
    /// The column in the table (usually equal to `name`).
    pub column: &'static str,
    /// Whether `$filter` and `$orderby` may use it.
    pub filterable: bool,
    /// Whether it is part of the entity's JSON (false hides it entirely).
    pub selectable: bool,
}

/// How a navigation joins two entity sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NavKind {
    /// This set's `local_column` holds the target's key (device.fleet → fleet.id).
    ToOne {
        /// Column of this set holding the target's key.
        local_column: &'static str,
    },
    /// The target's `remote_column` holds this set's key (fleet → device.fleet).
    ToMany {
        /// Column of the target set holding this set's key.
        remote_column: &'static str,
    },
}

/// A link from one entity set to another, usable in `$expand` (both kinds)
/// and in `$filter`/`$orderby` paths (to-one only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Navigation {
    /// The name clients use (`$expand=fleet`, `fleet/name`).
    pub name: &'static str,
    /// The target entity set's name.
    pub target: &'static str,
    /// How the two sets join.
    pub kind: NavKind,
}

/// One entity set (a resource at `/v1/<name>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntitySet {
    /// Resource name.
    pub name: &'static str,
    /// Table name.
    pub table: &'static str,
    /// Key column (usually `id`).
    pub key: &'static str,
    /// Fields, in the order they appear in JSON.
    pub fields: &'static [Field],
    /// Navigations to other sets.
    pub navigations: &'static [Navigation],
}

impl EntitySet {
    /// The field called `name`.
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The navigation called `name`.
    pub fn navigation(&self, name: &str) -> Option<&'static Navigation> {
        self.navigations.iter().find(|n| n.name == name)
    }

    /// The field whose column is the key, if the key is listed as a field.
    pub fn key_field(&self) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.column == self.key)
    }
}

/// All entity sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schema {
    /// The sets.
    pub sets: &'static [EntitySet],
}

impl Schema {
    /// The set called `name`.
    pub fn set(&self, name: &str) -> Option<&'static EntitySet> {
        self.sets.iter().find(|s| s.name == name)
    }
}
