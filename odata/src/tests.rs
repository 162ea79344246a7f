//! Unit tests of the tokenizer, parser and renderer (SQL shape, errors).

use crate::*;

fn path(s: &str) -> Expr {
    Expr::Path(s.split('/').map(str::to_string).collect())
}
fn int(i: i64) -> Expr {
    Expr::Literal(Value::Int(i))
}
fn text(s: &str) -> Expr {
    Expr::Literal(Value::Text(s.to_string()))
}
fn cmp(op: CmpOp, l: Expr, r: Expr) -> Expr {
    Expr::Compare {
        op,
        left: Box::new(l),
        right: Box::new(r),
    }
}
fn filter(q: &str) -> Expr {
    parse_query(q)
        .unwrap_or_else(|e| panic!("{q}: {e}"))
        .filter
        .unwrap_or_else(|| panic!("{q}: no filter"))
}
fn err(q: &str) -> ParseError {
    match parse_query(q) {
        Ok(o) => panic!("{q} parsed: {o:?}"),
        Err(e) => e,
    }
}

#[test]
fn string_literals_quoting_unicode_and_encoding() {
    assert_eq!(
        filter("$filter=name eq 'O''Brien'"),
        cmp(CmpOp::Eq, path("name"), text("O'Brien"))
    );
    assert_eq!(
        filter("$filter=name eq ''"),
        cmp(CmpOp::Eq, path("name"), text(""))
    );
    assert_eq!(
        filter("$filter=name eq ''''"),
        cmp(CmpOp::Eq, path("name"), text("'"))
    );
    assert_eq!(
        filter("$filter=name%20eq%20'Z%C3%BCrich+%E6%97%A5%E6%9C%AC'"),
        cmp(CmpOp::Eq, path("name"), text("Zürich 日本"))
    );
    assert_eq!(
        filter("$filter=name eq 'Zürich 日本'"),
        cmp(CmpOp::Eq, path("name"), text("Zürich 日本"))
    );
    assert_eq!(
        filter("%24filter=name+eq+'a+b%2Bc%26d'"),
        cmp(CmpOp::Eq, path("name"), text("a b+c&d"))
    );
    // '&' inside an encoded value does not split options; a raw one does.
    assert_eq!(
        filter("?$filter=name eq 'a%26b'&follow=true"),
        cmp(CmpOp::Eq, path("name"), text("a&b"))
    );
}

#[test]
fn literals() {
    assert_eq!(
        filter("$filter=a eq -12"),
        cmp(CmpOp::Eq, path("a"), int(-12))
    );
    assert_eq!(
        filter("$filter=a eq 1.5"),
        cmp(CmpOp::Eq, path("a"), Expr::Literal(Value::Float(1.5)))
    );
    assert_eq!(
        filter("$filter=a eq 2e3"),
        cmp(CmpOp::Eq, path("a"), Expr::Literal(Value::Float(2000.0)))
    );
    assert_eq!(
        filter("$filter=a eq true"),
        cmp(CmpOp::Eq, path("a"), Expr::Literal(Value::Bool(true)))
    );
    assert_eq!(
        filter("$filter=a ne null"),
        cmp(CmpOp::Ne, path("a"), Expr::Literal(Value::Null))
    );
    assert_eq!(
        filter("$filter=t gt 2024-01-02T03:04:05.123%2B01:00"),
        cmp(CmpOp::Gt, path("t"), text("2024-01-02T03:04:05.123+01:00"))
    );
    assert_eq!(
        filter("$filter=t lt 2024-01-02"),
        cmp(CmpOp::Lt, path("t"), text("2024-01-02"))
    );
    assert_eq!(
        filter("$filter=t ge 2024-01-02T03:04:05Z"),
        cmp(CmpOp::Ge, path("t"), text("2024-01-02T03:04:05Z"))
    );
    let e = err("$filter=a eq 99999999999999999999");
    assert!(e.to_string().contains("out of range"), "{e}");
    let e = err("$filter=t gt 2024-13");
    assert!(e.to_string().contains("date/time"), "{e}");
}

