//! The provisioning commands against a running node and offline: the
//! federation lists change through the admin API and are in force at once
//! (the API's explain says so), `config export` and `config import` carry
//! the whole policy and endpoints as one document (importing it again
//! changes nothing, a bad one is refused with its line and fix), and with
//! the node stopped the same commands work on its store, which the next
//! start uses.

use crate::common::*;

/// Runs `porchlight ARGS --config <the server's file>`: (success, stdout + stderr).
fn porchlight(server_dir: &std::path::Path, args: &[&str]) -> (bool, String) {
    porchlight_at(&server_dir.join("porchlight.toml"), args)
}

fn ok(server_dir: &std::path::Path, args: &[&str]) -> String {
    porchlight_ok(&server_dir.join("porchlight.toml"), args)
}

/// The running node's decision for a presence request from a user of
/// `domain`, its edge's certificate proving the same domain: (allowed, class).
fn decision(server: &Server, domain: &str) -> (bool, String) {
    decision_via(server, domain, domain)
}

/// The same with the user's domain and the edge's (`peer`) apart, as for
/// a public provider.
fn decision_via(server: &Server, domain: &str, peer: &str) -> (bool, String) {
    let v = server.api_get(&format!(
        "/api/v1/explain?from=sip:alice@{domain}&to=sip:helpdesk@contoso.com&kind=presence&peer={peer}"
    ));
    (
        v["allowed"].as_bool().unwrap(),
        v["class"].as_str().unwrap_or_default().to_owned(),
    )
}

/// A node for contoso.com with `edits`, its admin API on a fixed port so
/// the commands find it from its file alone.
fn node(name: &str, edits: &[(&str, &str)]) -> Server {
    let port = free_port();
    let listen = format!("listen = \"127.0.0.1:{port}\"");
    let mut all = vec![("listen = \"127.0.0.1:0\"", listen.as_str())];
    all.extend_from_slice(edits);
    start(name, &config(&all, ""))
}

#[test]
fn federation_and_config_commands_online_and_offline() {
    let mut server = node(
        "provisioning",
        &[(
            "enable_partner_discovery = false",
            "enable_partner_discovery = true",
        )],
    );
    let dir = server.dir.clone();
    assert!(decision(&server, "spam.example").0, "discovery lets it in");

    // Block it on the running node: in force at once.
    let said = ok(&dir, &["federation", "block", "spam.example"]);
    assert!(said.contains("saved and in force"), "{said}");
    assert!(!decision(&server, "spam.example").0);
    assert!(!decision(&server, "mail.spam.example").0, "subdomains too");
    ok(
        &dir,
        &[
            "federation",
            "allow",
            "fabrikam.com",
            "--proxy",
            "sip.fabrikam.com",
        ],
    );
    assert_eq!(
        decision(&server, "fabrikam.com"),
        (true, "AllowedPartner".into())
    );
    let list = ok(&dir, &["federation", "list"]);
    assert!(
        list.contains("allowed  fabrikam.com  proxy sip.fabrikam.com"),
        "{list}"
    );
    assert!(list.contains("blocked  spam.example"), "{list}");
    let (refused, said) = porchlight(&dir, &["federation", "allow", "spam.example"]);
    assert!(!refused && said.contains("is blocked"), "{said}");

    // Export, import the same: nothing changes.
    let exported = ok(&dir, &["config", "export"]);
    assert!(exported.contains("spam.example"), "{exported}");
    let file = dir.join("export.toml");
    std::fs::write(&file, &exported).unwrap();
    ok(&dir, &["config", "import", file.to_str().unwrap()]);
    assert_eq!(ok(&dir, &["config", "export"]), exported, "idempotent");

    // A bad document names the file, the line and the fix, and changes nothing.
    let bad = exported.replace("blocked_domains", "blocked_domainz");
    std::fs::write(&file, &bad).unwrap();
    let line = bad
        .lines()
        .position(|l| l.contains("blocked_domainz"))
        .unwrap()
        + 1;
    let (imported, said) = porchlight(&dir, &["config", "import", file.to_str().unwrap()]);
    assert!(!imported);
    assert!(
        said.contains(&format!(
            "export.toml:{line}: unknown field `blocked_domainz`"
        )) && said.contains("fix:"),
        "{said}"
    );
    assert_eq!(ok(&dir, &["config", "export"]), exported);

    // Offline: the node is stopped; the commands work on its store.
    server.kill_9();
    let list = ok(&dir, &["federation", "list"]);
    assert!(list.contains("blocked  spam.example"), "{list}");
    ok(&dir, &["federation", "remove", "spam.example"]);
    ok(
        &dir,
        &["federation", "allow", "partner.example", "--unverified"],
    );
    let config_path = dir.join("porchlight.toml");
    let server = start_with_file(&config_path, dir.clone());
    assert!(
        decision(&server, "spam.example").0,
        "unblocked while stopped"
    );
    assert_eq!(
        decision(&server, "partner.example"),
        (true, "AllowedPartner".into())
    );
    let list = ok(&dir, &["federation", "list"]);
    assert!(
        list.contains("allowed  partner.example  unverified"),
        "{list}"
    );
}

