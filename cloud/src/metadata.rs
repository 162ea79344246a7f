//! Service documents generated from [`crate::schema`]: `$metadata` (OData
//! CSDL 4.0 XML) and `/openapi.json` (OpenAPI 3.1), covering every route.
//! Both are checked by real validators in `scripts/checks/35-api-specs.sh`.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use resin_api_types::paths;
use serde_json::{json, Map, Value};

use crate::schema::{Kind, Resource, Write, RESOURCES};

fn edm(kind: Kind) -> &'static str {
    match kind {
        Kind::Int => "Edm.Int64",
        Kind::Text => "Edm.String",
        Kind::Bool => "Edm.Boolean",
        Kind::Real => "Edm.Double",
        Kind::Time => "Edm.DateTimeOffset",
        // An embedded JSON document: an open complex type with no declared
        // properties (Edm.Untyped needs CSDL 4.01).
        Kind::Json => "resin.json",
    }
}

/// A navigation of the model: (name, target resource, to-many, nullable,
/// the foreign key property for a to-one, partner navigation on the target).
struct Nav {
    name: String,
    target: &'static str,
    many: bool,
    nullable: bool,
    key: Option<&'static str>,
    partner: Option<String>,
}

/// The navigations of `r`: one per foreign key (`<fk>_entity`) and one per
/// child collection, each with its partner on the other side when there is one.
fn navigations(r: &Resource) -> Vec<Nav> {
    let mut out = Vec::new();
    for f in r.fields {
        let (Some(to), Some(name)) = (f.references, f.navigation()) else {
            continue;
        };
        let partner = crate::schema::resource(to).and_then(|t| {
            t.children
                .iter()
                .find(|c| c.resource == r.name && c.via == f.name)
                .map(|c| c.name.to_owned())
        });
        out.push(Nav {
            name,
            target: to,
            many: false,
            nullable: f.nullable,
            key: Some(f.name),
            partner,
        });
    }
    for c in r.children {
        let partner = crate::schema::resource(c.resource)
            .and_then(|t| t.field(c.via))
            .filter(|f| f.references == Some(r.name))
            .and_then(|f| f.navigation());
        out.push(Nav {
            name: c.name.to_owned(),
            target: c.resource,
            many: true,
            nullable: false,
            key: None,
            partner,
        });
    }
    out
}

/// The CSDL document.
pub fn csdl() -> String {
    let mut x = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <edmx:Edmx xmlns:edmx=\"http://docs.oasis-open.org/odata/ns/edmx\" Version=\"4.0\">\n\
         <edmx:DataServices>\n<Schema xmlns=\"http://docs.oasis-open.org/odata/ns/edm\" Namespace=\"resin\">\n\
         <ComplexType Name=\"json\" OpenType=\"true\"/>\n",
    );
    for r in RESOURCES {
        x.push_str(&format!(
            "<EntityType Name=\"{0}\"><Key><PropertyRef Name=\"id\"/></Key>\n",
            r.name
        ));
        for f in r.fields {
            x.push_str(&format!(
                "  <Property Name=\"{}\" Type=\"{}\" Nullable=\"{}\"/>\n",
                f.name,
                edm(f.kind),
                f.nullable && f.name != "id"
            ));
        }
        for n in navigations(r) {
            let ty = if n.many {
                format!("Collection(resin.{})", n.target)
            } else {
                format!("resin.{}", n.target)
            };
            let mut attrs = format!("Name=\"{}\" Type=\"{ty}\"", n.name);
            if !n.many {
                attrs.push_str(&format!(" Nullable=\"{}\"", n.nullable));
            }
            if let Some(p) = &n.partner {
                attrs.push_str(&format!(" Partner=\"{p}\""));
            }
            match n.key {
                Some(k) => x.push_str(&format!(
                    "  <NavigationProperty {attrs}><ReferentialConstraint Property=\"{k}\" ReferencedProperty=\"id\"/></NavigationProperty>\n"
                )),
                None => x.push_str(&format!("  <NavigationProperty {attrs}/>\n")),
            }
        }
        x.push_str("</EntityType>\n");
    }
    x.push_str("<EntityContainer Name=\"resin\">\n");
    for r in RESOURCES {
        x.push_str(&format!(
            "  <EntitySet Name=\"{0}\" EntityType=\"resin.{0}\">\n",
            r.name
        ));
        for n in navigations(r) {
            x.push_str(&format!(
                "    <NavigationPropertyBinding Path=\"{}\" Target=\"{}\"/>\n",
                n.name, n.target
            ));
        }
        x.push_str("  </EntitySet>\n");
    }
    x.push_str("</EntityContainer>\n</Schema>\n</edmx:DataServices>\n</edmx:Edmx>\n");
    x
}