#[test]
fn precedence_not_over_comparison_over_and_over_or() {
    // a eq 1 or (b eq 2 and ((not c) eq 3)), as in the OData spec's table.
    let want = Expr::Or(vec![
        cmp(CmpOp::Eq, path("a"), int(1)),
        Expr::And(vec![
            cmp(CmpOp::Eq, path("b"), int(2)),
            cmp(CmpOp::Eq, Expr::Not(Box::new(path("c"))), int(3)),
        ]),
    ]);
    assert_eq!(filter("$filter=a eq 1 or b eq 2 and not c eq 3"), want);
    let want = Expr::And(vec![
        Expr::Or(vec![
            cmp(CmpOp::Eq, path("a"), int(1)),
            cmp(CmpOp::Eq, path("b"), int(2)),
        ]),
        Expr::Not(Box::new(cmp(CmpOp::Eq, path("c"), int(3)))),
    ]);
    assert_eq!(filter("$filter=(a eq 1 or b eq 2) and not (c eq 3)"), want);
    assert_eq!(
        filter("$filter=a eq 1 and b eq 2 and c eq 3"),
        Expr::And(vec![
            cmp(CmpOp::Eq, path("a"), int(1)),
            cmp(CmpOp::Eq, path("b"), int(2)),
            cmp(CmpOp::Eq, path("c"), int(3))
        ])
    );
}

#[test]
fn functions_in_and_navigation() {
    assert_eq!(
        filter("$filter=contains(name,'x') or startswith(name, 'y') or endswith(fleet/name,'z')"),
        Expr::Or(vec![
            Expr::Call {
                func: Func::Contains,
                args: vec![path("name"), text("x")]
            },
            Expr::Call {
                func: Func::StartsWith,
                args: vec![path("name"), text("y")]
            },
            Expr::Call {
                func: Func::EndsWith,
                args: vec![path("fleet/name"), text("z")]
            },
        ])
    );
    assert_eq!(
        filter("$filter=id in (1, 2,3)"),
        Expr::In {
            target: Box::new(path("id")),
            list: vec![Value::Int(1), Value::Int(2), Value::Int(3)]
        }
    );
    assert_eq!(
        filter("$filter=name in ('a', null)"),
        Expr::In {
            target: Box::new(path("name")),
            list: vec![Value::Text("a".into()), Value::Null]
        }
    );
    let e = err("$filter=devices/any(d:d/name eq 'x')");
    assert!(e.to_string().contains("'any' is not supported"), "{e}");
    let e = err("$filter=tolower(name) eq 'x'");
    assert_eq!(
        e.to_string(),
        "$filter: unknown function 'tolower' at position 1"
    );
    let e = err("$filter=contains(name)");
    assert!(e.to_string().contains("takes 2 arguments"), "{e}");
}

#[test]
fn errors_say_what_and_where() {
    let e = err("$filter=(name eq 'a'");
    assert_eq!(e.option, "$filter");
    assert_eq!(
        e.to_string(),
        "$filter: expected ')', found end of input at position 13"
    );
    let e = err("$filter=name eq 'abc");
    assert_eq!(
        e.to_string(),
        "$filter: unterminated string literal at position 9"
    );
    let e = err("$filter=name eq");
    assert_eq!(
        e.to_string(),
        "$filter: expected a property, literal, function or '(', found end of input at position 8"
    );
    let e = err("$filter=name eq 'x' foo");
    assert_eq!(e.position, Some(13));
    assert!(e.message.contains("expected 'and', 'or'"), "{e}");
    // Positions count characters of the decoded value, not bytes.
    let e = err("$filter=name eq 'Zürich' )");
    assert_eq!(e.position, Some(18), "{e}");
    let e = err("$filter=a eq 1 eq 2");
    assert!(e.message.contains("cannot be chained"), "{e}");
    let e = err("$filter=a eq #");
    assert_eq!(
        e.to_string(),
        "$filter: unexpected character '#' at position 6"
    );
    let e = err("$filter=a%ZZ");
    assert!(
        e.to_string()
            .starts_with("$filter: invalid percent-encoding"),
        "{e}"
    );
    let e = err("$filter=%FF%FE");
    assert!(e.to_string().contains("UTF-8"), "{e}");
    let e = err("$expand=device($filter=name eq )");
    assert_eq!(e.option, "$expand/device/$filter");
    assert_eq!(e.position, Some(8));
}