#[test]
fn edge_provider_policy_and_endpoint_commands() {
    let mut server = node("provisioning-commands", &[]);
    let dir = server.dir.clone();

    // A provider whose users may reach the help desk once the edge and the
    // global policy let them.
    ok(
        &dir,
        &[
            "provider",
            "add",
            "PublicIM",
            "--proxy",
            "fed.publicim.example",
            "--domain",
            "publicim.example",
        ],
    );
    assert!(
        !decision_via(&server, "publicim.example", "fed.publicim.example").0,
        "the edge switch is off"
    );
    ok(&dir, &["edge", "set", "allow_public_providers=true"]);
    ok(&dir, &["policy", "set", "global", "public_providers=true"]);
    let (allowed, class) = decision_via(&server, "publicim.example", "fed.publicim.example");
    assert!(allowed && class.contains("PublicProvider"), "{class}");
    assert!(ok(&dir, &["edge", "show"]).contains("allow_public_providers = true"));
    assert!(ok(&dir, &["provider", "list"])
        .contains("PublicIM  enabled  proxy fed.publicim.example  domains publicim.example"));
    ok(&dir, &["provider", "set", "PublicIM", "enabled=false"]);
    assert!(
        !decision_via(&server, "publicim.example", "fed.publicim.example").0,
        "switched off"
    );

    // A named policy granted to the help desk takes federation away from it.
    ok(&dir, &["federation", "allow", "fabrikam.com"]);
    assert!(decision(&server, "fabrikam.com").0);
    ok(
        &dir,
        &["policy", "new", "no-federation", "federation=false"],
    );
    ok(
        &dir,
        &[
            "policy",
            "grant",
            "no-federation",
            "sip:helpdesk@contoso.com",
        ],
    );
    assert!(!decision(&server, "fabrikam.com").0, "the grant decides");
    let (removed, said) = porchlight(&dir, &["policy", "remove", "no-federation"]);
    assert!(
        !removed && said.contains("not defined"),
        "a granted policy stays: {said}"
    );
    ok(
        &dir,
        &["policy", "grant", "global", "sip:helpdesk@contoso.com"],
    );
    ok(&dir, &["policy", "remove", "no-federation"]);
    assert!(decision(&server, "fabrikam.com").0);
    let (set, said) = porchlight(&dir, &["edge", "set", "allow_public_provider=true"]);
    assert!(
        !set && said.contains("unknown field `allow_public_provider`"),
        "{said}"
    );

    // Endpoints: saved and served at once.
    let said = ok(
        &dir,
        &[
            "endpoint",
            "add",
            "sip:bot@contoso.com",
            "--name",
            "Bot",
            "availability=away",
            "note=Back soon",
        ],
    );
    assert!(said.contains("added: sip:bot@contoso.com"), "{said}");
    let live = ok(&dir, &["endpoint", "list"]);
    assert!(live.contains("sip:bot@contoso.com  away"), "{live}");
    let (added, said) = porchlight(
        &dir,
        &["endpoint", "add", "sip:bot@contoso.com", "--name", "Bot"],
    );
    assert!(!added && said.contains("exists"), "{said}");
    server.kill_9();
    ok(
        &dir,
        &[
            "endpoint",
            "set",
            "sip:bot@contoso.com",
            "availability=busy",
        ],
    );
    let offline = ok(&dir, &["endpoint", "list"]);
    assert!(
        offline.contains("sip:bot@contoso.com  busy (configured; the node is not running)"),
        "{offline}"
    );
    let server = start_with_file(&dir.join("porchlight.toml"), dir.clone());
    let list = ok(&dir, &["endpoint", "list"]);
    assert!(list.contains("sip:bot@contoso.com  busy"), "{list}");
    ok(&dir, &["endpoint", "remove", "sip:bot@contoso.com"]);
    assert!(!ok(&dir, &["config", "export"]).contains("sip:bot@contoso.com"));
    drop(server);
}

