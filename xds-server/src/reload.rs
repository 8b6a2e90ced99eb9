//! Registry → published snapshot, once and on every edit.
//!
//! [`Loader::load`] runs the whole pipeline: load and validate the registry (the filter's
//! own validator included), translate, consistency-check, publish. Any failure leaves the
//! last good snapshot served and is recorded for `/status` with file, line and reason.
//!
//! [`watch`] polls instead of using inotify: a content fingerprint (the registry plus every
//! file it names — JWKS, CA bundles, credential files) is cheap to compute, works the same
//! on every platform and volume type, and is immune to editors that replace the file
//! (write a temp file, rename over) rather than writing in place. A change is only loaded
//! once the fingerprint is stable across a short settle delay, so a half-written file is not
//! reported as an error.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::control::ControlPlane;
use crate::registry::{LoadErrors, Registry};
use crate::snapshot::{ConsistencyError, Snapshot};
use crate::translate::{translate, TranslateError, TranslateOptions};

/// How often the registry is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// A change must hold still this long before it is loaded.
pub const SETTLE_DELAY: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The registry is invalid: every problem, with file and line.
    #[error("{0}")]
    Registry(#[from] LoadErrors),
    #[error("{file}: {source}")]
    Translate { file: PathBuf, source: TranslateError },
    #[error("{file}: inconsistent resources: {source}")]
    Consistency { file: PathBuf, source: ConsistencyError },
}

impl ReloadError {
    /// One line per problem, for `/status`.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ReloadError::Registry(errors) => errors.0.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// What a successful load published.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub registry: Arc<Registry>,
    pub version: String,
    /// False when the content was already published (nothing sent to Envoy).
    pub changed: bool,
}

/// Loads one registry file into one control plane.
#[derive(Debug, Clone)]
pub struct Loader {
    pub file: PathBuf,
    pub options: TranslateOptions,
    pub control: Arc<ControlPlane>,
}

impl Loader {
    /// Validates, translates, checks and publishes the registry; on failure records the
    /// error (the previous snapshot stays).
    pub fn load(&self) -> Result<Loaded, ReloadError> {
        let result = build(&self.file, &self.options).map(|(registry, snapshot)| {
            let registry = Arc::new(registry);
            let version = snapshot.version.clone();
            let changed = self.control.publish(registry.clone(), snapshot);
            Loaded { registry, version, changed }
        });
        if let Err(e) = &result {
            self.control.record_error_lines(e.lines());
        }
        result
    }
}

/// The pure part of a load: file → validated registry → consistent snapshot.
pub fn build(file: &Path, options: &TranslateOptions) -> Result<(Registry, Snapshot), ReloadError> {
    let registry = Registry::load(file)?;
    let resources =
        translate(&registry, options).map_err(|source| ReloadError::Translate { file: file.to_path_buf(), source })?;
    let snapshot =
        Snapshot::new(&resources).map_err(|source| ReloadError::Consistency { file: file.to_path_buf(), source })?;
    Ok((registry, snapshot))
}

/// Hash of the registry file and every file it names; `None` when the registry cannot be
/// read (a missing referenced file hashes as missing, so creating it counts as a change).
pub fn fingerprint(file: &Path) -> Option<[u8; 32]> {
    Fingerprinter::default().fingerprint(file)
}

/// [`fingerprint`] that only re-parses the registry (to find the files it names) when the
/// registry's own bytes changed: a poll of an unchanged 1,000-server registry is a hash,
/// not a YAML parse.
#[derive(Debug, Default)]
pub struct Fingerprinter {
    registry_hash: Option<[u8; 32]>,
    referenced: Vec<PathBuf>,
}

impl Fingerprinter {
    pub fn fingerprint(&mut self, file: &Path) -> Option<[u8; 32]> {
        let text = crate::registry::read_bounded(file, crate::registry::MAX_REGISTRY_BYTES).ok()?;
        let registry_hash: [u8; 32] = Sha256::digest(&text).into();
        if self.registry_hash != Some(registry_hash) {
            self.referenced = Registry::referenced_files(&String::from_utf8_lossy(&text), file);
            self.registry_hash = Some(registry_hash);
        }
        let mut hasher = Sha256::new();
        hasher.update(registry_hash);
        for referenced in &self.referenced {
            hasher.update(referenced.as_os_str().as_encoded_bytes());
            match std::fs::read(referenced) {
                Ok(bytes) => {
                    hasher.update([1]);
                    hasher.update(Sha256::digest(&bytes));
                }
                Err(_) => hasher.update([0]),
            }
        }
        Some(hasher.finalize().into())
    }
}