#[test]
fn depth_and_size_limits() {
    let deep = format!("$filter={}a eq 1{}", "(".repeat(10_000), ")".repeat(10_000));
    let e = err(&deep);
    assert!(e.message.contains("nested too deeply"), "{e}");
    let nots = format!("$filter={}a", "not ".repeat(10_000));
    assert!(err(&nots).message.contains("nested too deeply"));
    let calls = format!("$filter={}", "contains(".repeat(5_000));
    assert!(err(&calls).message.contains("nested too deeply"));
    let ok = format!(
        "$filter={}a eq 1{}",
        "(".repeat(MAX_DEPTH),
        ")".repeat(MAX_DEPTH)
    );
    assert!(parse_query(&ok).is_ok());
    let wide = format!("$filter=a eq 1{}", " and a eq 1".repeat(2_000));
    assert!(err(&wide).message.contains("too large"));
    let expand = format!("$expand={}", "a($expand=".repeat(50));
    assert!(parse_query(&expand).is_err());
    let expand = format!("$expand={}b{}", "a($expand=".repeat(20), ")".repeat(20));
    assert!(err(&expand).message.contains("nested too deeply"));
    let huge = format!("$filter=name eq '{}'", "x".repeat(MAX_QUERY_LEN));
    assert!(err(&huge).message.contains("longer than"));
}