/// An admin API request with the node's token: (status, body).
fn api_call(server: &Server, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let (admin, bearer) = server.api();
    let request =
        ureq::request(method, &format!("http://{admin}{path}")).set("Authorization", &bearer);
    let response = match body {
        Some(b) => request
            .set("Content-Type", "application/json")
            .send_string(b),
        None => request.call(),
    };
    match response {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{method} {path}: {e}"),
    }
}

#[test]
fn anything_that_is_not_a_domain_is_refused_with_what_to_write() {
    // An admin API on any free port: the CLI finds it from the address the
    // node leaves beside its token.
    let server = start("provisioning-names", &config(&[], ""));
    let dir = server.dir.clone();
    let before = ok(&dir, &["federation", "list"]);
    for bad in [
        "",
        "not_a..domain",
        "https://fabrikam.com",
        "a@b.com",
        "fab rikam.com",
        "127.0.0.1",
        "../../etc/passwd",
        "*",
        "fabrikam.com\n",
    ] {
        for command in ["allow", "block"] {
            let (success, said) = porchlight(&dir, &["federation", command, bad]);
            assert!(
                !success && said.contains("write a DNS name like fabrikam.com"),
                "{command} {bad:?}: {said}"
            );
        }
    }
    let (success, said) = porchlight(&dir, &["federation", "allow", "contoso.com"]);
    assert!(
        !success && said.contains("which this node serves"),
        "our own domain: {said}"
    );
    assert_eq!(ok(&dir, &["federation", "list"]), before, "nothing changed");

    // The API refuses the same, with 400 and the same words.
    let (status, body) = api_call(&server, "PUT", "/api/v1/federation/allowed/a@b.com", None);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("write a DNS name"), "{body}");
    let (status, body) = api_call(&server, "PUT", "/api/v1/federation/blocked/127.0.0.1", None);
    assert_eq!(status, 400, "{body}");
    let (status, body) = api_call(
        &server,
        "DELETE",
        "/api/v1/federation/nowhere.example",
        None,
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = api_call(
        &server,
        "PUT",
        "/api/v1/federation/allowed/fabrikam.com",
        Some(r#"{"proxy_fqdn": "sip.fabrikam.com:port"}"#),
    );
    assert_eq!(status, 400, "{body}");

    // One entry per domain, in one form; allowing again keeps the proxy.
    ok(
        &dir,
        &[
            "federation",
            "allow",
            "FABRIKAM.COM.",
            "--proxy",
            "sip.fabrikam.com:16071",
        ],
    );
    ok(&dir, &["federation", "allow", "fabrikam.com"]);
    let (status, body) = api_call(
        &server,
        "PUT",
        "/api/v1/federation/allowed/Fabrikam.com",
        Some("{}"),
    );
    assert_eq!(status, 200, "{body}");
    let lists = server.api_get("/api/v1/federation");
    assert_eq!(
        lists["allowed"],
        serde_json::json!([{"domain": "fabrikam.com", "proxy_fqdn": "sip.fabrikam.com:16071", "verified": true}]),
        "{lists}"
    );

    // From another directory, with nothing saying where the node is, the
    // CLI neither finds a node it does not know of nor creates a store.
    let elsewhere = temp_dir("provisioning-names-elsewhere");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_porchlight"))
        .args(["federation", "allow", "northwind.example"])
        .current_dir(&elsewhere)
        .env_remove("PORCHLIGHT_CONFIG")
        // Nothing listens on port 1, whatever else runs on this machine.
        .env("PORCHLIGHT_ADMIN", "http://127.0.0.1:1")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("nothing was changed") && said.contains("PORCHLIGHT_CONFIG"),
        "{said}"
    );
    assert!(
        !elsewhere.join("porchlight-data").exists(),
        "a store was created where no node keeps one"
    );
    // A node that answers while its token is not where the CLI looks is
    // reported as such, never taken for a stopped node.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_porchlight"))
        .args(["federation", "allow", "northwind.example"])
        .current_dir(&elsewhere)
        .env_remove("PORCHLIGHT_CONFIG")
        .env(
            "PORCHLIGHT_ADMIN",
            format!("http://{}", server.admin.unwrap()),
        )
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("a node answers at") && said.contains("token"),
        "{said}"
    );
    assert!(!elsewhere.join("porchlight-data").exists());
    // Named by PORCHLIGHT_CONFIG, the node is found from there.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_porchlight"))
        .args(["federation", "list"])
        .current_dir(&elsewhere)
        .env("PORCHLIGHT_CONFIG", dir.join("porchlight.toml"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("fabrikam.com"),
        "{said}"
    );
}