/// Reloads on every settled change until `shutdown` turns true. `loaded_from` is the
/// [`fingerprint`] taken before the load already done, so that nothing changed since that
/// load is missed however late this task starts.
pub async fn watch(loader: Loader, loaded_from: Option<[u8; 32]>, mut shutdown: watch::Receiver<bool>) {
    let mut fingerprinter = Fingerprinter::default();
    let mut last = loaded_from;
    let mut missing_reported = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        let current = fingerprinter.fingerprint(&loader.file);
        if current == last {
            continue;
        }
        let Some(_) = current else {
            // Mid-rename, or deleted: keep serving; report once if it stays gone.
            tokio::time::sleep(SETTLE_DELAY).await;
            if fingerprinter.fingerprint(&loader.file).is_none() && !missing_reported {
                missing_reported = true;
                // Whatever comes back, even the same content, is loaded: that clears the error.
                last = None;
                tracing::warn!(file = %loader.file.display(), "registry file is gone; still serving the last good snapshot");
                loader.control.record_error_lines(vec![format!(
                    "{}: cannot read registry: the file is gone",
                    loader.file.display()
                )]);
            }
            continue;
        };
        tokio::time::sleep(SETTLE_DELAY).await;
        let settled = fingerprinter.fingerprint(&loader.file);
        if settled != current {
            continue; // still being written: look again next round
        }
        last = settled;
        missing_reported = false;
        let file = loader.file.clone();
        let before = loader.control.registry();
        let worker = loader.clone();
        // Validation reads files and compiles globs: keep it off the async workers.
        let result = tokio::task::spawn_blocking(move || worker.load()).await;
        match result {
            Ok(Ok(loaded)) if loaded.changed => {
                let (added, removed) = server_changes(before.as_deref(), &loaded.registry);
                tracing::info!(
                    file = %file.display(),
                    version = %loaded.version,
                    servers = loaded.registry.servers.len(),
                    added = %added.join(","),
                    removed = %removed.join(","),
                    "registry reloaded"
                )
            }
            Ok(Ok(loaded)) => tracing::info!(
                file = %file.display(),
                version = %loaded.version,
                "registry edited, resources unchanged"
            ),
            Ok(Err(e)) => tracing::warn!(
                file = %file.display(),
                "registry edit refused, still serving the last good snapshot:\n{e}"
            ),
            Err(e) => tracing::error!("registry reload task failed: {e}"),
        }
    }
}

