//! The resources served at `/v1/<resource>`: tables, fields, types, which
//! fields a client may write, and the links between resources. CRUD, the
//! OData schema, `$metadata` and `/openapi.json` are all generated from here.

/// A field's type as seen in JSON and in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Text,
    Bool,
    Real,
    /// RFC 3339 timestamp, stored as TEXT.
    Time,
    /// A JSON document, stored as TEXT.
    Json,
}

/// When a client may set a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Set by the server only.
    Never,
    /// On POST only (e.g. the parent of a child row).
    Create,
    /// On POST and PATCH.
    Always,
}

#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    pub write: Write,
    /// Required on POST.
    pub required: bool,
    pub nullable: bool,
    /// The resource this integer field points to.
    pub references: Option<&'static str>,
}

const fn f(name: &'static str, kind: Kind, write: Write, required: bool) -> Field {
    Field {
        name,
        kind,
        write,
        required,
        nullable: !required,
        references: None,
    }
}
const fn fk(name: &'static str, to: &'static str, write: Write, required: bool) -> Field {
    Field {
        name,
        kind: Kind::Int,
        write,
        required,
        nullable: !required,
        references: Some(to),
    }
}
const fn ro(name: &'static str, kind: Kind) -> Field {
    f(name, kind, Write::Never, false)
}

/// A child collection reachable from a resource (`fleet` → `device`).
#[derive(Debug, Clone, Copy)]
pub struct Reverse {
    /// Navigation name, e.g. `device` on `fleet`.
    pub name: &'static str,
    pub resource: &'static str,
    /// The child's field pointing back at us.
    pub via: &'static str,
}

#[derive(Debug, Clone, Copy)]
pub struct Resource {
    pub name: &'static str,
    /// SQL table name, already quoted where needed.
    pub table: &'static str,
    pub fields: &'static [Field],
    pub children: &'static [Reverse],
    /// Whether clients may POST/PATCH/DELETE through the generic handlers.
    pub writable: bool,
}

impl Field {
    /// The name of the navigation to the entity this foreign key points to:
    /// `<name>_entity` (`device.fleet` is the fleet's id, `fleet_entity` the
    /// fleet). CSDL forbids a property and a navigation property of one name,
    /// so the id keeps the name clients already write and read.
    pub fn navigation(&self) -> Option<String> {
        self.references.map(|_| format!("{}_entity", self.name))
    }
}

