//! Finding the Envoy binary and the Meshgate modules (wasm and native).
//!
//! Explicit beats implicit: a flag, then an environment variable, then conventional places.
//! An explicitly named file that does not exist is an error (never silently skipped for a
//! fallback). The search itself is pure over a [`Search`] snapshot of the process context,
//! so it is tested without touching the real environment.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Environment variable naming the Envoy binary.
pub const ENVOY_ENV: &str = "MESHGATE_ENVOY";
/// Environment variable naming the Meshgate wasm module.
pub const WASM_ENV: &str = "MESHGATE_WASM";
/// Where `make build` leaves the wasm module, relative to the repository root.
pub const WASM_IN_REPO: &str = "target/wasm32-wasip1/release/meshgate_wasm.wasm";
/// Environment variable naming the Meshgate native module (`libmeshgate.so`).
pub const NATIVE_ENV: &str = "MESHGATE_NATIVE";
/// Where `make build` leaves the native module, relative to the repository root.
pub const NATIVE_IN_REPO: &str = "target/release/libmeshgate.so";
/// Where `make build` installs Envoy, relative to a repository root or the current folder.
pub const ENVOY_IN_VENV: &str = ".venv/bin/envoy";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocateError {
    #[error("envoy not found at {path} (given by {origin}); run `make build` or fix the path")]
    EnvoyMissing { path: PathBuf, origin: String },
    #[error("envoy not found (tried {tried}); run `make build` or pass --envoy PATH")]
    EnvoyNotFound { tried: String },
    #[error("meshgate wasm module not found at {path} (given by {origin}); run `make build` or pass --wasm PATH")]
    WasmMissing { path: PathBuf, origin: String },
    #[error(
        "meshgate native module not found at {path} (given by {origin}); run `make build`, \
         pass --native-module PATH, or set `filter: {{ runtime: wasm }}` in the registry"
    )]
    NativeMissing { path: PathBuf, origin: String },
    #[error(
        "meshgate native module not found: no repository root (a folder with a workspace \
         Cargo.toml) above the meshgate executable and {NATIVE_ENV} is not set; \
         run `make build` or pass --native-module PATH"
    )]
    NoRepoRootNative,
    #[error(
        "meshgate wasm module not found: no repository root (a folder with a workspace \
         Cargo.toml) above the meshgate executable and {WASM_ENV} is not set; \
         run `make build` or pass --wasm PATH"
    )]
    NoRepoRoot,
}

/// The parts of the process context the search looks at.
#[derive(Debug, Clone, Default)]
pub struct Search {
    pub envoy_env: Option<OsString>,
    pub wasm_env: Option<OsString>,
    pub native_env: Option<OsString>,
    /// `$PATH`.
    pub path: Option<OsString>,
    pub cwd: PathBuf,
    /// Nearest ancestor of the meshgate executable with a workspace `Cargo.toml`.
    pub repo_root: Option<PathBuf>,
}

impl Search {
    /// The current process's context.
    pub fn current() -> Search {
        let cwd = std::env::current_dir().unwrap_or_default();
        let repo_root = std::env::current_exe().ok().and_then(|exe| repo_root(&exe));
        Search {
            envoy_env: std::env::var_os(ENVOY_ENV).filter(|v| !v.is_empty()),
            wasm_env: std::env::var_os(WASM_ENV).filter(|v| !v.is_empty()),
            native_env: std::env::var_os(NATIVE_ENV).filter(|v| !v.is_empty()),
            path: std::env::var_os("PATH"),
            cwd,
            repo_root,
        }
    }

