//! What a user of the API sees, checked against a real database: each
//! function renders queries, runs them on `db` and asserts the JSON rows.

use super::{DevicesPublic, FleetsPublic, Nothing, Owner, SCHEMA};
use crate::common::Db;
use resin_odata::{parse_query, render_count, render_select, Access, AllowAll, Value};
use serde_json::{json, Value as J};

pub fn get(db: &mut dyn Db, set: &str, query: &str, access: &dyn Access) -> Vec<J> {
    let q = parse_query(query).unwrap_or_else(|e| panic!("parse {query}: {e}"));
    let sql = render_select(&SCHEMA, set, None, &q, access, db.dialect())
        .unwrap_or_else(|e| panic!("render {query}: {e}"));
    db.rows(&sql)
}

pub fn count(db: &mut dyn Db, set: &str, query: &str, access: &dyn Access) -> i64 {
    let q = parse_query(query).unwrap_or_else(|e| panic!("parse {query}: {e}"));
    let sql = render_count(&SCHEMA, set, &q, access, db.dialect())
        .unwrap_or_else(|e| panic!("render {query}: {e}"));
    db.count(&sql)
}

fn ids(rows: &[J]) -> Vec<i64> {
    rows.iter()
        .map(|r| r["id"].as_i64().unwrap_or(-1))
        .collect()
}

pub fn whole_entities_with_typed_json(db: &mut dyn Db) {
    let rows = get(db, "device", "$filter=id eq 100", &AllowAll);
    assert_eq!(
        rows,
        vec![
            json!({"id": 100, "name": "O'Brien", "fleet": 10, "is_online": true,
            "last_seen": "2024-03-01T10:00:00Z", "cpu_temp": 40.5, "note": "x"})
        ]
    );
    let rows = get(db, "device", "$filter=id eq 101", &AllowAll);
    assert_eq!(rows[0]["is_online"], json!(false));
    assert_eq!(rows[0]["cpu_temp"], J::Null);
    // Hidden fields never come out.
    let rows = get(db, "user", "", &AllowAll);
    assert_eq!(
        rows,
        vec![
            json!({"id": 1, "username": "alice", "created_at": "2024-01-01T00:00:00Z"}),
            json!({"id": 2, "username": "bob", "created_at": "2024-02-01T00:00:00Z"}),
        ]
    );
}

pub fn json_columns_are_embedded(db: &mut dyn Db) {
    let rows = get(
        db,
        "fleet",
        "$select=id,config&$filter=id in (10, 11)",
        &AllowAll,
    );
    assert_eq!(
        rows,
        vec![
            json!({"id": 10, "config": {"a": [1, 2], "b": {"c": true}}}),
            json!({"id": 11, "config": null}),
        ]
    );
}

pub fn row_filters_hide_other_owners(db: &mut dyn Db) {
    assert_eq!(ids(&get(db, "device", "", &Owner(1))), vec![100, 101, 102]);
    assert_eq!(ids(&get(db, "device", "", &Owner(2))), vec![200]);
    assert_eq!(ids(&get(db, "fleet", "", &Owner(2))), vec![20]);
    assert!(get(db, "device", "", &Nothing).is_empty());
    assert_eq!(count(db, "device", "", &Owner(1)), 3);
    assert_eq!(count(db, "device", "", &Nothing), 0);
    // Bob asking for alice's device by filter gets nothing.
    assert!(get(db, "device", "$filter=id eq 100", &Owner(2)).is_empty());
}

pub fn by_key(db: &mut dyn Db) {
    let q = parse_query("$select=name").unwrap_or_default();
    let key = resin_odata::parse_key("100").unwrap_or(Value::Null);
    let sql = render_select(&SCHEMA, "device", Some(&key), &q, &Owner(1), db.dialect())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(db.rows(&sql), vec![json!({"name": "O'Brien"})]);
    let sql = render_select(&SCHEMA, "device", Some(&key), &q, &Owner(2), db.dialect())
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        db.rows(&sql).is_empty(),
        "bob must not read alice's device by key"
    );
}