impl Resource {
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

use Kind::*;
use Write::*;

const ID: Field = ro("id", Int);

pub static RESOURCES: &[Resource] = &[
    Resource {
        name: "user",
        table: "\"user\"",
        fields: &[
            ID,
            f("username", Text, Create, true),
            f("is_admin", Bool, Always, false),
            ro("created_at", Time),
        ],
        children: &[
            Reverse {
                name: "api_key",
                resource: "api_key",
                via: "user",
            },
            Reverse {
                name: "fleet",
                resource: "fleet",
                via: "owner",
            },
        ],
        writable: true,
    },
    Resource {
        name: "api_key",
        table: "api_key",
        fields: &[
            ID,
            fk("user", "user", Create, false),
            f("name", Text, Always, true),
            f("expires_at", Time, Always, false),
            f("scope", Text, Create, false),
            fk("fleet", "fleet", Create, false),
            ro("created_at", Time),
        ],
        children: &[],
        writable: true,
    },
    Resource {
        name: "fleet",
        table: "fleet",
        fields: &[
            ID,
            f("name", Text, Always, true),
            f("device_type", Text, Create, true),
            fk("owner", "user", Never, false),
            fk("target_release", "release", Always, false),
            f("target_os_version", Text, Always, false),
            ro("uuid", Text),
            ro("created_at", Time),
        ],
        children: &[
            Reverse {
                name: "device",
                resource: "device",
                via: "fleet",
            },
            Reverse {
                name: "release",
                resource: "release",
                via: "fleet",
            },
            Reverse {
                name: "fleet_env_var",
                resource: "fleet_env_var",
                via: "fleet",
            },
            Reverse {
                name: "fleet_config_var",
                resource: "fleet_config_var",
                via: "fleet",
            },
            Reverse {
                name: "fleet_tag",
                resource: "fleet_tag",
                via: "fleet",
            },
            Reverse {
                name: "provisioning_key",
                resource: "provisioning_key",
                via: "fleet",
            },
            Reverse {
                name: "rollout",
                resource: "rollout",
                via: "fleet",
            },
        ],
        writable: true,
    },
    Resource {
        name: "device",
        table: "device",
        fields: &[
            ID,
            f("uuid", Text, Create, false),
            f("name", Text, Always, false),
            fk("fleet", "fleet", Create, true),
            f("device_type", Text, Create, false),
            ro("is_online", Bool),
            ro("last_seen", Time),
            ro("ip_address", Text),
            ro("os_version", Text),
            ro("supervisor_version", Text),
            ro("status", Text),
            fk("pinned_release", "release", Always, false),
            f("target_os_version", Text, Always, false),
            ro("os_update_state", Text),
            ro("os_update_progress", Int),
            ro("os_update_reason", Text),
            ro("boot_slot", Text),
            ro("apps", Json),
            ro("cpu_usage", Real),
            ro("memory_usage", Int),
            ro("memory_total", Int),
            ro("storage_usage", Int),
            ro("storage_total", Int),
            ro("cpu_temp", Real),
            ro("created_at", Time),
        ],
        children: &[
            Reverse {
                name: "device_env_var",
                resource: "device_env_var",
                via: "device",
            },
            Reverse {
                name: "device_config_var",
                resource: "device_config_var",
                via: "device",
            },
            Reverse {
                name: "device_tag",
                resource: "device_tag",
                via: "device",
            },
            Reverse {
                name: "device_action",
                resource: "device_action",
                via: "device",
            },
        ],
        writable: true,
    },
    Resource {
        name: "release",
        table: "\"release\"",
        fields: &[
            ID,
            ro("uuid", Text),
            fk("fleet", "fleet", Create, true),
            f("composition", Json, Create, true),
            f("status", Text, Always, false),
            ro("created_at", Time),
        ],
        children: &[
            Reverse {
                name: "service",
                resource: "service",
                via: "release",
            },
            Reverse {
                name: "image",
                resource: "image",
                via: "release",
            },
        ],
        writable: true,
    },
    Resource {
        name: "service",
        table: "service",
        fields: &[
            ID,
            fk("release", "release", Never, false),
            ro("name", Text),
            ro("image", Text),
        ],
        children: &[
            Reverse {
                name: "service_env_var",
                resource: "service_env_var",
                via: "service",
            },
            // Not `image`: that is the service's image reference.
            Reverse {
                name: "image_entities",
                resource: "image",
                via: "service",
            },
        ],
        writable: false,
    },
    Resource {
        name: "image",
        table: "image",
        fields: &[
            ID,
            fk("service", "service", Never, false),
            fk("release", "release", Never, false),
            ro("ref", Text),
            ro("digest", Text),
        ],
        children: &[],
        writable: false,
    },
    var("fleet_env_var", FLEET_VAR),
    var("device_env_var", DEVICE_VAR),
    var("service_env_var", SERVICE_VAR),
    var("fleet_config_var", FLEET_VAR),
    var("device_config_var", DEVICE_VAR),
    var("fleet_tag", FLEET_TAG),
    var("device_tag", DEVICE_TAG),
    Resource {
        name: "provisioning_key",
        table: "provisioning_key",
        fields: &[
            ID,
            fk("fleet", "fleet", Create, true),
            f("name", Text, Always, true),
            f("expires_at", Time, Always, false),
            ro("created_at", Time),
        ],
        children: &[],
        writable: true,
    },
    Resource {
        name: "os_release",
        table: "os_release",
        fields: &[
            ID,
            fk("owner", "user", Never, false),
            f("device_type", Text, Create, true),
            f("version", Text, Create, true),
            ro("bundle_sha256", Text),
            ro("bundle_size", Int),
            ro("image_size", Int),
            f("is_public", Bool, Always, false),
            ro("created_at", Time),
        ],
        children: &[],
        writable: true,
    },
    // Created with POST /v1/rollout and changed only through its actions
    // (crate::rollout), so not writable through the generic handlers.
    Resource {
        name: "rollout",
        table: "rollout",
        fields: &[
            ID,
            fk("fleet", "fleet", Never, false),
            ro("name", Text),
            fk("release", "release", Never, false),
            ro("os_version", Text),
            ro("waves", Json),
            ro("state", Text),
            ro("current_wave", Int),
            ro("created_at", Time),
            ro("updated_at", Time),
        ],
        children: &[Reverse {
            name: "rollout_event",
            resource: "rollout_event",
            via: "rollout",
        }],
        writable: false,
    },
    // Created with POST /v1/device({id})/actions and changed only by the
    // device's reports (crate::actions).
    Resource {
        name: "device_action",
        table: "device_action",
        fields: &[
            ID,
            fk("device", "device", Never, false),
            ro("action", Text),
            ro("service", Text),
            ro("state", Text),
            ro("result", Text),
            fk("requested_by", "user", Never, false),
            ro("requested_at", Time),
            ro("updated_at", Time),
        ],
        children: &[],
        writable: false,
    },
    Resource {
        name: "rollout_event",
        table: "rollout_event",
        fields: &[
            ID,
            fk("rollout", "rollout", Never, false),
            ro("from_state", Text),
            ro("to_state", Text),
            ro("wave", Int),
            ro("action", Text),
            ro("reason", Text),
            ro("counts", Json),
            ro("created_at", Time),
        ],
        children: &[],
        writable: false,
    },
];

const fn var(name: &'static str, fields: &'static [Field]) -> Resource {
    Resource {
        name,
        table: name,
        fields,
        children: &[],
        writable: true,
    }
}

const FLEET_VAR: &[Field] = &[
    ID,
    fk("fleet", "fleet", Create, true),
    f("name", Text, Create, true),
    f("value", Text, Always, true),
];
const DEVICE_VAR: &[Field] = &[
    ID,
    fk("device", "device", Create, true),
    f("name", Text, Create, true),
    f("value", Text, Always, true),
];
const SERVICE_VAR: &[Field] = &[
    ID,
    fk("service", "service", Create, true),
    f("name", Text, Create, true),
    f("value", Text, Always, true),
];
const FLEET_TAG: &[Field] = &[
    ID,
    fk("fleet", "fleet", Create, true),
    f("tag_key", Text, Create, true),
    f("value", Text, Always, true),
];
const DEVICE_TAG: &[Field] = &[
    ID,
    fk("device", "device", Create, true),
    f("tag_key", Text, Create, true),
    f("value", Text, Always, true),
];

/// Looks a resource up by its URL name.
pub fn resource(name: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.name == name)
}