pub fn csdl_response() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml"),
        )],
        csdl(),
    )
        .into_response()
}

fn json_type(kind: Kind, nullable: bool) -> Value {
    let (ty, extra) = match kind {
        Kind::Int => ("integer", Some(("format", "int64"))),
        Kind::Text => ("string", None),
        Kind::Bool => ("boolean", None),
        Kind::Real => ("number", None),
        Kind::Time => ("string", Some(("format", "date-time"))),
        Kind::Json => ("object", None),
    };
    let mut t = if nullable {
        json!({"type": [ty, "null"]})
    } else {
        json!({"type": ty})
    };
    if let Some((k, v)) = extra {
        t[k] = json!(v);
    }
    t
}

/// The JSON schema of an entity (`writable_only`: of a POST/PATCH body).
fn schema_of(r: &Resource, writable_only: bool) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for f in r.fields {
        if writable_only && f.write == Write::Never {
            continue;
        }
        props.insert(
            f.name.into(),
            json_type(f.kind, f.nullable && f.name != "id"),
        );
        if writable_only && f.required {
            required.push(f.name);
        }
    }
    if !writable_only {
        // $expand adds the navigations.
        for n in navigations(r) {
            let target = json!({"$ref": format!("#/components/schemas/{}", n.target)});
            let v = if n.many {
                json!({"type": "array", "items": target, "description": "with $expand only"})
            } else {
                json!({"oneOf": [target, {"type": "null"}], "description": "with $expand only"})
            };
            props.insert(n.name, v);
        }
    }
    json!({"type": "object", "properties": props, "required": required})
}

fn param(name: &str, location: &str, required: bool, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": location, "required": required, "schema": schema, "description": description})
}

fn id_param() -> Value {
    param(
        "id",
        "path",
        true,
        json!({"type": "integer", "format": "int64"}),
        "the entity's key",
    )
}