pub fn filters(db: &mut dyn Db) {
    let a = &AllowAll;
    let cases: &[(&str, &[i64])] = &[
        ("$filter=name eq 'O''Brien'", &[100]),
        ("$filter=name ne 'O''Brien' and fleet eq 10", &[101]),
        ("$filter=is_online eq true", &[100, 102, 200]),
        ("$filter=is_online", &[100, 102, 200]),
        ("$filter=not is_online", &[101]),
        ("$filter=is_online eq false or cpu_temp gt 60", &[101, 102]),
        ("$filter=cpu_temp gt 40", &[100, 102, 200]),
        ("$filter=cpu_temp ge 40.5 and cpu_temp lt 61", &[100, 200]),
        ("$filter=cpu_temp eq null", &[101]),
        ("$filter=null ne cpu_temp and note eq 'x'", &[100, 200]),
        ("$filter=note in ('y', null)", &[101, 102]),
        ("$filter=id in (100, 102, 999)", &[100, 102]),
        ("$filter=last_seen gt 2024-01-01T00:00:00Z", &[100, 200]),
        ("$filter=last_seen le '2024-01-01'", &[101]),
        ("$filter=startswith(name, 'dev')", &[101, 102]),
        ("$filter=endswith(name, 'dev')", &[200]),
        ("$filter=contains(name, '_')", &[102]),
        ("$filter=contains(name, '-')", &[101, 200]),
        ("$filter=contains(name, 'brien')", &[100]),
        ("$filter=not (contains(name, 'dev') or id eq 100)", &[]),
        (
            "$filter=(id eq 100 or id eq 101) and not (is_online eq false)",
            &[100],
        ),
        (
            "$filter=id eq 100 or id eq 101 and is_online eq false",
            &[100, 101],
        ),
        ("$filter=name eq 'x''; DROP TABLE device; --'", &[]),
    ];
    for (query, want) in cases {
        assert_eq!(ids(&get(db, "device", query, a)), *want, "{query}");
    }
    // LIKE wildcards in the argument are literal characters.
    assert_eq!(
        ids(&get(db, "fleet", "$filter=contains(name, '50%25')", a)),
        vec![11]
    );
    assert_eq!(
        ids(&get(db, "fleet", "$filter=contains(name, '%25')", a)),
        vec![11]
    );
    assert_eq!(
        ids(&get(
            db,
            "fleet",
            "$filter=name eq 'Z%C3%BCrich+%E6%97%A5%E6%9C%AC'",
            a
        )),
        vec![10]
    );
    // The table survived the injection attempt above.
    assert_eq!(count(db, "device", "", a), 4);
}

pub fn navigation_in_filter_respects_access(db: &mut dyn Db) {
    let q = "$filter=fleet/name eq 'bobfleet'";
    assert_eq!(ids(&get(db, "device", q, &AllowAll)), vec![200]);
    assert!(get(db, "device", q, &Owner(1)).is_empty());
    assert_eq!(ids(&get(db, "device", q, &Owner(2))), vec![200]);
    assert_eq!(
        ids(&get(
            db,
            "device",
            "$filter=fleet/owner eq 1 and fleet/id ne 11",
            &AllowAll
        )),
        vec![100, 101]
    );
}

pub fn navigation_cannot_see_hidden_rows(db: &mut dyn Db) {
    // Every device is visible to bob, but alice's fleets are not.
    let all = get(db, "device", "", &DevicesPublic(2));
    assert_eq!(ids(&all), vec![100, 101, 102, 200]);
    assert!(get(
        db,
        "device",
        "$filter=fleet/name eq 'Zürich 日本'",
        &DevicesPublic(2)
    )
    .is_empty());
    assert!(get(
        db,
        "device",
        "$filter=startswith(fleet/name, 'Z')",
        &DevicesPublic(2)
    )
    .is_empty());
    assert!(get(db, "device", "$filter=fleet/owner eq 1", &DevicesPublic(2)).is_empty());
    assert_eq!(
        ids(&get(
            db,
            "device",
            "$filter=fleet/owner eq 2",
            &DevicesPublic(2)
        )),
        vec![200]
    );
    // Alice sees her own through the same navigation.
    assert_eq!(
        ids(&get(
            db,
            "device",
            "$filter=fleet/name eq 'Zürich 日本'",
            &DevicesPublic(1)
        )),
        vec![100, 101]
    );
    // A hidden fleet never satisfies a null test either.
    assert!(get(
        db,
        "device",
        "$filter=fleet/config eq null and id eq 100",
        &DevicesPublic(2)
    )
    .is_empty());
    // $expand of a hidden fleet gives null, a visible one the object.
    let rows = get(
        db,
        "device",
        "$select=id&$expand=fleet($select=name)",
        &DevicesPublic(2),
    );
    assert_eq!(
        rows,
        vec![
            json!({"id": 100, "fleet": null}),
            json!({"id": 101, "fleet": null}),
            json!({"id": 102, "fleet": null}),
            json!({"id": 200, "fleet": {"name": "bobfleet"}}),
        ]
    );
    // A hidden fleet's name sorts as null (last when descending).
    let rows = get(
        db,
        "device",
        "$select=id&$orderby=fleet/name desc",
        &DevicesPublic(2),
    );
    assert_eq!(ids(&rows), vec![200, 100, 101, 102]);
}

