//! Tool-level RBAC: which consumer may call which tool, read which resource, get which prompt.
//!
//! A pattern is `server/name`, where `server` is a glob over server names (which never
//! contain `/`) and `name` a glob over the tool name, resource URI or prompt name; the lone
//! pattern `*` means every server and every name. Semantics, in order:
//! 1. if any of the consumer's roles denies the target → [`Verdict::Deny`] (`Denied`);
//! 2. else if any role allows it → [`Verdict::Allow`];
//! 3. else → [`Verdict::Deny`] (`NotGranted`): default deny.
//!
//! Roles the policy does not know (a JWT may carry any) grant nothing.
//!
//! Resource URIs are matched in canonical form, and resource patterns are canonicalised
//! the same way when compiled ([`crate::resource_uri`]): `FILE://localhost/srv/%70ublic/a`
//! is `file:///srv/public/a` to every rule. A URI that different readers resolve to
//! different resources (`..`, `%2f`, `//`, …) matches no rule: it is denied here, and
//! refused with a message naming the problem on the request path.

use std::collections::{HashMap, HashSet};

use crate::config::{ConfigError, RawPolicy, RawRules};
use crate::glob::Glob;
use crate::mcp::ResourceKind;
use crate::resource_uri;

/// The outcome of a policy check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny(DenyReason),
}

/// Why a target was refused. Deliberately coarse: callers learn *that* and roughly *why*,
/// never which rule or role decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// No role of the caller grants it.
    NotGranted,
    /// A role of the caller explicitly denies it.
    Denied,
}

impl DenyReason {
    pub fn describe(self) -> &'static str {
        match self {
            DenyReason::NotGranted => "not granted to this caller",
            DenyReason::Denied => "denied for this caller",
        }
    }
}

/// One compiled `server/name` pattern (shared by the policy and redaction scopes).
#[derive(Debug, Clone)]
pub struct TargetPattern {
    server: Glob,
    name: Glob,
}

impl TargetPattern {
    /// Compiles `server/name` (or the lone `*`). A literal server part must be one of
    /// `servers`; the error message names the pattern.
    pub fn compile(pattern: &str, servers: &HashSet<String>) -> Result<Self, String> {
        if pattern == "*" {
            let any = Glob::new("*").map_err(|e| e.to_string())?;
            return Ok(Self { server: any.clone(), name: any });
        }
        let (server, name) = pattern
            .split_once('/')
            .ok_or_else(|| format!("pattern \"{pattern}\" must have the form server/name (or be \"*\")"))?;
        let server_glob = Glob::new(server).map_err(|e| format!("pattern \"{pattern}\": {e}"))?;
        let name_glob = Glob::new(name).map_err(|e| format!("pattern \"{pattern}\": {e}"))?;
        if server_glob.is_literal() && !servers.contains(server) {
            return Err(format!("pattern \"{pattern}\" names unknown server \"{server}\""));
        }
        Ok(Self { server: server_glob, name: name_glob })
    }

    /// [`Self::compile`] for each of a rule's `match.tools` patterns; an error names the
    /// pattern's path (`<path>[j]`).
    pub fn compile_all(patterns: &[String], servers: &HashSet<String>, path: &str) -> Result<Vec<Self>, ConfigError> {
        patterns
            .iter()
            .enumerate()
            .map(|(j, p)| Self::compile(p, servers).map_err(|m| ConfigError::invalid(format!("{path}[{j}]"), m)))
            .collect()
    }

    /// [`Self::compile`] for a resource pattern: its URI part is canonicalised as resource
    /// URIs are before matching, and a pattern no governed URI can match is an error.
    pub fn compile_resource(pattern: &str, servers: &HashSet<String>) -> Result<Self, String> {
        let Some((server, name)) = pattern.split_once('/').filter(|_| pattern != "*") else {
            return Self::compile(pattern, servers);
        };
        let name = resource_uri::canonical_pattern(name)
            .map_err(|e| format!("pattern \"{pattern}\" can never match a resource: {e}"))?;
        Self::compile(&format!("{server}/{name}"), servers)
    }

    /// Whether `server/name` matches.
    pub fn matches(&self, server: &str, name: &str) -> bool {
        self.server.matches(server) && self.name.matches(name)
    }

    /// Whether the pattern names `server`, for some name.
    pub fn touches_server(&self, server: &str) -> bool {
        self.server.matches(server)
    }

