use serde_json::json;

use super::*;

fn fails(doc: Value) -> ComposeError {
    parse_release(&doc).expect_err("should be refused")
}

#[test]
fn a_full_service_parses_into_the_release_target() {
    let rel = parse_release(&json!({
        "version": "2.4",
        "services": {
            "web": {"image": "reg/web@sha256:ab", "environment": {"A": 1, "B": true, "C": null},
                "labels": ["io.resin.update.strategy=hand-over"], "ports": ["8080:80", 53],
                "volumes": ["data:/data", "/srv:/srv:ro", "/scratch"], "restart": "unless-stopped",
                "command": "sh -c true", "privileged": false, "cap_add": ["NET_ADMIN"],
                "devices": ["/dev/ttyUSB0", "/dev/i2c-1:/dev/i2c-1:rw"], "networks": ["backend"],
                "depends_on": {"db": {"condition": "service_started"}}},
            "db": {"image": "reg/db:1"},
            "side": {"image": "reg/side:1", "network_mode": "service:web"}
        },
        "volumes": {"data": {"driver": "local", "driver_opts": {"type": "tmpfs", "device": "tmpfs"},
            "labels": {"team": "a"}}, "cache": null},
        "networks": {"backend": {"driver": "bridge", "labels": ["x=1"]}}
    }))
    .unwrap();
    let web = &rel.services["web"];
    assert_eq!(web.environment["A"], "1");
    assert_eq!(web.environment["B"], "true");
    assert_eq!(web.environment["C"], "");
    assert_eq!(web.ports, ["8080:80", "53"]);
    assert_eq!(web.restart, "unless-stopped");
    assert_eq!(
        web.command.as_deref(),
        Some(&["sh".into(), "-c".into(), "true".into()][..])
    );
    assert_eq!(web.depends_on, ["db"]);
    assert_eq!(rel.services["db"].restart, "always");
    assert_eq!(rel.volumes["data"].driver.as_deref(), Some("local"));
    assert_eq!(rel.volumes["data"].driver_opts["type"], "tmpfs");
    assert_eq!(rel.volumes["data"].labels["team"], "a");
    assert!(rel.volumes["cache"].driver.is_none());
    assert_eq!(rel.networks["backend"].labels["x"], "1");
}

/// Each refusal names where it is: the service and the field.
#[test]
fn bad_fields_are_refused_with_service_and_field() {
    let svc = |extra: Value| {
        let mut s = json!({"image": "x"});
        for (k, v) in extra.as_object().unwrap() {
            s[k] = v.clone();
        }
        json!({"services": {"web": s, "db": {"image": "y"}}})
    };
    for (doc, path, needle) in [
        (json!({}), "services", "non-empty"),
        (json!({"services": {}}), "services", "empty"),
        (json!([1]), "", "must be a mapping"),
        (json!({"services": {"a": 1}, "foo": 1}), "foo", "top-level"),
        (
            json!({"services": {"-web": {"image": "x"}}}),
            "services.-web",
            "service names",
        ),
        (
            json!({"services": {"a": {}}}),
            "services.a.image",
            "non-empty",
        ),
        (
            json!({"services": {"a": {"image": "a b"}}}),
            "services.a.image",
            "image",
        ),
        (
            svc(json!({"bogus": 1})),
            "services.web.bogus",
            "unsupported key",
        ),
        (
            svc(json!({"restart": "sometimes"})),
            "services.web.restart",
            "sometimes",
        ),
        (
            svc(json!({"environment": ["NOEQUALS"]})),
            "services.web.environment",
            "KEY=VALUE",
        ),
        (
            svc(json!({"environment": {"A": [1]}})),
            "services.web.environment.A",
            "string",
        ),
        (
            svc(json!({"privileged": "yes"})),
            "services.web.privileged",
            "true/false",
        ),
        (
            svc(json!({"ports": ["80:80", "8o:80"]})),
            "services.web.ports[1]",
            "\"8o\"",
        ),
        (
            svc(json!({"ports": ["70000:80"]})),
            "services.web.ports[0]",
            "port number",
        ),
        (
            svc(json!({"ports": ["80/tcpx"]})),
            "services.web.ports[0]",
            "protocol",
        ),
        (
            svc(json!({"ports": ["8000-8010:80"]})),
            "services.web.ports[0]",
            "ranges",
        ),
        (
            svc(json!({"ports": ["1.2.3:80:80"]})),
            "services.web.ports[0]",
            "IP address",
        ),
        (
            svc(json!({"ports": [{"target": 80}]})),
            "services.web.ports[0]",
            "expected a string",
        ),
        (
            svc(json!({"volumes": ["data:relative"]})),
            "services.web.volumes[0]",
            "absolute",
        ),
        (
            svc(json!({"volumes": ["./src:/src"]})),
            "services.web.volumes[0]",
            "relative bind",
        ),
        (
            svc(json!({"volumes": ["data:/d:rox"]})),
            "services.web.volumes[0]",
            "\"rox\"",
        ),
        (
            svc(json!({"devices": ["ttyUSB0"]})),
            "services.web.devices[0]",
            "absolute",
        ),
        (
            svc(json!({"devices": ["/dev/a:/dev/a:rwx"]})),
            "services.web.devices[0]",
            "rwm",
        ),
        (
            svc(json!({"network_mode": "service:nope"})),
            "services.web.network_mode",
            "service:nope",
        ),
        (
            svc(json!({"network_mode": "service:web"})),
            "services.web.network_mode",
            "no other",
        ),
        (
            svc(json!({"network_mode": "weird"})),
            "services.web.network_mode",
            "weird",
        ),
        (
            svc(json!({"networks": ["backend"]})),
            "services.web.networks[0]",
            "not declared",
        ),
        (
            svc(json!({"depends_on": ["nope"]})),
            "services.web.depends_on",
            "unknown service \"nope\"",
        ),
        (
            svc(json!({"depends_on": "db"})),
            "services.web.depends_on",
            "expected a list",
        ),
        (
            svc(json!({"depends_on": {"db": {"condition": "service_healthy"}}})),
            "services.web.depends_on.db.condition",
            "service_started",
        ),
        (
            json!({"services": {"a": {"image": "x", "depends_on": ["b"]}, "b": {"image": "x", "depends_on": ["a"]}}}),
            "services.a.depends_on",
            "dependency cycle a -> b -> a",
        ),
        (
            json!({"services": {"a": {"image": "x"}}, "volumes": []}),
            "volumes",
            "mapping",
        ),
        (
            json!({"services": {"a": {"image": "x"}}, "volumes": {"d": {"external": true}}}),
            "volumes.d.external",
            "unsupported key",
        ),
        (
            json!({"services": {"a": {"image": "x"}}, "networks": {"n": {"driver_opts": {"o": [1]}}}}),
            "networks.n.driver_opts.o",
            "string",
        ),
    ] {
        let e = fails(doc.clone());
        assert_eq!(e.path, path, "{doc}: {e}");
        assert!(e.message.contains(needle), "{doc}: {e} should say {needle}");
        assert!(e.to_string().starts_with(path), "{e}");
    }
}