pub fn expand_to_many_respects_access(db: &mut dyn Db) {
    // Every fleet is visible to bob; devices only in his own.
    let rows = get(
        db,
        "fleet",
        "$select=id&$expand=devices($select=id)",
        &FleetsPublic(2),
    );
    assert_eq!(
        rows,
        vec![
            json!({"id": 10, "devices": []}),
            json!({"id": 11, "devices": []}),
            json!({"id": 20, "devices": [{"id": 200}]}),
        ]
    );
}

pub fn expand_nested(db: &mut dyn Db) {
    let rows = get(
        db,
        "device",
        "$select=name&$filter=id eq 100&$expand=fleet($select=name;$expand=owner($select=username))",
        &Owner(1),
    );
    assert_eq!(
        rows,
        vec![
            json!({"name": "O'Brien", "fleet": {"name": "Zürich 日本", "owner": {"username": "alice"}}})
        ]
    );
    let rows = get(
        db,
        "user",
        "$select=username&$expand=fleets($select=name;$orderby=id desc;$expand=devices($select=name;$filter=is_online eq true;$orderby=name))",
        &Owner(1),
    );
    assert_eq!(
        rows,
        vec![json!({"username": "alice", "fleets": [
            {"name": "alpha_50%", "devices": [{"name": "dev_c"}]},
            {"name": "Zürich 日本", "devices": [{"name": "O'Brien"}]},
        ]})]
    );
    // Nested $top/$skip, and a nested filter that matches nothing.
    let rows = get(
        db,
        "fleet",
        "$select=id&$filter=id eq 10&$expand=devices($select=id;$orderby=id desc;$top=1),owner($filter=username eq 'nobody')",
        &AllowAll,
    );
    assert_eq!(
        rows,
        vec![json!({"id": 10, "devices": [{"id": 101}], "owner": null})]
    );
    let rows = get(
        db,
        "fleet",
        "$select=id&$filter=id eq 10&$expand=devices($select=id;$skip=1)",
        &AllowAll,
    );
    assert_eq!(rows, vec![json!({"id": 10, "devices": [{"id": 101}]})]);
}

pub fn ordering_and_paging(db: &mut dyn Db) {
    let a = &AllowAll;
    assert_eq!(
        ids(&get(
            db,
            "device",
            "$orderby=is_online desc,cpu_temp asc",
            a
        )),
        vec![100, 200, 102, 101]
    );
    assert_eq!(
        ids(&get(db, "device", "$orderby=fleet desc,id desc", a)),
        vec![200, 102, 101, 100]
    );
    assert_eq!(
        ids(&get(db, "device", "$orderby=cpu_temp desc", a)),
        vec![102, 200, 100, 101]
    );
    assert_eq!(
        ids(&get(db, "device", "$orderby=cpu_temp", a)),
        vec![101, 100, 200, 102]
    );
    assert_eq!(
        ids(&get(db, "device", "$orderby=fleet/owner desc", a)),
        vec![200, 100, 101, 102]
    );
    assert_eq!(ids(&get(db, "device", "$top=2", a)), vec![100, 101]);
    assert_eq!(ids(&get(db, "device", "$top=2&$skip=1", a)), vec![101, 102]);
    assert_eq!(ids(&get(db, "device", "$skip=3", a)), vec![200]);
    assert_eq!(ids(&get(db, "device", "$top=0", a)), Vec::<i64>::new());
    // $count ignores paging.
    assert_eq!(
        count(
            db,
            "device",
            "$top=1&$skip=1&$count=true&$filter=is_online",
            a
        ),
        3
    );
}

