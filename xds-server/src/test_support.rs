//! Fixtures shared by unit tests.

use std::collections::HashMap;
use std::path::Path;

use meshgate_core::config::SecretSource;

use crate::registry::{LoadErrors, Registry};

/// A fixed environment: `TEST_SECRET` is set, nothing else.
#[derive(Debug, Clone)]
pub struct FakeEnv(pub HashMap<String, String>);

impl Default for FakeEnv {
    fn default() -> Self {
        FakeEnv(HashMap::from([("TEST_SECRET".to_string(), "s3cret-s3cret-s3cret-s3cret-s3cret".to_string())]))
    }
}

impl SecretSource for FakeEnv {
    fn secret(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

/// Parses registry text as if read from `registry.yaml` in the current folder.
pub fn try_registry(yaml: &str) -> Result<Registry, LoadErrors> {
    Registry::parse(yaml, Path::new("registry.yaml"), &FakeEnv::default())
}

/// Like [`try_registry`], for fixtures that must be valid.
pub fn registry(yaml: &str) -> Registry {
    try_registry(yaml).unwrap_or_else(|e| panic!("fixture must be valid:\n{e}"))
}