#[test]
fn ports_parse_into_their_parts() {
    let p: PortMapping = "127.0.0.1:8080:80/udp".parse().unwrap();
    assert_eq!(p.host_ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(p.host_port, Some(8080));
    assert_eq!(p.container_key(), "80/udp");
    let p: PortMapping = "[::1]:53:53".parse().unwrap();
    assert_eq!((p.host_ip.as_deref(), p.host_port), (Some("::1"), Some(53)));
    let p: PortMapping = "9000".parse().unwrap();
    assert_eq!(
        (p.host_port, p.container_key().as_str()),
        (None, "9000/tcp")
    );
    let p: PortMapping = "127.0.0.1::80".parse().unwrap();
    assert_eq!(p.host_port, None);
    assert!("x:80".parse::<PortMapping>().unwrap_err().contains("x:80"));
    assert!("0:80".parse::<PortMapping>().is_err());
}

#[test]
fn mounts_devices_and_modes_parse() {
    assert_eq!(
        "data:/data:ro".parse::<Mount>().unwrap(),
        Mount::Volume {
            name: "data".into(),
            target: "/data".into(),
            options: Some("ro".into())
        }
    );
    assert!(matches!(
        "/h:/c".parse::<Mount>().unwrap(),
        Mount::Bind { .. }
    ));
    assert_eq!(
        "/scratch".parse::<Mount>().unwrap(),
        Mount::Anonymous {
            target: "/scratch".into()
        }
    );
    let d: DeviceMapping = "/dev/a:r".parse().unwrap();
    assert_eq!(
        (d.container.as_str(), d.permissions.as_str()),
        ("/dev/a", "r")
    );
    let d: DeviceMapping = "/dev/a:/dev/b".parse().unwrap();
    assert_eq!(
        (d.container.as_str(), d.permissions.as_str()),
        ("/dev/b", "rwm")
    );
    assert_eq!(
        "service:db".parse::<NetworkMode>().unwrap(),
        NetworkMode::Service("db".into())
    );
    assert_eq!("on-failure".parse::<Restart>().unwrap(), Restart::OnFailure);
}

#[test]
fn bare_keys_are_empty_values_only_when_asked() {
    let v = json!(["A=1", "B"]);
    let m = kv_map("x", &v, BareKey::Empty).unwrap();
    assert_eq!((m["A"].as_str(), m["B"].as_str()), ("1", ""));
    assert!(kv_map("x", &v, BareKey::Refuse).is_err());
}
