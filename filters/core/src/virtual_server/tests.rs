use std::collections::HashSet;

use super::*;

fn servers() -> HashSet<String> {
    ["crm", "docs", "billing"].iter().map(|s| s.to_string()).collect()
}

fn raw(name: &str) -> RawVirtualServer {
    RawVirtualServer {
        name: name.to_string(),
        description: None,
        servers: Vec::new(),
        tools: Vec::new(),
        resources: Vec::new(),
        prompts: Vec::new(),
        separator: None,
        prefix: None,
    }
}

fn compile(entries: Vec<RawVirtualServer>) -> Result<VirtualServers, ConfigError> {
    VirtualServers::compile(&entries, &servers())
}

fn message(e: ConfigError) -> (String, String) {
    match e {
        ConfigError::Invalid { path, message } => (path, message),
        other => (String::new(), other.to_string()),
    }
}

#[test]
fn prefixed_names_resolve_to_server_and_own_name() {
    let mut v = raw("work");
    v.servers = vec!["crm".into()];
    v.tools = vec!["docs/search_*".into()];
    let all = compile(vec![v]).unwrap();
    let work = all.get("work").unwrap();
    assert_eq!(work.servers(), ["crm".to_string(), "docs".to_string()]);
    let m = work.resolve(ResourceKind::Tool, "crm__get_customer").unwrap();
    assert_eq!((m.server, m.name), ("crm", "get_customer"));
    // The own name may itself hold the separator: only the first one ends the prefix.
    let m = work.resolve(ResourceKind::Tool, "docs__search__deep").unwrap();
    assert_eq!((m.server, m.name), ("docs", "search__deep"));
    let m = work.resolve(ResourceKind::Prompt, "crm__summary").unwrap();
    assert_eq!((m.server, m.name), ("crm", "summary"));
    assert_eq!(work.exposed_name(ResourceKind::Tool, "docs", "search_all").as_deref(), Some("docs__search_all"));
}

#[test]
fn unselected_members_are_not_exposed() {
    let mut v = raw("work");
    v.tools = vec!["docs/search_*".into()];
    let all = compile(vec![v]).unwrap();
    let work = all.get("work").unwrap();
    assert!(matches!(work.resolve(ResourceKind::Tool, "docs__delete"), Err(ResolveError::NotExposed { .. })));
    // No prompt of docs is selected.
    assert!(matches!(work.resolve(ResourceKind::Prompt, "docs__search_x"), Err(ResolveError::NotExposed { .. })));
    assert_eq!(work.exposed_name(ResourceKind::Tool, "docs", "delete"), None);
}

#[test]
fn unknown_prefix_lists_the_valid_ones() {
    let mut v = raw("work");
    v.servers = vec!["crm".into(), "docs".into()];
    let all = compile(vec![v]).unwrap();
    let err = all.get("work").unwrap().resolve(ResourceKind::Tool, "billing__charge").unwrap_err();
    assert!(matches!(err, ResolveError::UnknownPrefix { .. }));
    let text = err.to_string();
    assert!(text.contains("crm__, docs__"), "{text}");
    assert!(matches!(
        all.get("work").unwrap().resolve(ResourceKind::Tool, "no_separator_here"),
        Err(ResolveError::UnknownPrefix { .. })
    ));
}

#[test]
fn configurable_separator() {
    let mut v = raw("work");
    v.servers = vec!["crm".into()];
    v.separator = Some(".".into());
    let all = compile(vec![v]).unwrap();
    let m = all.get("work").unwrap().resolve(ResourceKind::Tool, "crm.get_customer").unwrap();
    assert_eq!((m.server, m.name), ("crm", "get_customer"));
    for bad in ["", "-", "a", "__/", "_____", " "] {
        let mut v = raw("work");
        v.servers = vec!["crm".into()];
        v.separator = Some(bad.into());
        let (path, _) = message(compile(vec![v]).unwrap_err());
        assert_eq!(path, "virtual_servers[0].separator", "{bad:?}");
    }
}

#[test]
fn unprefixed_literal_selections_resolve() {
    let mut v = raw("flat");
    v.prefix = Some(false);
    v.tools = vec!["crm/get_customer".into(), "docs/search".into()];
    let all = compile(vec![v]).unwrap();
    let flat = all.get("flat").unwrap();
    let m = flat.resolve(ResourceKind::Tool, "search").unwrap();
    assert_eq!((m.server, m.name), ("docs", "search"));
    assert!(matches!(flat.resolve(ResourceKind::Tool, "crm__get_customer"), Err(ResolveError::NotExposed { .. })));
    assert_eq!(flat.exposed_name(ResourceKind::Tool, "crm", "get_customer").as_deref(), Some("get_customer"));
}

#[test]
fn unprefixed_collisions_name_both_selections() {
    let mut v = raw("flat");
    v.prefix = Some(false);
    v.tools = vec!["crm/search".into(), "docs/search".into()];
    let (path, text) = message(compile(vec![v]).unwrap_err());
    assert_eq!(path, "virtual_servers[0].tools[1]");
    assert!(text.contains("crm/search") && text.contains("virtual_servers[0].tools[0]"), "{text}");
    // A tool and a prompt of the same name do not collide (different methods).
    let mut v = raw("flat");
    v.prefix = Some(false);
    v.tools = vec!["crm/search".into()];
    v.prompts = vec!["docs/search".into()];
    assert!(compile(vec![v]).is_ok());
}

