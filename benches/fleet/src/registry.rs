//! The registry the fleet is fed, and the three edits measured: a policy edit (one role's
//! allow list), adding a server, removing a server. Written atomically (temp file +
//! rename), as a config tool or a ConfigMap update does.

use std::path::Path;

use crate::meshgate::TOKEN_ENV;

/// A registry with `servers` servers (every tenth with an SDS-delivered credential, every
/// fifth with health checks) and one role per ten servers.
#[derive(Debug, Clone)]
pub struct FleetRegistry {
    pub servers: usize,
    /// Bumped by a policy edit: role-0 gains an allowed tool.
    pub policy_revision: u32,
    /// Servers added after the first `servers`.
    pub added: usize,
    /// Server indexes removed.
    pub removed: Vec<usize>,
}

impl FleetRegistry {
    pub fn new(servers: usize) -> FleetRegistry {
        FleetRegistry { servers, policy_revision: 0, added: 0, removed: Vec::new() }
    }

    pub fn yaml(&self) -> String {
        let mut yaml = String::from("listener: { address: 127.0.0.1, port: 0 }\nservers:\n");
        for i in 0..self.servers + self.added {
            if self.removed.contains(&i) {
                continue;
            }
            yaml.push_str(&format!("  - name: server-{i}\n    url: http://127.0.0.1:{}/mcp\n", 20000 + i));
            if i % 10 == 0 {
                yaml.push_str(&format!("    credentials: {{ value_env: {TOKEN_ENV}, prefix: 'Bearer ' }}\n"));
            }
            if i % 5 == 0 {
                yaml.push_str("    health_check: { type: http }\n");
            }
        }
        yaml.push_str("auth:\n  api_keys:\n");
        yaml.push_str("    - { consumer: ci, sha256: \"3f2a4fc5102d2e4887969eeae2f869f5e75546ba030a606da8a66efabf50ab5b\", roles: [role-0] }\n");
        yaml.push_str("policy:\n  roles:\n");
        for r in 0..self.servers.div_ceil(10) {
            let mut allow = vec![format!("\"server-{}/get_*\"", r * 10), format!("\"server-{}/*\"", r * 10 + 1)];
            if r == 0 {
                allow.extend((0..self.policy_revision).map(|n| format!("\"server-2/tool_rev_{n}\"")));
            }
            yaml.push_str(&format!("    role-{r}: {{ allow: [{}], deny: [\"*/delete_*\"] }}\n", allow.join(", ")));
        }
        yaml
    }

    /// Writes the registry the way an editor or a ConfigMap update replaces it.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let temp = path.with_extension("yaml.tmp");
        std::fs::write(&temp, self.yaml())?;
        std::fs::rename(&temp, path)
    }
}