#[test]
fn expand_with_nested_options() {
    let q =
        parse_query("$expand=device($select=name;$filter=is_online eq true;$expand=fleet),owner")
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(q.expand.len(), 2);
    let d = &q.expand[0];
    assert_eq!(d.nav, "device");
    assert_eq!(d.options.select, Some(vec!["name".to_string()]));
    assert_eq!(
        d.options.filter,
        Some(cmp(
            CmpOp::Eq,
            path("is_online"),
            Expr::Literal(Value::Bool(true))
        ))
    );
    assert_eq!(
        d.options.expand,
        vec![Expand {
            nav: "fleet".into(),
            options: QueryOptions::default()
        }]
    );
    assert_eq!(
        q.expand[1],
        Expand {
            nav: "owner".into(),
            options: QueryOptions::default()
        }
    );
    // Separators inside string literals and deeper parentheses stay put.
    let q = parse_query(
        "$expand=device($filter=name eq 'a;b,c)' and (id eq 1);$top=2;$skip=1;$orderby=id desc)",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let o = &q.expand[0].options;
    assert_eq!((o.top, o.skip), (Some(2), Some(1)));
    assert_eq!(
        o.orderby,
        vec![OrderBy {
            path: vec!["id".into()],
            desc: true
        }]
    );
    assert!(
        matches!(&o.filter, Some(Expr::And(v)) if v[0] == cmp(CmpOp::Eq, path("name"), text("a;b,c)")))
    );
    for (bad, what) in [
        (
            "$expand=device($count=true)",
            "$count is not supported inside $expand",
        ),
        (
            "$expand=device($levels=2)",
            "unknown query option '$levels'",
        ),
        ("$expand=device($top=1;$top=2)", "given more than once"),
        ("$expand=device(", "never closed"),
        ("$expand=device)", "unbalanced"),
        ("$expand=fleet/owner", "not a navigation name"),
        ("$expand=*", "not supported"),
        ("$expand=device,device", "expanded twice"),
        ("$expand=", "expected a navigation name"),
    ] {
        let e = err(bad);
        assert!(e.to_string().contains(what), "{bad}: {e}");
    }
}

#[test]
fn select_orderby_top_skip_count() {
    let q = parse_query(
        "$select=name, id,name&$orderby=fleet/name desc, id,name asc&$top=10&$skip=20&$count=true",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(q.select, Some(vec!["name".to_string(), "id".to_string()]));
    assert_eq!(
        q.orderby,
        vec![
            OrderBy {
                path: vec!["fleet".into(), "name".into()],
                desc: true
            },
            OrderBy {
                path: vec!["id".into()],
                desc: false
            },
            OrderBy {
                path: vec!["name".into()],
                desc: false
            },
        ]
    );
    assert_eq!((q.top, q.skip, q.count), (Some(10), Some(20), true));
    assert_eq!(parse_query("$select=*").map(|q| q.select), Ok(None));
    assert_eq!(parse_query("$count=false").map(|q| q.count), Ok(false));
    assert_eq!(parse_query(""), Ok(QueryOptions::default()));
    assert_eq!(
        parse_query("follow=true&x=%ZZ&&"),
        Ok(QueryOptions::default())
    );
    for (bad, what) in [
        (
            "$top=-1",
            "$top: expected a non-negative integer, found '-1' at position 1",
        ),
        ("$top=abc", "$top: expected a non-negative integer"),
        ("$skip=99999999999999999999", "$skip: integer out of range"),
        ("$count=yes", "$count: expected true or false"),
        (
            "$select=name,",
            "$select: expected a field name at position 6",
        ),
        (
            "$select=a b",
            "$select: 'a b' is not a field name at position 1",
        ),
        (
            "$orderby=name up",
            "$orderby: expected 'asc' or 'desc', found 'up'",
        ),
        ("$orderby=name desc id", "unexpected 'id'"),
        ("$orderby=,", "$orderby: expected a property at position 1"),
        ("$format=json", "$format: unknown query option '$format'"),
        ("$top=1&$top=2", "$top: given more than once"),
    ] {
        let e = err(bad);
        assert!(
            e.to_string().starts_with(what) || e.to_string().contains(what),
            "{bad}: {e}"
        );
    }
}

#[test]
fn keys() {
    assert_eq!(parse_key("42"), Ok(Value::Int(42)));
    assert_eq!(parse_key(" 'ab''c' "), Ok(Value::Text("ab'c".into())));
    assert!(parse_key("").is_err());
    assert!(parse_key("1 2").is_err());
    assert!(parse_key("true").is_err());
    assert_eq!(
        parse_key("x").map_err(|e| e.to_string()),
        Err("key: expected an integer or a 'string' key, found 'x' at position 1".into())
    );
}

// ---- rendering -----------------------------------------------------------

const fn f(name: &'static str, ty: FieldType) -> Field {
    Field {
        name,
        ty,
        column: name,
        filterable: true,
        selectable: true,
    }
}

static SCHEMA: Schema = Schema {
    sets: &[
        EntitySet {
            name: "fleet",
            table: "fleet",
            key: "id",
            fields: &[
                f("id", FieldType::Int),
                f("name", FieldType::Text),
                f("owner", FieldType::Int),
            ],
            navigations: &[Navigation {
                name: "devices",
                target: "device",
                kind: NavKind::ToMany {
                    remote_column: "fleet",
                },
            }],
        },
        EntitySet {
            name: "device",
            table: "device",
            key: "id",
            fields: &[
                f("id", FieldType::Int),
                f("name", FieldType::Text),
                f("fleet", FieldType::Int),
                f("is_online", FieldType::Bool),
                f("conf", FieldType::Json),
                Field {
                    name: "secret",
                    ty: FieldType::Text,
                    column: "secret",
                    filterable: false,
                    selectable: false,
                },
            ],
            navigations: &[Navigation {
                name: "fleet",
                target: "fleet",
                kind: NavKind::ToOne {
                    local_column: "fleet",
                },
            }],
        },
    ],
};

struct OwnerIs(i64);
impl Access for OwnerIs {
    fn row_filter(&self, set: &EntitySet) -> Option<RowFilter> {
        Some(RowFilter {
            sql: match set.name {
                "fleet" => "{t}.owner = $1".into(),
                _ => "{t}.fleet IN (SELECT id FROM fleet WHERE owner = $1)".into(),
            },
            params: vec![Value::Int(self.0)],
        })
    }
}

fn render(set: &str, q: &str, d: Dialect) -> Result<Sql, RenderError> {
    let q = parse_query(q).unwrap_or_else(|e| panic!("{q}: {e}"));
    render_select(&SCHEMA, set, None, &q, &OwnerIs(7), d)
}

/// The `$N` placeholders in textual order.
fn placeholders(sql: &str) -> Vec<usize> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' {
            let j = (i + 1..b.len())
                .find(|&j| !b[j].is_ascii_digit())
                .unwrap_or(b.len());
            if j > i + 1 {
                out.push(sql[i + 1..j].parse().unwrap_or(0));
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn sql_shape_sqlite() {
    let s = render(
        "device",
        "$select=name,is_online&$filter=fleet/name eq 'x' and contains(name,'a_b')&$top=5",
        Dialect::Sqlite,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.sql,
        "SELECT json_object('name', t0.\"name\", 'is_online', json(CASE WHEN t0.\"is_online\" IS NULL THEN 'null' WHEN t0.\"is_online\" THEN 'true' ELSE 'false' END)) AS json \
         FROM \"device\" AS t0 WHERE (t0.fleet IN (SELECT id FROM fleet WHERE owner = $1)) \
         AND ((EXISTS (SELECT 1 FROM \"fleet\" AS t1 WHERE t1.\"id\" = t0.\"fleet\" AND (t1.owner = $2) AND ((t1.\"name\" = $3) AND t1.\"name\" IS NOT NULL)) \
         OR (t0.\"fleet\" IS NULL AND ((NULL = $4) AND NULL IS NOT NULL))) \
         AND (t0.\"name\" LIKE $5 ESCAPE '\\')) ORDER BY t0.\"id\" ASC LIMIT $6"
    );
    assert_eq!(
        s.params,
        vec![
            Value::Int(7),
            Value::Int(7),
            Value::Text("x".into()),
            Value::Text("x".into()),
            Value::Text("%a\\_b%".into()),
            Value::Int(5)
        ]
    );
}

#[test]
fn sql_shape_postgres() {
    let s = render(
        "fleet",
        "$select=id&$expand=devices($select=conf;$filter=is_online;$orderby=name desc;$skip=2)",
        Dialect::Postgres,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.sql,
        "SELECT json_build_object('id', t0.\"id\", 'devices', (SELECT COALESCE(json_agg(j2.j), '[]'::json) FROM \
         (SELECT json_build_object('conf', t1.\"conf\"::json) AS j FROM \"device\" AS t1 WHERE t1.\"fleet\" = t0.\"id\" \
         AND (t1.fleet IN (SELECT id FROM fleet WHERE owner = $1)) AND t1.\"is_online\" \
         ORDER BY t1.\"name\" DESC NULLS LAST, t1.\"id\" ASC OFFSET $2::bigint) AS j2))::text AS json \
         FROM \"fleet\" AS t0 WHERE (t0.owner = $3) ORDER BY t0.\"id\" ASC"
    );
    let s = render(
        "device",
        "$filter=name eq 'a' and id gt 1.5 and is_online eq true and id in (1,2)",
        Dialect::Postgres,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        s.sql
            .contains("((t0.\"name\" = $2::text) AND t0.\"name\" IS NOT NULL)"),
        "{}",
        s.sql
    );
    assert!(
        s.sql
            .contains("((t0.\"id\" > $3::double precision) AND t0.\"id\" IS NOT NULL)"),
        "{}",
        s.sql
    );
    assert!(
        s.sql
            .contains("((t0.\"is_online\" = $4::boolean) AND t0.\"is_online\" IS NOT NULL)"),
        "{}",
        s.sql
    );
    assert!(
        s.sql
            .contains("(t0.\"id\" IN ($5::bigint, $6::bigint) AND t0.\"id\" IS NOT NULL)"),
        "{}",
        s.sql
    );
}

#[test]
fn literals_are_always_parameters_and_numbered_in_order() {
    let q = "$filter=name eq 'x'' OR 1=1 --' or fleet/name eq 'y' or id in (3, 4)&$expand=fleet($filter=name ne 'z')&$orderby=fleet/name&$top=1&$skip=2";
    for d in [Dialect::Sqlite, Dialect::Postgres] {
        let s = render("device", q, d).unwrap_or_else(|e| panic!("{e}"));
        assert!(!s.sql.contains("OR 1=1"), "{}", s.sql);
        assert!(!s.sql.contains("'x"), "{}", s.sql);
        let n = s.params.len();
        assert_eq!(
            placeholders(&s.sql),
            (1..=n).collect::<Vec<_>>(),
            "{}",
            s.sql
        );
        assert!(s.params.contains(&Value::Text("x' OR 1=1 --".into())));
    }
}

#[test]
fn int_literal_compared_with_float_binds_a_float() {
    static S: Schema = Schema {
        sets: &[EntitySet {
            name: "m",
            table: "m",
            key: "id",
            fields: &[f("id", FieldType::Int), f("t", FieldType::Float)],
            navigations: &[],
        }],
    };
    let q = parse_query("$filter=t gt 3").unwrap_or_default();
    let s = render_select(&S, "m", None, &q, &AllowAll, Dialect::Postgres)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.params, vec![Value::Float(3.0)]);
    assert!(
        s.sql.contains(
            "WHERE (1 = 1) AND ((t0.\"t\" > $1::double precision) AND t0.\"t\" IS NOT NULL)"
        ),
        "{}",
        s.sql
    );
}

#[test]
fn no_access_renders_false_and_count_ignores_paging() {
    struct No;
    impl Access for No {
        fn row_filter(&self, _: &EntitySet) -> Option<RowFilter> {
            None
        }
    }
    let q = parse_query("$filter=id eq 1&$top=3&$skip=4&$orderby=name").unwrap_or_default();
    let s =
        render_count(&SCHEMA, "device", &q, &No, Dialect::Sqlite).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        s.sql,
        "SELECT COUNT(*) AS count FROM \"device\" AS t0 WHERE (1 = 0) AND ((t0.\"id\" = $1) AND t0.\"id\" IS NOT NULL)"
    );
    assert_eq!(s.params, vec![Value::Int(1)]);
}

#[test]
fn render_errors() {
    let cases: &[(&str, &str, &str)] = &[
        ("nope", "", "unknown entity set 'nope'"),
        (
            "device",
            "$filter=colour eq 'red'",
            "'device' has no field 'colour'",
        ),
        ("device", "$select=colour", "'device' has no field 'colour'"),
        (
            "device",
            "$expand=owner",
            "'device' has no navigation 'owner'",
        ),
        (
            "device",
            "$filter=owner/name eq 'x'",
            "'device' has no navigation 'owner'",
        ),
        (
            "device",
            "$filter=fleet/colour eq 'x'",
            "'fleet' has no field 'colour'",
        ),
        (
            "device",
            "$filter=name gt 3",
            "type mismatch: cannot compare name (string) gt 3 (integer)",
        ),
        ("device", "$filter=is_online gt false", "cannot compare"),
        ("device", "$filter=id eq 'x'", "cannot compare"),
        (
            "device",
            "$filter=id lt null",
            "null can only be used with eq and ne",
        ),
        (
            "device",
            "$filter=conf eq 'x'",
            "json fields can only be compared with null",
        ),
        (
            "device",
            "$filter=id in ('a')",
            "'in' list value 'a' (string) does not fit id (integer)",
        ),
        (
            "device",
            "$filter=contains(id, '1')",
            "contains needs a string",
        ),
        (
            "device",
            "$filter=contains(name, fleet/name)",
            "must be a string literal",
        ),
        ("device", "$filter=name", "$filter must be a condition"),
        ("device", "$filter=not name", "'not' needs a condition"),
        ("device", "$filter=id eq 1 and 3", "'and' needs conditions"),
        (
            "device",
            "$filter=secret eq 'x'",
            "field 'secret' of 'device' cannot be used in $filter",
        ),
        (
            "device",
            "$orderby=secret",
            "cannot be used in $filter or $orderby",
        ),
        (
            "device",
            "$select=secret",
            "field 'secret' of 'device' cannot be selected",
        ),
        (
            "device",
            "$filter=fleet/devices/name eq 'x'",
            "only one navigation hop",
        ),
        (
            "fleet",
            "$filter=devices/name eq 'x'",
            "navigation 'devices' of 'fleet' is to-many and cannot be used in $filter",
        ),
        ("fleet", "$filter=devices eq 1", "is to-many"),
        (
            "fleet",
            "$orderby=devices/name",
            "navigation 'devices' of 'fleet' is to-many and cannot be used in $orderby",
        ),
        ("device", "$filter=fleet eq null and fleet/id eq 1", ""),
        (
            "device",
            "$expand=fleet($top=1)",
            "to-one expansion 'fleet'",
        ),
        (
            "device",
            "$filter=(id eq 1) in (true, null)",
            "the left side of 'in' must be a property",
        ),
        (
            "device",
            "$filter=1 in (1)",
            "the left side of 'in' must be a property",
        ),
        (
            "device",
            "$expand=fleet($expand=devices($filter=nope eq 1))",
            "'device' has no field 'nope'",
        ),
    ];
    for (set, q, want) in cases {
        for d in [Dialect::Sqlite, Dialect::Postgres] {
            match render(set, q, d) {
                Ok(s) if want.is_empty() => assert!(!s.sql.is_empty()),
                Ok(s) => panic!("{set}?{q} rendered: {}", s.sql),
                Err(e) => assert!(
                    !want.is_empty() && e.to_string().contains(want),
                    "{set}?{q}: {e}"
                ),
            }
        }
    }
    let k = render_select(
        &SCHEMA,
        "device",
        Some(&Value::Text("a".into())),
        &QueryOptions::default(),
        &AllowAll,
        Dialect::Sqlite,
    );
    assert!(matches!(k, Err(RenderError::TypeMismatch(_))), "{k:?}");
}

#[test]
fn bad_row_filters_are_errors_not_panics() {
    struct Bad(&'static str);
    impl Access for Bad {
        fn row_filter(&self, _: &EntitySet) -> Option<RowFilter> {
            Some(RowFilter {
                sql: self.0.into(),
                params: vec![Value::Int(1)],
            })
        }
    }
    for rule in [
        "{t}.id = $2",
        "{t}.id = $0",
        "{t}.name = 'x",
        "{t}.id = $99999999999999999999999",
    ] {
        let r = render_select(
            &SCHEMA,
            "device",
            None,
            &QueryOptions::default(),
            &Bad(rule),
            Dialect::Sqlite,
        );
        assert!(
            matches!(r, Err(RenderError::BadRowFilter { .. })),
            "{rule}: {r:?}"
        );
    }
}

#[test]
fn timestamp_literals_are_checked() {
    use crate::render::timestamp_literal;
    for ok in [
        "2026-01-31T12:00:00Z",
        "2026-01-31T12:00Z",
        "2026-01-31T12:00:00.123456Z",
        "2026-01-31t12:00:00+05:30",
        "2024-02-29T00:00:00-00:00",
    ] {
        assert_eq!(timestamp_literal(ok).as_deref(), Ok(ok), "{ok}");
    }
    assert_eq!(
        timestamp_literal("2026-01-31").as_deref(),
        Ok("2026-01-31T00:00:00Z")
    );
    for bad in [
        "yesterday",
        "2026-13-45T00:00:00Z",
        "2026-02-29T00:00:00Z",
        "2026-04-31",
        "2026-01-31T24:00:00Z",
        "2026-01-31T12:60:00Z",
        "2026-01-31T12:00:61Z",
        "2026-01-31T12:00:00",
        "2026-01-31T12:00:00.Z",
        "2026-01-31T12:00:00+5:30",
        "2026-01-31T12:00:00Zjunk",
        "2026-1-31",
        "",
    ] {
        let Err(e) = timestamp_literal(bad) else {
            panic!("{bad} was taken as a timestamp")
        };
        assert!(e.to_string().contains("is not a timestamp"), "{bad}: {e}");
    }
}

#[test]
fn invalid_timestamp_literals_are_refused_when_rendering() {
    static S: Schema = Schema {
        sets: &[EntitySet {
            name: "device",
            table: "device",
            key: "id",
            fields: &[
                f("id", FieldType::Int),
                f("name", FieldType::Text),
                f("last_seen", FieldType::Timestamp),
            ],
            navigations: &[],
        }],
    };
    let render = |set: &str, q: &str, d: Dialect| {
        let q = parse_query(q).unwrap_or_else(|e| panic!("{q}: {e}"));
        render_select(&S, set, None, &q, &AllowAll, d)
    };
    let ok = render(
        "device",
        "$filter=last_seen ge 2024-01-01",
        Dialect::Postgres,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        ok.sql
            .contains("(t0.\"last_seen\")::timestamptz >= ($1::text)::timestamptz"),
        "{}",
        ok.sql
    );
    assert_eq!(ok.params, vec![Value::Text("2024-01-01T00:00:00Z".into())]);
    let ok = render("device", "$filter=last_seen ge 2024-01-01", Dialect::Sqlite)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        ok.sql
            .contains("julianday(t0.\"last_seen\") >= julianday($1)"),
        "{}",
        ok.sql
    );
    let Err(e) = render("device", "$filter=last_seen eq name", Dialect::Postgres) else {
        panic!("a timestamp compared with a string property rendered")
    };
    assert!(
        e.to_string().contains("compares only with a timestamp"),
        "{e}"
    );
    for q in [
        "$filter=last_seen gt 'yesterday'",
        "$filter=last_seen eq 2026-13-45T00:00:00Z",
        "$filter=last_seen in ('2024-01-01', 'soon')",
    ] {
        let Err(e) = render("device", q, Dialect::Sqlite) else {
            panic!("{q} rendered")
        };
        assert!(e.to_string().contains("is not a timestamp"), "{q}: {e}");
    }
}

#[test]
fn comparisons_follow_odata_null_semantics_in_sql() {
    let s =
        render("device", "$filter=name ne 'a'", Dialect::Sqlite).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        s.sql
            .contains("((t0.\"name\" <> $2) OR t0.\"name\" IS NULL)"),
        "{}",
        s.sql
    );
    let s = render("device", "$filter=not (name eq 'a')", Dialect::Postgres)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        s.sql
            .contains("(NOT ((t0.\"name\" = $2::text) AND t0.\"name\" IS NOT NULL))"),
        "{}",
        s.sql
    );
}