    /// Envoy: `flag`, else `$MESHGATE_ENVOY`, else `envoy` on `$PATH`, else `.venv/bin/envoy`
    /// under the current folder, else under the repository root.
    pub fn envoy(&self, flag: Option<&Path>) -> Result<PathBuf, LocateError> {
        if let Some(path) = flag {
            return existing_executable(path, "--envoy");
        }
        if let Some(path) = &self.envoy_env {
            return existing_executable(Path::new(path), ENVOY_ENV);
        }
        let mut candidates: Vec<PathBuf> = self
            .path
            .as_ref()
            .map(|p| std::env::split_paths(p).map(|dir| dir.join("envoy")).collect())
            .unwrap_or_default();
        candidates.push(self.cwd.join(ENVOY_IN_VENV));
        if let Some(root) = &self.repo_root {
            candidates.push(root.join(ENVOY_IN_VENV));
        }
        if let Some(found) = candidates.iter().find(|c| is_executable(c)) {
            return Ok(absolute(found));
        }
        let mut tried = vec![
            "--envoy".to_string(),
            format!("${ENVOY_ENV}"),
            "envoy on $PATH".to_string(),
            format!("./{ENVOY_IN_VENV}"),
        ];
        if let Some(root) = &self.repo_root {
            tried.push(root.join(ENVOY_IN_VENV).display().to_string());
        }
        Err(LocateError::EnvoyNotFound { tried: tried.join(", ") })
    }

    /// The wasm module: `flag`, else `$MESHGATE_WASM`, else the release build in the
    /// repository. Always an absolute path (it ends up in a bootstrap file).
    pub fn wasm(&self, flag: Option<&Path>) -> Result<PathBuf, LocateError> {
        let (path, origin) = self.wasm_candidate(flag)?;
        let path = absolute(&path);
        if path.is_file() {
            Ok(path)
        } else {
            Err(LocateError::WasmMissing { path, origin })
        }
    }

    /// Where the wasm module should be, whether or not it is there yet (for printing a
    /// bootstrap before building). Paths given by flag or environment are returned as
    /// given, so a bootstrap can refer to the module relative to Envoy's working folder.
    pub fn wasm_candidate(&self, flag: Option<&Path>) -> Result<(PathBuf, String), LocateError> {
        self.module_candidate(flag, ("--wasm", WASM_ENV, &self.wasm_env, WASM_IN_REPO)).ok_or(LocateError::NoRepoRoot)
    }

    /// A module by `flag`, else by its environment variable, else the repository build.
    fn module_candidate(
        &self,
        flag: Option<&Path>,
        (flag_name, env_name, env, in_repo): (&str, &str, &Option<OsString>, &str),
    ) -> Option<(PathBuf, String)> {
        if let Some(path) = flag {
            Some((path.to_path_buf(), flag_name.to_string()))
        } else if let Some(path) = env {
            Some((PathBuf::from(path), env_name.to_string()))
        } else {
            self.repo_root.as_ref().map(|root| (root.join(in_repo), "the repository build".to_string()))
        }
    }
}

impl Search {
    /// The native module: `flag`, else `$MESHGATE_NATIVE`, else the release build in the
    /// repository. Always an absolute path (it ends up in the filter's configuration).
    pub fn native(&self, flag: Option<&Path>) -> Result<PathBuf, LocateError> {
        let (path, origin) = self.native_candidate(flag)?;
        let path = absolute(&path);
        if path.is_file() {
            Ok(path)
        } else {
            Err(LocateError::NativeMissing { path, origin })
        }
    }

    /// Where the native module should be, whether or not it is there yet.
    pub fn native_candidate(&self, flag: Option<&Path>) -> Result<(PathBuf, String), LocateError> {
        self.module_candidate(flag, ("--native-module", NATIVE_ENV, &self.native_env, NATIVE_IN_REPO))
            .ok_or(LocateError::NoRepoRootNative)
    }
}

/// Nearest ancestor of `start` holding a `Cargo.toml` with a `[workspace]` table.
pub fn repo_root(start: &Path) -> Option<PathBuf> {
    start.ancestors().skip(1).find_map(|dir| {
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).ok()?;
        manifest.lines().any(|line| line.trim() == "[workspace]").then(|| dir.to_path_buf())
    })
}

