//! Service documents generated from [`crate::schema`]: `$metadata` (OData
//! CSDL XML) and `/openapi.json` (OpenAPI 3.0).

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};

use crate::schema::{Kind, Resource, Write, RESOURCES};

fn edm(kind: Kind) -> &'static str {
    match kind {
        Kind::Int => "Edm.Int64",
        Kind::Text | Kind::Json => "Edm.String",
        Kind::Bool => "Edm.Boolean",
        Kind::Real => "Edm.Double",
        Kind::Time => "Edm.DateTimeOffset",
    }
}

/// The CSDL document.
pub fn csdl() -> String {
    let mut x = String::from(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n\
         <edmx:Edmx xmlns:edmx=\"http://docs.oasis-open.org/odata/ns/edmx\" Version=\"4.0\">\n\
         <edmx:DataServices>\n<Schema xmlns=\"http://docs.oasis-open.org/odata/ns/edm\" Namespace=\"resin\">\n",
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
        for f in r.fields {
            if let Some(to) = f.references {
                x.push_str(&format!(
                    "  <NavigationProperty Name=\"{}\" Type=\"resin.{to}\"/>\n",
                    f.name
                ));
            }
        }
        for c in r.children {
            x.push_str(&format!(
                "  <NavigationProperty Name=\"{}\" Type=\"Collection(resin.{})\"/>\n",
                c.name, c.resource
            ));
        }
        x.push_str("</EntityType>\n");
    }
    x.push_str("<EntityContainer Name=\"resin\">\n");
    for r in RESOURCES {
        x.push_str(&format!(
            "  <EntitySet Name=\"{0}\" EntityType=\"resin.{0}\"/>\n",
            r.name
        ));
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

fn json_type(kind: Kind) -> Value {
    match kind {
        Kind::Int => json!({"type": "integer", "format": "int64"}),
        Kind::Text => json!({"type": "string"}),
        Kind::Bool => json!({"type": "boolean"}),
        Kind::Real => json!({"type": "number"}),
        Kind::Time => json!({"type": "string", "format": "date-time"}),
        Kind::Json => json!({"type": "object"}),
    }
}

fn schema_of(r: &Resource, writable_only: bool) -> Value {
    let mut props = Map::new();
    let mut required = Vec::new();
    for f in r.fields {
        if writable_only && f.write == Write::Never {
            continue;
        }
        let mut t = json_type(f.kind);
        if f.nullable {
            t["nullable"] = json!(true);
        }
        props.insert(f.name.into(), t);
        if writable_only && f.required {
            required.push(f.name);
        }
    }
    json!({"type": "object", "properties": props, "required": required})
}

/// The OpenAPI document.
pub fn openapi() -> Value {
    let mut paths = Map::new();
    let err = json!({"description": "OData error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/error"}}}});
    let opts = json!([
        {"name": "$filter", "in": "query", "schema": {"type": "string"}},
        {"name": "$select", "in": "query", "schema": {"type": "string"}},
        {"name": "$expand", "in": "query", "schema": {"type": "string"}},
        {"name": "$orderby", "in": "query", "schema": {"type": "string"}},
        {"name": "$top", "in": "query", "schema": {"type": "integer"}},
        {"name": "$skip", "in": "query", "schema": {"type": "integer"}},
        {"name": "$count", "in": "query", "schema": {"type": "boolean"}}
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
        let mut coll = json!({
            "get": {"summary": format!("List {n}"), "parameters": opts,
                "responses": {"200": {"description": "the collection", "content": {"application/json": {"schema": {"type": "object", "properties": {"value": {"type": "array", "items": reference}}}}}}, "400": err}}
        });
        let mut one = json!({
            "get": {"summary": format!("Read one {n}"), "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
                "responses": {"200": {"description": "the entity", "content": {"application/json": {"schema": reference}}}, "404": err}}
        });
        if r.writable {
            schemas.insert(format!("{n}_write"), schema_of(r, true));
            let w = json!({"$ref": format!("#/components/schemas/{n}_write")});
            coll["post"] = json!({"summary": format!("Create a {n}"), "requestBody": {"content": {"application/json": {"schema": w}}},
                "responses": {"201": {"description": "created", "content": {"application/json": {"schema": reference}}}, "400": err}});
            one["patch"] = json!({"summary": format!("Change a {n}"), "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
                "requestBody": {"content": {"application/json": {"schema": w}}}, "responses": {"204": {"description": "changed"}, "400": err}});
            one["delete"] = json!({"summary": format!("Delete a {n}"), "parameters": [
                    {"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}},
                    {"name": "force", "in": "query", "required": false, "schema": {"type": "boolean"},
                     "description": "delete even when something still refers to it (a fleet's devices, a release a fleet targets or a device pins)"}],
                "responses": {"204": {"description": "deleted"}, "404": err, "409": err}});
        }
        paths.insert(format!("/v1/{n}"), coll);
        paths.insert(format!("/v1/{n}({{id}})"), one);
    }
    json!({
        "openapi": "3.0.3",
        "info": {"title": "resin-cloud", "version": env!("CARGO_PKG_VERSION")},
        "components": {"schemas": schemas, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": paths
    })
}

pub async fn openapi_handler() -> Json<Value> {
    Json(openapi())
}