/// Names of the servers and virtual servers (each served at `/mcp/<name>`) that `after`
/// adds to and removes from `before`, in registry order: what an operator watching the log
/// wants to read about a reload.
pub fn server_changes(before: Option<&Registry>, after: &Registry) -> (Vec<String>, Vec<String>) {
    fn names(registry: &Registry) -> Vec<String> {
        let servers = registry.servers.iter().map(|s| s.name.clone());
        servers.chain(registry.virtual_servers.iter().map(|v| v.name.clone())).collect()
    }
    let old = before.map(names).unwrap_or_default();
    let new = names(after);
    let added = new.iter().filter(|n| !old.contains(n)).cloned().collect();
    let removed = old.iter().filter(|n| !new.contains(n)).cloned().collect();
    (added, removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::translate::{type_url, WasmSource};

    fn loader(dir: &Path) -> Loader {
        Loader {
            file: dir.join("registry.yaml"),
            options: TranslateOptions {
                wasm: WasmSource::Local { path: "/m.wasm".into() },
                native: Default::default(),
            },
            control: ControlPlane::new(),
        }
    }

    const GOOD: &str = "listener: { port: 0 }\nservers:\n  - { name: a, url: 'http://127.0.0.1:1/' }\n";

    #[test]
    fn a_reload_names_the_servers_it_adds_and_removes() {
        let before = crate::test_support::registry(GOOD);
        let after = crate::test_support::registry(
            "listener: { port: 0 }\nservers:\n  - { name: b, url: 'http://127.0.0.1:1/' }\n  - { name: c, url: 'http://127.0.0.1:2/' }\n",
        );
        assert_eq!(server_changes(Some(&before), &after), (vec!["b".into(), "c".into()], vec!["a".into()]));
        assert_eq!(server_changes(Some(&before), &before), (vec![], vec![]));
        assert_eq!(server_changes(None, &before), (vec!["a".to_string()], vec![]));
    }

    /// Two replicas (each its own control plane) loading one registry publish the same
    /// version and byte-identical resources, before and after an edit: an Envoy failing over
    /// from one to the other is told nothing changed.
    #[test]
    fn replicas_of_one_registry_publish_identical_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let one = loader(dir.path());
        let two = Loader { control: ControlPlane::new(), ..one.clone() };
        let registry = "listener: { port: 0 }\nservers:\n  - { name: a, url: 'http://127.0.0.1:1/', credentials: { value_file: token } }\n  - { name: b, urls: ['http://127.0.0.1:2/', 'http://127.0.0.1:3/'] }\npolicy:\n  roles:\n    r: { allow: ['a/*', 'b/get_*'] }\n";
        std::fs::write(dir.path().join("token"), "s3cret").expect("write");
        for text in [registry.to_string(), registry.replace("b/get_*", "b/list_*")] {
            std::fs::write(&one.file, &text).expect("write");
            let (a, b) = (one.load().expect("valid"), two.load().expect("valid"));
            assert_eq!(a.version, b.version);
            let (a, b) = (one.control.snapshot().expect("published"), two.control.snapshot().expect("published"));
            for type_url in type_url::ALL {
                let bytes = |s: &Snapshot| -> Vec<(String, Vec<u8>)> {
                    s.resources(type_url).iter().map(|(n, p)| (n.clone(), p.any.value.clone())).collect()
                };
                assert_eq!(bytes(&a), bytes(&b), "{type_url}");
            }
        }
    }

    #[test]
    fn a_refused_edit_keeps_the_last_good_snapshot_and_says_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let loader = loader(dir.path());
        std::fs::write(&loader.file, GOOD).expect("write");
        let first = loader.load().expect("valid");
        assert!(first.changed);
        assert!(!loader.load().expect("valid").changed, "same content");

        std::fs::write(&loader.file, format!("{GOOD}bogus: 1\n")).expect("write");
        let error = loader.load().expect_err("invalid");
        let lines = error.lines();
        assert_eq!(lines.len(), 1);
        assert!(lines[0].contains("registry.yaml:4: bogus: unknown field `bogus`"), "{lines:?}");
        let snapshot = loader.control.snapshot().expect("still published");
        assert_eq!(snapshot.version, first.version);
        assert_eq!(loader.control.last_error().expect("recorded").errors, lines);

        std::fs::write(&loader.file, GOOD.replace(":1/", ":2/")).expect("write");
        let fixed = loader.load().expect("valid");
        assert_ne!(fixed.version, first.version);
        assert!(loader.control.last_error().is_none(), "cleared by a good load");
    }

    /// A registry file removed and put back unchanged (a config tool recreating it): the
    /// "file is gone" error is cleared once it is back, and reported again if it goes again.
    #[tokio::test]
    async fn a_file_put_back_unchanged_clears_the_gone_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let loader = loader(dir.path());
        std::fs::write(&loader.file, GOOD).expect("write");
        let loaded_from = fingerprint(&loader.file);
        loader.load().expect("valid");
        let control = loader.control.clone();
        let (stop, shutdown) = watch::channel(false);
        // The file goes away before the watcher first runs: still seen.
        let task = tokio::spawn(watch(loader.clone(), loaded_from, shutdown));
        let gone = |control: &ControlPlane| {
            control.last_error().is_some_and(|e| e.errors.iter().any(|l| l.contains("the file is gone")))
        };
        // Polls (every 50 ms, up to 5 s) until `done` holds.
        async fn until(done: impl Fn() -> bool) -> bool {
            for _ in 0..100 {
                if done() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            done()
        }
        for round in 0..2 {
            std::fs::rename(&loader.file, dir.path().join("aside.yaml")).expect("move away");
            assert!(until(|| gone(&control)).await, "round {round}: the missing file is reported");
            std::fs::rename(dir.path().join("aside.yaml"), &loader.file).expect("move back");
            assert!(until(|| control.last_error().is_none()).await, "round {round}: cleared once the file is back");
        }
        stop.send(true).expect("stop");
        task.await.expect("watcher ends");
    }

    #[test]
    fn fingerprints_cover_referenced_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("registry.yaml");
        std::fs::write(
            &file,
            "listener: { port: 0 }\nservers:\n  - name: a\n    url: http://127.0.0.1:1/\n    credentials: { value_file: token }\n",
        )
        .expect("write");
        let missing = fingerprint(&file);
        std::fs::write(dir.path().join("token"), "one").expect("write");
        let one = fingerprint(&file);
        std::fs::write(dir.path().join("token"), "two").expect("write");
        let two = fingerprint(&file);
        assert!(missing.is_some());
        assert_ne!(missing, one);
        assert_ne!(one, two);
        assert_eq!(fingerprint(&dir.path().join("nope.yaml")), None);
    }
}
