#!/usr/bin/env bash
# The service documents of a running resin-cloud, checked by validators:
#  1. /openapi.json with openapi-spec-validator 0.9 (PyPI, in a venv under
#     ~/.cache/resin) as OpenAPI 3.1, and it documents every route (resources,
#     $count, logs, OS uploads and download, bundles, the device API);
#  2. /v1/$metadata as OData CSDL 4.0. The OASIS CSDL XSDs cannot be had
#     offline (no PyPI or Debian package ships them), so this is a
#     well-formedness check (Python's XML parser) plus the CSDL rules that
#     matter to clients, checked by the small checker below: the edmx/edm
#     namespaces and version; only known elements and attributes; unique
#     names; a key of non-nullable properties; every type resolves; no
#     property and navigation property of one name; partners point back;
#     referential constraints name real properties; and every navigation of
#     every entity set has a NavigationPropertyBinding to a set of its type.
set -euo pipefail
. "$(dirname "$0")/../lib/common.sh"
cd "$RESIN_ROOT"
ensure_rust

venv=${XDG_CACHE_HOME:-$HOME/.cache}/resin/api-venv
if ! "$venv/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(not m.version("openapi-spec-validator").startswith("0.9."))' 2>/dev/null; then
  log "installing openapi-spec-validator 0.9 into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'openapi-spec-validator==0.9.*'
fi

cloud_instance
cloud_serve
curl -fsS "$URL/openapi.json" >"$WORK/openapi.json"
curl -fsS "$URL/v1/\$metadata" >"$WORK/metadata.xml"

# 1. OpenAPI 3.1, and every route documented.
"$venv/bin/python" - "$WORK/openapi.json" <<'PY' || die "/openapi.json is not valid OpenAPI 3.1 (above)"
import json, sys
from openapi_spec_validator import validate
from openapi_spec_validator.validation.validators import OpenAPIV31SpecValidator
spec = json.load(open(sys.argv[1]))
assert spec["openapi"].startswith("3.1."), spec["openapi"]
validate(spec, cls=OpenAPIV31SpecValidator)
want = ["/v1", "/v1/$metadata", "/openapi.json", "/ping", "/v1/device({id})/logs",
        "/v1/os_release({id})/bundle", "/v1/os_release({id})/image", "/v1/os/download",
        "/os/bundle/{id}", "/device/register", "/device/v3/{uuid}/state",
        "/device/v3/state", "/device/v2/{uuid}/log-stream",
        "/v1/rollout({id})/progress", "/v1/rollout({id})/{action}",
        "/v1/device({id})/actions", "/v1/device({id})/move"]
for res in ["user", "api_key", "fleet", "device", "release", "service", "image", "os_release",
            "provisioning_key", "fleet_env_var", "device_env_var", "service_env_var",
            "fleet_config_var", "device_config_var", "fleet_tag", "device_tag",
            "rollout", "rollout_event", "device_action"]:
    want += [f"/v1/{res}", f"/v1/{res}({{id}})", f"/v1/{res}/$count"]
missing = [p for p in want if p not in spec["paths"]]
if "post" not in spec["paths"].get("/v1/rollout", {}):
    missing.append("POST /v1/rollout")
assert not missing, f"routes missing from /openapi.json: {missing}"
print(f"openapi: valid OpenAPI {spec['openapi']}, {len(spec['paths'])} paths")
PY

# 2. CSDL: well-formed, and the structural rules.
python3 - "$WORK/metadata.xml" <<'PY' || die "/v1/\$metadata is not valid CSDL (above)"
import sys
import xml.etree.ElementTree as ET
EDMX = "{http://docs.oasis-open.org/odata/ns/edmx}"
EDM = "{http://docs.oasis-open.org/odata/ns/edm}"
errors = []
def err(msg): errors.append(msg)
root = ET.parse(sys.argv[1]).getroot()  # raises on malformed XML
if root.tag != EDMX + "Edmx" or root.get("Version") not in ("4.0", "4.01"):
    err(f"root must be edmx:Edmx Version 4.0/4.01, is {root.tag} {root.get('Version')}")
# Elements and attributes this document may use (a subset of CSDL 4.0).
allowed = {
    EDMX + "Edmx": {"Version"}, EDMX + "DataServices": set(),
    EDM + "Schema": {"Namespace", "Alias"},
    EDM + "EntityType": {"Name", "BaseType", "Abstract", "OpenType", "HasStream"},
    EDM + "ComplexType": {"Name", "BaseType", "Abstract", "OpenType"},
    EDM + "Key": set(), EDM + "PropertyRef": {"Name", "Alias"},
    EDM + "Property": {"Name", "Type", "Nullable", "MaxLength", "Precision", "Scale", "SRID", "DefaultValue", "Unicode"},
    EDM + "NavigationProperty": {"Name", "Type", "Nullable", "Partner", "ContainsTarget"},
    EDM + "ReferentialConstraint": {"Property", "ReferencedProperty"},
    EDM + "EntityContainer": {"Name", "Extends"},
    EDM + "EntitySet": {"Name", "EntityType", "IncludeInServiceDocument"},
    EDM + "NavigationPropertyBinding": {"Path", "Target"},
}
for el in root.iter():
    if el.tag not in allowed:
        err(f"unexpected element {el.tag}")
    elif set(el.attrib) - allowed[el.tag]:
        err(f"{el.tag} {el.get('Name')}: unexpected attributes {sorted(set(el.attrib) - allowed[el.tag])}")