fn ok_json(description: &str, schema: Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn object(description: &str) -> Value {
    json!({"type": "object", "description": description})
}

/// The OpenAPI document.
pub fn openapi() -> Value {
    let mut paths = Map::new();
    let err = json!({"$ref": "#/components/responses/error"});
    let odata = |name: &str, schema: Value, d: &str| param(name, "query", false, schema, d);
    let opts = json!([
        odata("$filter", json!({"type": "string"}), "OData filter, e.g. name eq 'x' (docs/design/odata.md)"),
        odata("$select", json!({"type": "string"}), "comma-separated fields"),
        odata("$expand", json!({"type": "string"}), "navigations with nested options; refused (400) above the row budget"),
        odata("$orderby", json!({"type": "string"}), "path [asc|desc], ..."),
        odata("$top", json!({"type": "integer", "minimum": 0}), "at most this many entities (served in pages)"),
        odata("$skip", json!({"type": "integer", "minimum": 0}), "skip this many entities"),
        odata("$count", json!({"type": "boolean"}), "add @odata.count"),
        param("Prefer", "header", false, json!({"type": "string"}),
            "odata.maxpagesize=N: a smaller page than the default 1000 (at most 5000); answered in Preference-Applied"),
    ]);
    let mut schemas = Map::new();
    schemas.insert(
        "error".into(),
        json!({"type": "object", "properties": {"error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "target": {"type": "string", "description": "the field at fault, when one is"}}}}}),
    );
    for r in RESOURCES {
        let n = r.name;
        schemas.insert(n.into(), schema_of(r, false));
        let reference = json!({"$ref": format!("#/components/schemas/{n}")});
        let page = json!({"type": "object", "properties": {
            "value": {"type": "array", "items": reference},
            "@odata.count": {"type": "integer", "description": "with $count=true: all matching entities"},
            "@odata.nextLink": {"type": "string", "format": "uri", "description": "the next page, while more entities match"}}});
        let mut coll = json!({
            "get": {"operationId": format!("list_{n}"), "summary": format!("List {n} (in pages of at most 1000 by default; follow @odata.nextLink)"),
                "parameters": opts,
                "responses": {"200": ok_json("one page of the collection", page), "400": err, "503": err}}
        });
        let mut one = json!({
            "get": {"operationId": format!("get_{n}"), "summary": format!("Read one {n}"),
                "parameters": [id_param(), odata("$select", json!({"type": "string"}), "fields"), odata("$expand", json!({"type": "string"}), "navigations")],
                "responses": {"200": ok_json("the entity", reference.clone()), "400": err, "404": err, "503": err}}
        });
        if r.writable {
            schemas.insert(format!("{n}_write"), schema_of(r, true));
            let w = json!({"$ref": format!("#/components/schemas/{n}_write")});
            coll["post"] = json!({"operationId": format!("create_{n}"), "summary": format!("Create a {n}"),
                "requestBody": {"required": true, "content": {"application/json": {"schema": w}}},
                "responses": {"201": ok_json("created", reference), "400": err, "409": err}});
            one["patch"] = json!({"operationId": format!("change_{n}"), "summary": format!("Change a {n}"), "parameters": [id_param()],
                "requestBody": {"required": true, "content": {"application/json": {"schema": w}}},
                "responses": {"204": {"description": "changed"}, "400": err, "404": err}});
            one["delete"] = json!({"operationId": format!("delete_{n}"), "summary": format!("Delete a {n}"), "parameters": [
                    id_param(),
                    param("force", "query", false, json!({"type": "boolean"}),
                        "delete even when something still refers to it (a fleet's devices, a release a fleet targets or a device pins)")],
                "responses": {"204": {"description": "deleted"}, "404": err, "409": err}});
        }
        paths.insert(format!("/v1/{n}"), coll);
        paths.insert(format!("/v1/{n}({{id}})"), one);
        paths.insert(
            format!("/v1/{n}/$count"),
            json!({"get": {"operationId": format!("count_{n}"), "summary": format!("Count {n} ($filter applies)"),
                "parameters": [odata("$filter", json!({"type": "string"}), "OData filter")],
                "responses": {"200": {"description": "the number", "content": {"text/plain": {"schema": {"type": "string", "pattern": "^[0-9]+$"}}}}, "400": err, "503": err}}}),
        );
    }
    other_routes(&mut paths, &err);
    rollout_routes(&mut paths, &err);
    device_action_routes(&mut paths, &err);
    dashboard_routes(&mut paths);
    crate::tunnel::openapi_paths(&mut paths, &err);
    json!({
        "openapi": "3.1.0",
        "info": {"title": "resin-cloud", "version": env!("CARGO_PKG_VERSION"),
            "description": "OData resources at /v1 (CSDL at /v1/$metadata), the device API, logs, OS releases and images."},
        "components": {
            "schemas": schemas,
            "responses": {"error": ok_json("an error in the OData JSON shape", json!({"$ref": "#/components/schemas/error"}))},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "a user's API key for /v1, a provisioning key for /device/register, a device key for the rest of /device"},
                "session": {"type": "apiKey", "in": "cookie", "name": crate::web::session::COOKIE,
                "description": "the dashboard's session cookie (log in at /login)"}}},
        "security": [{"bearer": []}],
        "paths": paths
    })
}

/// The dashboard's HTML pages ([`crate::web::ROUTES`]).
fn dashboard_routes(paths: &mut Map<String, Value>) {
    for (path, method, summary) in crate::web::ROUTES {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| {
                let schema = if matches!(name, "file" | "action" | "kind") {
                    json!({"type": "string"})
                } else {
                    json!({"type": "integer"})
                };
                param(name, "path", true, schema, name)
            })
            .collect();
        let public = matches!(*path, "/" | "/login" | "/static/{file}");
        let security = if public {
            json!([])
        } else {
            json!([{"session": []}])
        };
        let op_id = format!(
            "web_{method}{}",
            path.replace(['/', '{', '}', '.', '-'], "_")
        );
        let mut op = json!({"operationId": op_id, "summary": summary, "tags": ["dashboard"],
            "security": security, "parameters": params,
            "responses": {
                "200": {"description": "an HTML page", "content": {"text/html": {"schema": {"type": "string"}}}},
                "303": {"description": "a redirect (to /login without a session)"},
                "403": {"description": "a missing or wrong CSRF token"},
                "404": {"description": "not found, or not the user's"}}});
        if *method == "post" {
            op["requestBody"] = json!({"content": {"application/x-www-form-urlencoded":
                {"schema": {"type": "object", "properties": {"csrf": {"type": "string"}}, "required": ["csrf"]}}}});
        }
        let entry = paths.entry((*path).to_owned()).or_insert_with(|| json!({}));
        entry[*method] = op;
    }
}

/// Everything beside the generated resource routes.
fn other_routes(paths: &mut Map<String, Value>, err: &Value) {
    let public = json!([]);
    let mut add = |path: &str, v: Value| {
        paths.insert(path.to_owned(), v);
    };
    add(
        "/v1",
        json!({"get": {"operationId": "service_document", "summary": "The OData service document: the entity sets",
            "responses": {"200": ok_json("entity sets", object("{\"value\": [{\"name\", \"kind\", \"url\"}]}"))}}}),
    );
    add(
        "/v1/$metadata",
        json!({"get": {"operationId": "metadata", "summary": "The OData CSDL (XML) of the resources", "security": public,
            "responses": {"200": {"description": "CSDL 4.0", "content": {"application/xml": {"schema": {"type": "string"}}}}}}}),
    );
    add(
        "/openapi.json",
        json!({"get": {"operationId": "openapi", "summary": "This document", "security": public,
            "responses": {"200": ok_json("OpenAPI 3.1", object("this document"))}}}),
    );
    add(
        "/ping",
        json!({"get": {"operationId": "ping", "summary": "Liveness", "security": public,
            "responses": {"200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}}}}),
    );
    add(
        "/v1/device({id})/logs",
        json!({"get": {"operationId": "device_logs", "summary": "A device's recent log lines, or with follow=true a live stream (server-sent events)",
            "parameters": [id_param(),
                param("follow", "query", false, json!({"type": "boolean"}), "stream new lines as server-sent events"),
                param("count", "query", false, json!({"type": "integer", "minimum": 0}), "at most this many recent lines")],
            "responses": {"200": {"description": "log lines", "content": {
                "application/json": {"schema": {"type": "array", "items": object("{timestamp, service, message, isStderr, isSystem}")}},
                "text/event-stream": {"schema": {"type": "string"}}}}, "400": err, "404": err}}}),
    );
    for what in ["bundle", "image"] {
        add(
            &format!("/v1/os_release({{id}})/{what}"),
            json!({"put": {"operationId": format!("upload_os_{what}"),
                "summary": if what == "bundle" { "Upload the OS release's RAUC bundle" } else { "Upload the OS release's base disk image" },
                "parameters": [id_param()],
                "requestBody": {"required": true, "content": {"application/octet-stream": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}},
                "responses": {"200": ok_json("stored (sha256 and size)", object("the OS release")), "400": err, "404": err, "507": err}}}),
        );
    }
    add(
        "/v1/build",
        json!({"post": {"operationId": "create_build", "summary": "Build a project (a gzipped tar of a directory with docker-compose.yml or a Dockerfile) for the fleet's architecture; answers the build log as NDJSON until the build ends (closing the request cancels it). On success a release is made and, unless pin=false, it becomes the fleet's target",
            "parameters": [
                param("fleet", "query", true, json!({"type": "string"}), "the fleet: id, uuid or name"),
                param("nocache", "query", false, json!({"type": "boolean"}), "build without the fleet's layer cache"),
                param("pin", "query", false, json!({"type": "boolean", "default": true}), "make the new release the fleet's target")],
            "requestBody": {"required": true, "content": {"application/gzip": {"schema": {"type": "string", "contentMediaType": "application/gzip"}}}},
            "responses": {"200": {"description": "the build log, one JSON object per line; the last has the final state (and the release)",
                "headers": {"X-Resin-Build": {"schema": {"type": "integer"}, "description": "the build's id"}},
                "content": {"application/x-ndjson": {"schema": {"type": "string", "description": "one BuildLogLine per line"}}}},
                "400": err, "401": err, "403": err, "404": err, "413": err, "429": err, "503": err}}}),
    );
    add(
        "/v1/build/{id}",
        json!({"get": {"operationId": "get_build", "summary": "A build: its state, release and error",
            "parameters": [param("id", "path", true, json!({"type": "integer", "format": "int64"}), "the build's id")],
            "responses": {"200": ok_json("the build", object("{id, uuid, fleet, status, source, nocache, pin, release, error, created_at, started_at, finished_at}")), "404": err}}}),
    );
    add(
        "/v1/build/{id}/logs",
        json!({"get": {"operationId": "get_build_logs", "summary": "A build's stored log (NDJSON); follow=true waits for its end",
            "parameters": [param("id", "path", true, json!({"type": "integer", "format": "int64"}), "the build's id"),
                param("follow", "query", false, json!({"type": "boolean"}), "stream until the build ends")],
            "responses": {"200": {"description": "log lines", "content": {"application/x-ndjson": {"schema": {"type": "string", "description": "one {service?, message, state?, release?, isError?} per line"}}}}, "404": err}}}),
    );
    add(
        "/v1/release({id})/logs",
        json!({"get": {"operationId": "release_build_logs", "summary": "The build log of the build that made this release (NDJSON)",
            "parameters": [id_param()],
            "responses": {"200": {"description": "log lines", "content": {"application/x-ndjson": {"schema": {"type": "string"}}}}, "404": err}}}),
    );
    add(
        "/v1/os/download",
        json!({"get": {"operationId": "os_download", "summary": "A fleet's configured disk image: the base image with config.json (a fresh provisioning key) written in, streamed",
            "parameters": [
                param("fleet", "query", true, json!({"type": "integer", "format": "int64"}), "the fleet"),
                param("version", "query", false, json!({"type": "string"}), "OS version (default: the fleet's target OS version)"),
                param("compression", "query", false, json!({"type": "string", "enum": ["zstd", "xz", "none"]}), "default none")],
            "responses": {"200": {"description": "the image", "content": {"application/octet-stream": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}}, "400": err, "404": err}}}),
    );
    add(
        "/os/bundle/{id}",
        json!({"get": {"operationId": "os_bundle", "summary": "An OS release's RAUC bundle, for a device of the release's owner (Range supported)",
            "parameters": [id_param(), param("Range", "header", false, json!({"type": "string"}), "bytes=N-M")],
            "responses": {"200": {"description": "the bundle", "content": {"application/octet-stream": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}},
                "206": {"description": "part of the bundle"}, "404": err, "416": err}}}),
    );
    add(
        paths::REGISTER,
        json!({"post": {"operationId": "device_register", "summary": "Register a device with a provisioning key; answers its device key",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["uuid", "deviceType"], "properties": {
                "uuid": {"type": "string", "pattern": "^[0-9a-f]{32}$"}, "deviceType": {"type": "string"}, "name": {"type": "string"},
                "supervisorVersion": {"type": "string"}, "osVersion": {"type": "string"},
                "apiKey": {"type": "string", "description": "the device's current key, to register a known uuid again"}}}}}},
            "responses": {"200": ok_json("registered again (the same device, proven by apiKey)", json!({"type": "object"})),
                "201": ok_json("registered", json!({"type": "object", "properties": {"id": {"type": "integer"}, "uuid": {"type": "string"}, "apiKey": {"type": "string"}}})),
                "400": err, "401": err, "409": err}}}),
    );
    add(
        paths::TARGET_STATE_ROUTE,
        json!({"get": {"operationId": "device_target_state", "summary": "The device's target state (strong ETag; If-None-Match answers 304)",
            "parameters": [param("uuid", "path", true, json!({"type": "string"}), "the device's uuid"),
                param("If-None-Match", "header", false, json!({"type": "string"}), "the ETag last received")],
            "responses": {"200": ok_json("{uuid: {name, config, apps, os}}", object("target state")), "304": {"description": "unchanged"}, "401": err, "404": err}}}),
    );
    add(
        paths::STATE_REPORT,
        json!({"patch": {"operationId": "device_report_state", "summary": "The device reports its current state (apps, OS update, metrics)",
            "requestBody": {"required": true, "content": {"application/json": {"schema": object("{uuid: {apps, os_version, update status, metrics, ...}}")}}},
            "responses": {"200": {"description": "taken"}, "400": err, "401": err, "413": err}}}),
    );
    add(
        paths::LOG_STREAM_ROUTE,
        json!({"post": {"operationId": "device_log_stream", "summary": "The device sends log lines (NDJSON, gzip accepted)",
            "parameters": [param("uuid", "path", true, json!({"type": "string"}), "the device's uuid")],
            "requestBody": {"required": true, "content": {"application/x-ndjson": {"schema": {"type": "string",
                "description": "one {timestamp, service, message, isStderr, isSystem} per line"}}}},
            "responses": {"200": {"description": "taken"}, "400": err, "401": err, "413": err}}}),
    );
}

/// The rollout routes beside the generated read-only ones (crate::rollout).
fn rollout_routes(paths: &mut Map<String, Value>, err: &Value) {
    let wave = json!({"type": "object", "description": "exactly one of percent (cumulative) and tags",
        "properties": {
            "percent": {"type": "integer", "minimum": 1, "maximum": 100},
            "tags": {"type": "object", "additionalProperties": {"type": "string"}},
            "soak_secs": {"type": "integer", "minimum": 0, "default": 300},
            "success_percent": {"type": "integer", "minimum": 1, "maximum": 100, "default": 100},
            "pause_after": {"type": "boolean", "default": false},
            "max_failure_percent": {"type": "integer", "minimum": 0, "maximum": 100, "default": 10},
            "max_failures": {"type": "integer", "minimum": 0},
            "min_sample": {"type": "integer", "minimum": 1, "default": 1},
            "timeout_secs": {"type": "integer", "minimum": 1, "default": 3600}}});
    let progress = json!({"type": "object", "description": "the rollout with per-wave counts and its events",
        "properties": {"id": {"type": "integer"}, "fleet": {"type": "integer"}, "name": {"type": "string"},
            "state": {"type": "string", "enum": ["draft", "running", "paused", "halted", "completed", "cancelled"]},
            "release": {"type": "integer"}, "os_version": {"type": "string"}, "current_wave": {"type": "integer"},
            "waves": {"type": "array", "items": {"type": "object", "properties": {"wave": wave, "counts": {"type": "object",
                "properties": {"size": {"type": "integer"}, "pending": {"type": "integer"}, "in_progress": {"type": "integer"},
                    "healthy": {"type": "integer"}, "failed": {"type": "integer"}, "reverted": {"type": "integer"}, "excluded": {"type": "integer"}}}}}},
            "events": {"type": "array", "items": {"type": "object", "properties": {"at": {"type": "string"}, "from": {"type": "string"},
                "to": {"type": "string"}, "action": {"type": "string"}, "reason": {"type": "string"}, "wave": {"type": "integer"}}}}}});
    if let Some(coll) = paths.get_mut("/v1/rollout") {
        coll["post"] = json!({"operationId": "create_rollout", "summary": "Create a draft rollout of a release or an OS version to a fleet, in waves",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["fleet", "waves"],
                "properties": {"fleet": {"type": "integer"}, "name": {"type": "string"}, "release": {"type": "integer"},
                    "os_version": {"type": "string"}, "waves": {"type": "array", "minItems": 1, "items": wave}}}}}},
            "responses": {"201": ok_json("created (draft)", progress.clone()), "400": err, "409": err}});
    }
    paths.insert(
        "/v1/rollout({id})/progress".into(),
        json!({"get": {"operationId": "rollout_progress", "summary": "A rollout's per-wave counts and events",
            "parameters": [id_param()],
            "responses": {"200": ok_json("progress", progress.clone()), "404": err}}}),
    );
    paths.insert(
        "/v1/rollout({id})/{action}".into(),
        json!({"post": {"operationId": "rollout_action", "summary": "A transition: start, pause, resume, halt, rollback (moves updated devices back) or cancel",
            "parameters": [id_param(), param("action", "path", true,
                json!({"type": "string", "enum": ["start", "pause", "resume", "halt", "rollback", "cancel"]}), "the transition")],
            "requestBody": {"required": false, "content": {"application/json": {"schema": {"type": "object",
                "properties": {"reason": {"type": "string", "description": "recorded in the event"}}}}}},
            "responses": {"200": ok_json("progress after the transition", progress), "404": err, "409": err}}}),
    );
}