#[test]
fn imports_refuse_empty_documents_show_their_changes_and_ask_before_removing_everything() {
    let server = node("provisioning-import", &[]);
    let dir = server.dir.clone();
    let before = ok(&dir, &["config", "export"]);
    let empty = dir.join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    for file in [empty.as_path(), std::path::Path::new("/dev/null")] {
        let (success, said) = porchlight(&dir, &["config", "import", file.to_str().unwrap()]);
        assert!(!success && said.contains("no [policy] section"), "{said}");
    }
    let (status, body) = api_call(&server, "PUT", "/api/v1/config", Some(""));
    assert_eq!(status, 400, "{body}");
    assert_eq!(ok(&dir, &["config", "export"]), before, "nothing changed");

    // A document without the endpoints: refused unless asked for, and the
    // dry run lists what it would do.
    let document: toml::Table = toml::from_str(&before).unwrap();
    let mut no_endpoints = document.clone();
    no_endpoints.remove("endpoint");
    let mut policy = no_endpoints["policy"].as_table().unwrap().clone();
    policy.insert(
        "blocked_domains".into(),
        toml::Value::Array(vec!["spam.example".into()]),
    );
    no_endpoints.insert("policy".into(), toml::Value::Table(policy));
    let file = dir.join("no-endpoints.toml");
    std::fs::write(&file, toml::to_string(&no_endpoints).unwrap()).unwrap();
    let file = file.to_str().unwrap();
    let (success, said) = porchlight(&dir, &["config", "import", file]);
    assert!(
        !success && said.contains("removes every endpoint (1)") && said.contains("--remove-all"),
        "{said}"
    );
    let said = ok(&dir, &["config", "import", file, "--dry-run"]);
    assert!(said.contains("add blocked domain spam.example"), "{said}");
    assert!(
        said.contains("remove endpoint sip:helpdesk@contoso.com"),
        "{said}"
    );
    assert!(said.contains("dry run: nothing was changed"), "{said}");
    assert_eq!(
        ok(&dir, &["config", "export"]),
        before,
        "a dry run changes nothing"
    );
    let said = ok(&dir, &["config", "import", file, "--remove-all"]);
    assert!(said.contains("removed: sip:helpdesk@contoso.com"), "{said}");
    assert!(server
        .api_get("/api/v1/endpoints")
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn endpoint_commands_take_words_for_lists_and_name_no_internal_line() {
    let server = node("provisioning-words", &[]);
    let dir = server.dir.clone();
    let said = ok(
        &dir,
        &[
            "endpoint",
            "add",
            "sip:bot@contoso.com",
            "--name",
            "Bot",
            "capabilities=im",
        ],
    );
    assert!(said.contains("added: sip:bot@contoso.com"), "{said}");
    ok(
        &dir,
        &[
            "endpoint",
            "set",
            "sip:bot@contoso.com",
            "capabilities=im,audio",
        ],
    );
    let exported = ok(&dir, &["config", "export"]);
    assert!(
        exported.contains("capabilities = [\"im\", \"audio\"]"),
        "{exported}"
    );
    let (success, said) = porchlight(
        &dir,
        &[
            "endpoint",
            "set",
            "sip:bot@contoso.com",
            "availability=sleepy",
        ],
    );
    assert!(!success, "{said}");
    assert!(
        said.contains("endpoint set: availability \"sleepy\" is unknown"),
        "{said}"
    );
    assert!(
        !said.contains("endpoint set:1") && !said.contains(":41:"),
        "{said}"
    );
    let (success, said) = porchlight(
        &dir,
        &[
            "endpoint",
            "add",
            "sip:bot@fabrikam.com",
            "--name",
            "Elsewhere",
        ],
    );
    assert!(
        !success && said.contains("not in this node's domains"),
        "{said}"
    );
}