    /// Whether the pattern covers every name on `server` (its name part is all `*`), so it
    /// also covers that server's traffic that names no tool.
    pub fn covers_server(&self, server: &str) -> bool {
        self.name.matches_everything() && self.server.matches(server)
    }
}

#[derive(Debug, Clone, Default)]
struct RuleSet {
    allow: Vec<TargetPattern>,
    deny: Vec<TargetPattern>,
}

impl RuleSet {
    fn compile(raw: &RawRules, servers: &HashSet<String>, path: &str, kind: ResourceKind) -> Result<Self, ConfigError> {
        let list = |items: &[String], which: &str| {
            items
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let compiled = match kind {
                        ResourceKind::Resource => TargetPattern::compile_resource(p, servers),
                        ResourceKind::Tool | ResourceKind::Prompt => TargetPattern::compile(p, servers),
                    };
                    compiled.map_err(|message| ConfigError::invalid(format!("{path}{which}[{i}]"), message))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Self { allow: list(&raw.allow, "allow")?, deny: list(&raw.deny, "deny")? })
    }
}

#[derive(Debug, Clone, Default)]
struct Role {
    tools: RuleSet,
    resources: RuleSet,
    prompts: RuleSet,
}

impl Role {
    fn rules(&self, kind: ResourceKind) -> &RuleSet {
        match kind {
            ResourceKind::Tool => &self.tools,
            ResourceKind::Resource => &self.resources,
            ResourceKind::Prompt => &self.prompts,
        }
    }
}

/// The compiled policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    roles: HashMap<String, Role>,
}

/// Checks that every role a rule names (at `path`, e.g. `quotas[0].match.roles`) is one the
/// policy defines: a typo would make a rule that never applies, or nobody may decide.
pub fn check_known_roles(roles: &[String], known_role: &dyn Fn(&str) -> bool, path: &str) -> Result<(), ConfigError> {
    match roles.iter().enumerate().find(|(_, r)| !known_role(r)) {
        Some((j, role)) => {
            Err(ConfigError::invalid(format!("{path}[{j}]"), format!("\"{role}\" is not a role of the policy")))
        }
        None => Ok(()),
    }
}

impl Policy {
    /// Compiles the raw policy. `servers` are the known server names: a literal server in a
    /// pattern that is not among them is a configuration error (it is always a typo).
    pub fn compile(raw: &RawPolicy, servers: &HashSet<String>) -> Result<Self, ConfigError> {
        let mut roles = HashMap::new();
        for (name, role) in &raw.roles {
            let base = format!("policy.roles.{name}.");
            let tools = RuleSet::compile(
                &RawRules { allow: role.allow.clone(), deny: role.deny.clone() },
                servers,
                &base,
                ResourceKind::Tool,
            )?;
            let resources =
                RuleSet::compile(&role.resources, servers, &format!("{base}resources."), ResourceKind::Resource)?;
            let prompts = RuleSet::compile(&role.prompts, servers, &format!("{base}prompts."), ResourceKind::Prompt)?;
            roles.insert(name.clone(), Role { tools, resources, prompts });
        }
        Ok(Self { roles })
    }