/// Device actions and moves (crate::actions, api-types `actions`).
fn device_action_routes(paths: &mut Map<String, Value>, err: &Value) {
    let action = json!({"type": "object", "properties": {
        "id": {"type": "integer"}, "device": {"type": "integer"},
        "action": {"type": "string", "enum": ["reboot", "restart"]},
        "service": {"type": ["string", "null"], "description": "restart: only this service"},
        "state": {"type": "string", "enum": ["pending", "started", "done", "failed"]},
        "result": {"type": ["string", "null"], "description": "the device's message"},
        "requested_by": {"type": ["integer", "null"]},
        "requested_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"}}});
    paths.insert(
        "/v1/device({id})/actions".into(),
        json!({
            "get": {"operationId": "device_actions", "summary": "A device's actions, newest first (the last 100)",
                "parameters": [id_param()],
                "responses": {"200": ok_json("the actions", json!({"type": "object",
                    "properties": {"value": {"type": "array", "items": action.clone()}}})), "404": err}},
            "post": {"operationId": "create_device_action",
                "summary": "Ask the device to reboot (after its update locks are released) or to restart its services (or one); it runs the action once",
                "parameters": [id_param()],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["action"],
                    "properties": {"action": {"type": "string", "enum": ["reboot", "restart"]},
                        "service": {"type": "string", "description": "restart: only this service of the device's target release"}}}}}},
                "responses": {"201": ok_json("the pending action", action), "400": err, "403": err, "404": err, "409": err}}}),
    );
    paths.insert(
        "/v1/device({id})/move".into(),
        json!({"post": {"operationId": "move_device",
            "summary": "Move a device to another fleet of the same owner and device type; its pin and rollout assignment are dropped",
            "parameters": [id_param()],
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["fleet"],
                "properties": {"fleet": {"type": "integer"}}}}}},
            "responses": {"200": ok_json("moved", json!({"type": "object", "properties": {
                "device": {"type": "integer"}, "from_fleet": {"type": "integer"}, "fleet": {"type": "integer"}}})),
                "400": err, "403": err, "404": err, "409": err}}}),
    );
}

pub async fn openapi_handler() -> Json<Value> {
    Json(openapi())
}