#[test]
fn unprefixed_refuses_globs_and_whole_servers() {
    let mut v = raw("flat");
    v.prefix = Some(false);
    v.tools = vec!["crm/get_*".into()];
    assert_eq!(message(compile(vec![v]).unwrap_err()).0, "virtual_servers[0].tools[0]");
    let mut v = raw("flat");
    v.prefix = Some(false);
    v.servers = vec!["crm".into()];
    assert_eq!(message(compile(vec![v]).unwrap_err()).0, "virtual_servers[0].servers[0]");
}

#[test]
fn names_and_references_are_checked() {
    let cases: Vec<(RawVirtualServer, &str)> = vec![
        (
            {
                let mut v = raw("crm");
                v.servers = vec!["docs".into()];
                v
            },
            "virtual_servers[0].name",
        ),
        (
            {
                let mut v = raw("Bad_Name");
                v.servers = vec!["docs".into()];
                v
            },
            "virtual_servers[0].name",
        ),
        (
            {
                let mut v = raw("work");
                v.servers = vec!["nope".into()];
                v
            },
            "virtual_servers[0].servers[0]",
        ),
        (
            {
                let mut v = raw("work");
                v.tools = vec!["nope/x".into()];
                v
            },
            "virtual_servers[0].tools[0]",
        ),
        (
            {
                let mut v = raw("work");
                v.tools = vec!["*/x".into()];
                v
            },
            "virtual_servers[0].tools[0]",
        ),
        (
            {
                let mut v = raw("work");
                v.tools = vec!["crm".into()];
                v
            },
            "virtual_servers[0].tools[0]",
        ),
        (
            {
                let mut v = raw("work");
                v.tools = vec!["crm/[x]".into()];
                v
            },
            "virtual_servers[0].tools[0]",
        ),
        (
            {
                let mut v = raw("work");
                v.resources = vec!["crm/file:///srv/../etc/*".into()];
                v
            },
            "virtual_servers[0].resources[0]",
        ),
        (
            {
                let mut v = raw("work");
                v.resources = vec!["crm/crm://stats".into(), "docs/crm://*".into()];
                v
            },
            "virtual_servers[0].resources[1]",
        ),
        (raw("work"), "virtual_servers[0]"),
    ];
    for (entry, want) in cases {
        let (path, text) = message(compile(vec![entry.clone()]).unwrap_err());
        assert_eq!(path, want, "{entry:?}: {text}");
    }
    let mut a = raw("work");
    a.servers = vec!["crm".into()];
    let b = a.clone();
    assert_eq!(message(compile(vec![a, b]).unwrap_err()).0, "virtual_servers[1].name");
}

#[test]
fn resources_route_by_uri_to_exactly_one_server() {
    let mut v = raw("work");
    v.tools = vec!["crm/get_*".into()];
    v.resources = vec![
        "crm/crm://*".into(),
        "docs/docs://pages/*".into(),
        "billing/shared://*".into(),
        "docs/shared://a*".into(),
    ];
    let all = compile(vec![v]).unwrap();
    let work = all.get("work").unwrap();
    assert_eq!(work.servers(), ["crm".to_string(), "docs".to_string(), "billing".to_string()]);
    assert_eq!(work.resource_server("crm://customers/1"), Ok("crm"));
    // Matched in canonical form, as the policy matches.
    assert_eq!(work.resource_server("CRM://customers/%31"), Ok("crm"));
    assert_eq!(work.resource_server("docs://pages/{id}"), Ok("docs"));
    assert!(matches!(work.resource_server("docs://index"), Err(ResourceRouteError::NotExposed { .. })));
    assert!(matches!(work.resource_server("crm://a/../b"), Err(ResourceRouteError::Unreadable { .. })));
    assert!(matches!(work.resource_server("no scheme"), Err(ResourceRouteError::Unreadable { .. })));
    let Err(ResourceRouteError::Ambiguous { servers, .. }) = work.resource_server("shared://abc") else { panic!() };
    assert_eq!(servers, "billing, docs");
    assert_eq!(work.resource_server("shared://xyz"), Ok("billing"));
    // Listed only by the server it routes to, never renamed.
    assert_eq!(work.exposed_name(ResourceKind::Resource, "crm", "crm://stats").as_deref(), Some("crm://stats"));
    assert_eq!(work.exposed_name(ResourceKind::Resource, "docs", "crm://stats"), None);
    assert_eq!(work.exposed_name(ResourceKind::Resource, "docs", "shared://abc"), None);
    assert_eq!(work.servers_selecting(ResourceKind::Resource).collect::<Vec<_>>(), ["crm", "docs", "billing"]);
    // Whole servers select tools and prompts, not resources (URIs are not prefixed).
    let mut whole = raw("whole");
    whole.servers = vec!["crm".into()];
    let all = compile(vec![whole]).unwrap();
    assert_eq!(all.get("whole").unwrap().servers_selecting(ResourceKind::Resource).count(), 0);
}