prims = {"Edm." + t for t in "Binary Boolean Byte Date DateTimeOffset Decimal Double Duration Guid Int16 Int32 Int64 SByte Single Stream String TimeOfDay".split()}
schemas = root.findall(f"{EDMX}DataServices/{EDM}Schema")
if len(schemas) != 1:
    err(f"expected one Schema, found {len(schemas)}")
schema = schemas[0]
ns = schema.get("Namespace")
names = [c.get("Name") for c in schema]
if len(names) != len(set(names)):
    err(f"duplicate schema child names: {sorted(n for n in names if names.count(n) > 1)}")
entity = {e.get("Name"): e for e in schema.findall(EDM + "EntityType")}
complex_ = {c.get("Name") for c in schema.findall(EDM + "ComplexType")}
def local(t):
    return t[len(ns) + 1:] if t and t.startswith(ns + ".") else None
navs = {}
for name, e in entity.items():
    props = {p.get("Name"): p for p in e.findall(EDM + "Property")}
    nps = {n.get("Name"): n for n in e.findall(EDM + "NavigationProperty")}
    members = [p.get("Name") for p in e.findall(EDM + "Property")] + [n.get("Name") for n in e.findall(EDM + "NavigationProperty")]
    for m in set(members):
        if members.count(m) > 1:
            err(f"{name}: '{m}' is declared {members.count(m)} times (a property and a navigation property may not share a name)")
    keys = e.findall(f"{EDM}Key/{EDM}PropertyRef")
    if not keys:
        err(f"{name}: no key")
    for k in keys:
        p = props.get(k.get("Name"))
        if p is None:
            err(f"{name}: key {k.get('Name')} is not a property")
        elif p.get("Nullable", "true") != "false":
            err(f"{name}: key {k.get('Name')} must be Nullable=\"false\"")
    for p in props.values():
        t = p.get("Type")
        if t not in prims and local(t) not in complex_:
            err(f"{name}.{p.get('Name')}: unknown type {t}")
        if p.get("Nullable") not in (None, "true", "false"):
            err(f"{name}.{p.get('Name')}: Nullable must be true or false")
    for n in nps.values():
        t = n.get("Type")
        many = t.startswith("Collection(")
        target = local(t[11:-1] if many else t)
        if target not in entity:
            err(f"{name}.{n.get('Name')}: type {t} is not an entity type")
        if many and n.get("Nullable") is not None:
            err(f"{name}.{n.get('Name')}: a collection navigation has no Nullable")
        for rc in n.findall(EDM + "ReferentialConstraint"):
            if rc.get("Property") not in props:
                err(f"{name}.{n.get('Name')}: constraint property {rc.get('Property')} is not a property")
            if target in entity and rc.get("ReferencedProperty") not in {p.get("Name") for p in entity[target].findall(EDM + "Property")}:
                err(f"{name}.{n.get('Name')}: referenced property {rc.get('ReferencedProperty')} is not a property of {target}")
        navs[(name, n.get("Name"))] = (target, n.get("Partner"))
for (name, nav), (target, partner) in navs.items():
    if partner is None:
        continue
    back = navs.get((target, partner))
    if back is None:
        err(f"{name}.{nav}: partner {target}.{partner} does not exist")
    elif back[0] != name or back[1] not in (None, nav):
        err(f"{name}.{nav}: partner {target}.{partner} does not point back")
containers = schema.findall(EDM + "EntityContainer")
if len(containers) != 1:
    err(f"expected one EntityContainer, found {len(containers)}")
sets = {s.get("Name"): s for s in containers[0].findall(EDM + "EntitySet")}
set_type = {n: local(s.get("EntityType")) for n, s in sets.items()}
for n, t in set_type.items():
    if t not in entity:
        err(f"entity set {n}: unknown type {sets[n].get('EntityType')}")
        continue
    bindings = {b.get("Path"): b.get("Target") for b in sets[n].findall(EDM + "NavigationPropertyBinding")}
    for (ename, nav), (target, _) in navs.items():
        if ename != t:
            continue
        if nav not in bindings:
            err(f"entity set {n}: no NavigationPropertyBinding for {nav}")
        elif set_type.get(bindings[nav]) != target:
            err(f"entity set {n}: binding {nav} targets {bindings[nav]}, not a set of {target}")
    for path in bindings:
        if (t, path) not in navs:
            err(f"entity set {n}: binding path {path} is not a navigation of {t}")
for e in errors:
    print("CSDL:", e, file=sys.stderr)
if errors:
    sys.exit(1)
print(f"csdl: well-formed, {len(entity)} entity types, {len(navs)} navigation properties, {len(sets)} entity sets, structural rules hold")
PY
log "api specs: /openapi.json is valid OpenAPI 3.1 covering every route; /v1/\$metadata is well-formed CSDL that passes the structural rules"
