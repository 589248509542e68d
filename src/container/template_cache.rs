//! The template cache's housekeeping: each template (about 25 MiB of disk
//! each here) sits in a directory named by its key, next to a lock file
//! `KEY.lock`. Runs hold the lock shared while they restore from it, its
//! maker holds it exclusively; a template's directory time is its last use.
//! When a template is made, all but the [`KEEP_TEMPLATES`] most recently
//! used are removed, skipping any that a run holds, and so are the half-made
//! directories (`KEY.tmp-PID`) whose key nobody holds (their maker is gone).
//! Lock files stay (they are empty): removing one while a run waits on it
//! would let a later run lock a new file of the same name beside it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Templates kept when a new one is made (the new one among them).
pub const KEEP_TEMPLATES: usize = 4;

/// A template's lock: held shared by a run until its restore has read the
/// files, exclusive by a maker or by the clean-up. Released on drop.
pub struct TemplateLock(File);

impl TemplateLock {
    /// Waits for the lock on `path` (created if missing).
    pub fn exclusive(path: &Path) -> std::io::Result<Self> {
        let lock = Self(File::options().create(true).append(true).open(path)?);
        lock.flock(libc::LOCK_EX)?;
        Ok(lock)
    }

    /// The lock, if nobody holds it now.
    fn try_exclusive(path: &Path) -> Option<Self> {
        let lock = Self(File::options().write(true).open(path).ok()?);
        lock.flock(libc::LOCK_EX | libc::LOCK_NB).ok()?;
        Some(lock)
    }

    /// Lets other runs in (they restore too); still keeps the clean-up out.
    pub fn share(&self) -> std::io::Result<()> {
        self.flock(libc::LOCK_SH)
    }

    fn flock(&self, how: libc::c_int) -> std::io::Result<()> {
        loop {
            // SAFETY: flock on a descriptor this value owns.
            if unsafe { libc::flock(self.0.as_raw_fd(), how) } == 0 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Marks the template in `dir` as just used (its directory's mtime).
pub fn touch(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.set_modified(SystemTime::now());
    }
}

fn is_key(name: &str) -> bool {
    name.len() == 16 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Removes from `root` the templates beyond the [`KEEP_TEMPLATES`] most
/// recently used (never `current`, never one whose lock is held) and the
/// half-made directories nobody holds. Returns what it removed. Errors are
/// ignored: a cache left bigger is no failure.
pub fn prune(root: &Path, current: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut templates: Vec<(SystemTime, String)> = Vec::new();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if let Some((key, _pid)) = name.split_once(".tmp-") {
            // A maker holds its key's lock until its directory is renamed.
            let lock_path = root.join(format!("{key}.lock"));
            if is_key(key) && key != current {
                if let Some(_lock) = TemplateLock::try_exclusive(&lock_path) {
                    if std::fs::remove_dir_all(entry.path()).is_ok() {
                        removed.push(entry.path());
                    }
                }
            }
            continue;
        }
        if !is_key(&name) || name == current {
            continue;
        }
        if let Ok(modified) = entry.metadata().and_then(|m| m.modified()) {
            templates.push((modified, name));
        }
    }
    // Newest first; the current template takes one of the places kept.
    templates.sort_by_key(|t| std::cmp::Reverse(t.0));
    for (_, key) in templates.into_iter().skip(KEEP_TEMPLATES - 1) {
        let lock_path = root.join(format!("{key}.lock"));
        let Some(_lock) = TemplateLock::try_exclusive(&lock_path) else {
            continue;
        };
        let dir = root.join(&key);
        if std::fs::remove_dir_all(&dir).is_ok() {
            removed.push(dir);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn template(root: &Path, key: &str, age_s: u64) {
        let dir = root.join(key);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("state"), b"s").unwrap();
        File::create(root.join(format!("{key}.lock"))).unwrap();
        let when = SystemTime::now() - Duration::from_secs(age_s);
        File::open(&dir).unwrap().set_modified(when).unwrap();
    }

    #[test]
    fn keeps_the_newest_and_the_held_and_removes_the_rest() {
        let root = std::env::temp_dir().join(format!("ember-tcache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let key = |i: u64| format!("{i:016x}");
        for i in 0..7 {
            template(&root, &key(i), 100 * i);
        }
        // The current one is the oldest: kept all the same.
        let current = key(6);
        // One old template is being restored from by a run.
        let held = TemplateLock::exclusive(&root.join(format!("{}.lock", key(5)))).unwrap();
        held.share().unwrap();
        // A maker that died (its key's lock free), and one still at work
        // (it holds its key's lock).
        File::create(root.join(format!("{}.lock", key(9)))).unwrap();
        std::fs::create_dir_all(root.join(format!("{}.tmp-999999999", key(9)))).unwrap();
        let making = TemplateLock::exclusive(&root.join(format!("{}.lock", key(8)))).unwrap();
        let mine = root.join(format!("{}.tmp-{}", key(8), std::process::id()));
        std::fs::create_dir_all(&mine).unwrap();
        std::fs::write(root.join("notes.txt"), b"not ours").unwrap();

        let removed = prune(&root, &current);

        let left: std::collections::BTreeSet<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        let want: std::collections::BTreeSet<String> = [
            key(0),
            key(1),
            key(2),
            key(5),
            key(6),
            mine.file_name().unwrap().to_str().unwrap().to_string(),
            "notes.txt".to_string(),
        ]
        .into_iter()
        .collect();
        assert_eq!(left, want, "removed {removed:?}");
        assert_eq!(removed.len(), 3, "{removed:?}");
        assert!(
            root.join(format!("{}.lock", key(3))).exists(),
            "lock files stay"
        );
        drop(held);
        drop(making);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