/// OData's null semantics (issue 15): comparisons are true or false, never
/// SQL's unknown, so `ne` and `not` keep the rows whose property is null.
pub fn null_semantics(db: &mut dyn Db) {
    let a = &AllowAll;
    // note: 100 'x', 101 null, 102 'y', 200 'x'; cpu_temp: 100 40.5,
    // 101 null, 102 61.0, 200 55.25; last_seen: 102 null.
    let cases: &[(&str, &[i64])] = &[
        ("$filter=note ne 'x'", &[101, 102]),
        ("$filter='x' ne note", &[101, 102]),
        ("$filter=not (note eq 'x')", &[101, 102]),
        ("$filter=cpu_temp ne 40.5", &[101, 102, 200]),
        ("$filter=not (cpu_temp gt 50)", &[100, 101]),
        (
            "$filter=not (cpu_temp lt 50) and not (cpu_temp ge 50)",
            &[101],
        ),
        ("$filter=not (note in ('x'))", &[101, 102]),
        ("$filter=not (note in ('x', null))", &[102]),
        ("$filter=note eq note", &[100, 101, 102, 200]),
        ("$filter=note ne name", &[100, 101, 102, 200]),
        ("$filter=not (note ne note)", &[100, 101, 102, 200]),
        (
            "$filter=not (last_seen gt 2024-01-01T00:00:00Z)",
            &[101, 102],
        ),
        ("$filter=note eq 'x'", &[100, 200]),
        ("$filter=cpu_temp gt 50", &[102, 200]),
    ];
    for (query, want) in cases {
        assert_eq!(ids(&get(db, "device", query, a)), *want, "{query}");
        let n = i64::try_from(want.len()).unwrap_or_default();
        assert_eq!(count(db, "device", query, a), n, "$count of {query}");
    }
}

/// Timestamps compare as instants (issue 15): fractions, offsets and dates
/// name the same instant as the stored `…Z` text.
pub fn timestamps_compare_as_instants(db: &mut dyn Db) {
    let a = &AllowAll;
    // last_seen: 100 2024-03-01T10:00:00Z, 101 2023-12-31T23:59:59Z,
    // 102 null, 200 2024-05-05T05:05:05Z.
    let cases: &[(&str, &[i64])] = &[
        ("$filter=last_seen eq 2024-03-01T10:00:00Z", &[100]),
        ("$filter=last_seen eq 2024-03-01T10:00:00.000Z", &[100]),
        ("$filter=last_seen eq 2024-03-01T12:00:00%2B02:00", &[100]),
        ("$filter=last_seen eq '2024-03-01T05:30:00-04:30'", &[100]),
        ("$filter=last_seen gt 2024-03-01T10:00:00.5Z", &[200]),
        ("$filter=last_seen ge 2024-03-01T10:00:00.000Z", &[100, 200]),
        ("$filter=last_seen lt 2024-01-01", &[101]),
        // 2023-12-31T23:00:00Z: device 101's 23:59:59Z is after it.
        (
            "$filter=last_seen gt 2024-01-01T01:00:00%2B02:00",
            &[100, 101, 200],
        ),
        (
            "$filter=last_seen in (2024-03-01T10:00:00.000Z, 2023-12-31T23:59:59Z)",
            &[100, 101],
        ),
    ];
    for (query, want) in cases {
        assert_eq!(ids(&get(db, "device", query, a)), *want, "{query}");
    }
}

/// Every scenario, for the PostgreSQL test that runs them on one schema.
pub fn all(db: &mut dyn Db) {
    whole_entities_with_typed_json(db);
    json_columns_are_embedded(db);
    row_filters_hide_other_owners(db);
    by_key(db);
    filters(db);
    null_semantics(db);
    timestamps_compare_as_instants(db);
    navigation_in_filter_respects_access(db);
    navigation_cannot_see_hidden_rows(db);
    expand_to_many_respects_access(db);
    expand_nested(db);
    ordering_and_paging(db);
}