    /// Whether the policy defines `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.contains_key(role)
    }

    /// Decides whether a consumer holding `roles` may use `name` of `kind` on `server`. A
    /// resource URI is matched in canonical form; one that has none is denied.
    pub fn decide(&self, roles: &[String], kind: ResourceKind, server: &str, name: &str) -> Verdict {
        if kind != ResourceKind::Resource {
            return self.decide_exact(roles, kind, server, name);
        }
        match resource_uri::canonical(name) {
            Ok(uri) => self.decide_exact(roles, kind, server, &uri),
            Err(_) => Verdict::Deny(DenyReason::NotGranted),
        }
    }

    /// [`Self::decide`] on `name` exactly as given.
    fn decide_exact(&self, roles: &[String], kind: ResourceKind, server: &str, name: &str) -> Verdict {
        // One pass, one role lookup each: a deny anywhere returns at once, an allow only
        // counts once every role's denies were checked.
        let mut allowed = false;
        for rules in roles.iter().filter_map(|r| self.roles.get(r)).map(|r| r.rules(kind)) {
            if rules.deny.iter().any(|p| p.matches(server, name)) {
                return Verdict::Deny(DenyReason::Denied);
            }
            allowed = allowed || rules.allow.iter().any(|p| p.matches(server, name));
        }
        if allowed {
            Verdict::Allow
        } else {
            Verdict::Deny(DenyReason::NotGranted)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawRole;

    fn servers() -> HashSet<String> {
        ["crm", "docs"].into_iter().map(String::from).collect()
    }

    fn policy(yaml_like: &[(&str, &[&str], &[&str])]) -> Policy {
        let mut raw = RawPolicy::default();
        for (name, allow, deny) in yaml_like {
            raw.roles.insert(
                name.to_string(),
                RawRole {
                    allow: allow.iter().map(|s| s.to_string()).collect(),
                    deny: deny.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                },
            );
        }
        Policy::compile(&raw, &servers()).unwrap()
    }

    fn roles(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn issue_example() {
        let p = policy(&[("reader", &["crm/get_*", "crm/list_*"], &[]), ("admin", &["*"], &["crm/delete_*"])]);
        let t = ResourceKind::Tool;
        assert_eq!(p.decide(&roles(&["reader"]), t, "crm", "get_customer"), Verdict::Allow);
        assert_eq!(p.decide(&roles(&["reader"]), t, "crm", "list_customers"), Verdict::Allow);
        assert_eq!(p.decide(&roles(&["reader"]), t, "crm", "delete_customer"), Verdict::Deny(DenyReason::NotGranted));
        assert_eq!(p.decide(&roles(&["reader"]), t, "docs", "get_doc"), Verdict::Deny(DenyReason::NotGranted));
        assert_eq!(p.decide(&roles(&["admin"]), t, "docs", "admin_reindex"), Verdict::Allow);
        assert_eq!(p.decide(&roles(&["admin"]), t, "crm", "delete_customer"), Verdict::Deny(DenyReason::Denied));
        // Deny wins across roles.
        assert_eq!(
            p.decide(&roles(&["reader", "admin"]), t, "crm", "delete_customer"),
            Verdict::Deny(DenyReason::Denied)
        );
        // Default deny, unknown roles grant nothing.
        assert_eq!(p.decide(&roles(&[]), t, "crm", "get_customer"), Verdict::Deny(DenyReason::NotGranted));
        assert_eq!(p.decide(&roles(&["root"]), t, "crm", "get_customer"), Verdict::Deny(DenyReason::NotGranted));
        // Tool rules do not grant resources or prompts.
        assert_eq!(
            p.decide(&roles(&["admin"]), ResourceKind::Resource, "crm", "crm://stats"),
            Verdict::Deny(DenyReason::NotGranted)
        );
    }

    #[test]
    fn server_globs_and_resources() {
        let mut raw = RawPolicy::default();
        raw.roles.insert(
            "r".into(),
            RawRole {
                allow: vec!["*/search_*".into()],
                resources: RawRules { allow: vec!["crm/crm://customers/*".into()], deny: vec![] },
                ..Default::default()
            },
        );
        let p = Policy::compile(&raw, &servers()).unwrap();
        let r = roles(&["r"]);
        assert_eq!(p.decide(&r, ResourceKind::Tool, "docs", "search_docs"), Verdict::Allow);
        assert_eq!(p.decide(&r, ResourceKind::Resource, "crm", "crm://customers/42"), Verdict::Allow);
        assert_eq!(p.decide(&r, ResourceKind::Resource, "crm", "crm://stats"), Verdict::Deny(DenyReason::NotGranted));
        assert_eq!(
            p.decide(&r, ResourceKind::Resource, "docs", "crm://customers/1"),
            Verdict::Deny(DenyReason::NotGranted)
        );
    }

    #[test]
    fn bad_patterns_name_the_path() {
        let bad = [
            ("get_*", "must have the form server/name"),
            ("crmx/get_*", "unknown server \"crmx\""),
            ("crm/[a]", "unsupported glob syntax '['"),
            ("crm/", "empty glob pattern"),
        ];
        for (pattern, want) in bad {
            let mut raw = RawPolicy::default();
            raw.roles.insert("admin".into(), RawRole { deny: vec![pattern.into()], ..Default::default() });
            let err = Policy::compile(&raw, &servers()).unwrap_err();
            assert_eq!(err.path(), Some("policy.roles.admin.deny[0]"), "{pattern}");
            assert!(err.to_string().contains(want), "{pattern}: {err}");
        }
    }
}
