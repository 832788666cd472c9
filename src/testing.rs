//! Helpers for the unit tests.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fresh directory under the system's temp dir, unique to this process and call, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("postel-{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("a temporary directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The path of a program a test drives (`python3`, or an absolute path such as
/// `/usr/sbin/dnsmasq`). A test never passes without its program: a missing one fails it, naming
/// the package; tests/setup-tools.sh installs every one, and CI (`CI=true`) runs that script, so
/// there a missing program is a broken setup.
pub fn tool(program: &str, package: &str) -> PathBuf {
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .collect()
    };
    if let Some(found) = candidates.into_iter().find(|p| p.is_file()) {
        return found;
    }
    if std::env::var("CI").is_ok_and(|ci| ci == "true") {
        panic!(
            "{program} is missing although CI=true: tests/setup-tools.sh should have installed \
             it (Debian package {package})"
        );
    }
    panic!(
        "{program} is not installed, and this test needs it: run `sh tests/setup-tools.sh` as \
         root, or `apt-get install {package}`"
    );
}