// ---- cost of $expand ---------------------------------------------------------

#[test]
#[allow(clippy::unwrap_used)]
fn expand_cost_bounds_rows_per_level() {
    let cost = |set: &str, q: &str, rows: u64| {
        let q = parse_query(q).unwrap();
        // 10 fleets and 3000 devices visible.
        expand_cost(&SCHEMA, set, &q, rows, &|s| match s {
            "fleet" => 10,
            "device" => 3000,
            _ => panic!("count of {s}"),
        })
        .unwrap()
    };
    assert_eq!(cost("fleet", "", 1000), 1000);
    // The devices of distinct fleets are distinct: at most every device once.
    assert_eq!(cost("fleet", "$expand=devices", 1000), 1000 + 3000);
    // $top inside the expansion bounds the rows per fleet.
    assert_eq!(cost("fleet", "$expand=devices($top=2)", 10), 10 + 20);
    // Back to the fleet (one per device, repeated), then every device of it
    // again, for each of the 3000: the cycle multiplies.
    assert_eq!(
        cost(
            "fleet",
            "$expand=devices($expand=fleet($expand=devices))",
            1000
        ),
        1000 + 3000 + 3000 + 3000 * 3000
    );
    assert_eq!(cost("device", "$expand=fleet", 1), 2);
    assert_eq!(
        to_many_targets(
            &SCHEMA,
            "fleet",
            &parse_query("$expand=devices($expand=fleet($expand=devices))").unwrap()
        )
        .unwrap(),
        vec!["device"]
    );
    assert!(matches!(
        expand_cost(
            &SCHEMA,
            "fleet",
            &parse_query("$expand=nosuch").unwrap(),
            1,
            &|_| 1
        ),
        Err(RenderError::UnknownNavigation { .. })
    ));
}