fn existing_executable(path: &Path, origin: &str) -> Result<PathBuf, LocateError> {
    if is_executable(path) {
        Ok(absolute(path))
    } else {
        Err(LocateError::EnvoyMissing { path: path.to_path_buf(), origin: origin.to_string() })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn executable(dir: &Path, rel: &str) -> PathBuf {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, "#!/bin/sh\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path
    }

    fn search(cwd: &Path) -> Search {
        Search { cwd: cwd.to_path_buf(), ..Search::default() }
    }

    #[test]
    fn explicit_envoy_must_exist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = search(dir.path());
        let err = s.envoy(Some(&dir.path().join("nope"))).expect_err("missing");
        assert!(err.to_string().contains("given by --envoy"), "{err}");
        let s = Search { envoy_env: Some(dir.path().join("nope").into()), ..search(dir.path()) };
        let err = s.envoy(None).expect_err("missing");
        assert!(err.to_string().contains(ENVOY_ENV), "{err}");
    }

    #[test]
    fn envoy_search_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("repo");
        let in_root = executable(&root, ENVOY_IN_VENV);
        let cwd = dir.path().join("elsewhere");
        std::fs::create_dir_all(&cwd).expect("mkdir");
        let s = Search { repo_root: Some(root.clone()), ..search(&cwd) };
        assert_eq!(s.envoy(None).expect("found"), in_root);
        let in_cwd = executable(&cwd, ENVOY_IN_VENV);
        assert_eq!(s.envoy(None).expect("found"), in_cwd);
        let on_path = executable(&dir.path().join("bin"), "envoy");
        let s = Search { path: Some(dir.path().join("bin").into()), ..s };
        assert_eq!(s.envoy(None).expect("found"), on_path);
        let flagged = executable(dir.path(), "custom/envoy");
        assert_eq!(s.envoy(Some(&flagged)).expect("found"), flagged);
    }

    #[test]
    fn envoy_not_found_says_what_was_tried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = search(dir.path()).envoy(None).expect_err("nothing there");
        let text = err.to_string();
        assert!(text.contains("make build") && text.contains("$PATH"), "{text}");
    }

    #[test]
    fn wasm_defaults_to_the_repository_build() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Search { repo_root: Some(dir.path().to_path_buf()), ..search(dir.path()) };
        let err = s.wasm(None).expect_err("not built");
        assert!(err.to_string().contains(WASM_IN_REPO), "{err}");
        assert!(err.to_string().contains("make build"), "{err}");
        let built = dir.path().join(WASM_IN_REPO);
        std::fs::create_dir_all(built.parent().expect("parent")).expect("mkdir");
        std::fs::write(&built, b"\0asm").expect("write");
        assert_eq!(s.wasm(None).expect("found"), built);
        assert_eq!(search(dir.path()).wasm(None), Err(LocateError::NoRepoRoot));
    }

    #[test]
    fn native_module_search_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Search { repo_root: Some(dir.path().to_path_buf()), ..search(dir.path()) };
        let err = s.native(None).expect_err("not built");
        assert!(err.to_string().contains(NATIVE_IN_REPO) && err.to_string().contains("runtime: wasm"), "{err}");
        let built = dir.path().join(NATIVE_IN_REPO);
        std::fs::create_dir_all(built.parent().expect("parent")).expect("mkdir");
        std::fs::write(&built, b"\x7fELF").expect("write");
        assert_eq!(s.native(None).expect("found"), built);
        let other = dir.path().join("other.so");
        std::fs::write(&other, b"\x7fELF").expect("write");
        let s = Search { native_env: Some(other.clone().into()), ..s };
        assert_eq!(s.native(None).expect("found"), other);
        let err = s.native(Some(&dir.path().join("nope.so"))).expect_err("missing");
        assert!(err.to_string().contains("--native-module"), "{err}");
        assert_eq!(search(dir.path()).native(None), Err(LocateError::NoRepoRootNative));
    }

    #[test]
    fn finds_the_workspace_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("Cargo.toml"), "[workspace]\nmembers = []\n").expect("write");
        let member = dir.path().join("member");
        std::fs::create_dir_all(member.join("target/debug")).expect("mkdir");
        std::fs::write(member.join("Cargo.toml"), "[package]\nname = \"x\"\n").expect("write");
        let exe = member.join("target/debug/meshgate");
        assert_eq!(repo_root(&exe), Some(dir.path().to_path_buf()));
    }
}
