//! One validation per site: the processes of one site (mod_fcgid runs
//! several) agree on whether a new version is usable, so that one of them
//! starts it to find out and only that one logs a refusal.
//!
//! Owns: the lock file and the verdict file beside the last good copy
//! (`mysite-3f9a1c2e.lock` and `.verdict` in the private state directory,
//! mode 0600), claiming a validation (`flock`, never waiting), and
//! recording and reading a verdict for a version's key (the caller's
//! identity of the files: dev, inode, size and mtime of each watched one).
//! Must not: validate anything (`reload` does) or block on the lock.

use std::fs::{self, File, TryLockError};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// What the first line of a verdict file says.
const MAGIC: &str = "fcgi-shim verdict 1";

/// The verdict of a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Good,
    /// Why it is not usable (the validating process logged it).
    Bad(String),
}

/// Where the processes of one site keep their lock and verdict.
#[derive(Debug, Clone)]
pub struct Site {
    lock: PathBuf,
    verdict: PathBuf,
}

/// What [`Site::claim`] found.
#[derive(Debug)]
pub enum Claim {
    /// The version was validated already (by us or another process).
    Decided(Decision),
    /// Another process holds the lock: it is validating.
    Busy,
    /// The lock is ours: validate, then [`Validating::decide`].
    Ours(Validating),
}

/// A validation we do for the site; the lock is held until
/// [`decide`](Self::decide) or drop (then the others validate themselves).
#[derive(Debug)]
pub struct Validating {
    // Held for its lock (released when the file is closed).
    _lock: File,
    verdict: PathBuf,
    key: String,
}

impl Site {
    /// The lock and verdict of the site whose settings file is `settings`,
    /// in the private state directory (created if missing).
    pub fn for_settings(settings: &Path) -> io::Result<Site> {
        let dir = crate::last_good::private_state_dir()?;
        let name = crate::last_good::file_name(settings);
        let stem = name.strip_suffix(".toml").unwrap_or(&name);
        Ok(Site {
            lock: dir.join(format!("{stem}.lock")),
            verdict: dir.join(format!("{stem}.verdict")),
        })
    }

    /// Take the site's lock without waiting; with it, the recorded verdict
    /// for `key` if there is one (the lock is then let go at once).
    pub fn claim(&self, key: &str) -> io::Result<Claim> {
        let file = open_lock_file(&self.lock)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(Claim::Busy),
            Err(TryLockError::Error(e)) => return Err(e),
        }
        if let Some(decision) = read_verdict(&self.verdict, key) {
            return Ok(Claim::Decided(decision));
        }
        Ok(Claim::Ours(Validating {
            _lock: file,
            verdict: self.verdict.clone(),
            key: key.to_string(),
        }))
    }
}

/// Open (creating it 0600) a file that is only ever locked (flock), never
/// written: a site's validation lock, its shared server's spawn lock.
pub fn open_lock_file(path: &Path) -> io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

impl Validating {
    /// Record the verdict for the version, then let go of the lock.
    pub fn decide(self, decision: &Decision) {
        let body = match decision {
            Decision::Good => "good\n".to_string(),
            Decision::Bad(why) => format!("bad\n{why}\n"),
        };
        let text = format!("{MAGIC}\n{}\n{body}", self.key);
        let dir = self.verdict.parent().unwrap_or(Path::new("."));
        let name = self
            .verdict
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Err(e) = crate::last_good::write_private(dir, &name, &text) {
            log::warn!(
                "reload: cannot record the verdict for the other processes of this site in {}: {e}",
                self.verdict.display()
            );
        }
    }
}

/// The verdict recorded in `path` for `key`, if that is the version it is for.
fn read_verdict(path: &Path, key: &str) -> Option<Decision> {
    let text = fs::read_to_string(path).ok()?;
    let rest = text.strip_prefix(MAGIC)?.strip_prefix('\n')?;
    let rest = rest.strip_prefix(key)?.strip_prefix('\n')?;
    let (word, why) = rest.split_once('\n').unwrap_or((rest, ""));
    match word {
        "good" => Some(Decision::Good),
        "bad" => Some(Decision::Bad(why.trim_end().to_string())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site_in(dir: &Path) -> Site {
        Site {
            lock: dir.join("s.lock"),
            verdict: dir.join("s.verdict"),
        }
    }

    #[test]
    fn the_first_claim_validates_the_next_waits_then_reads_the_verdict() {
        let dir = std::env::temp_dir().join(format!("verdict-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("mkdir");
        let (a, b) = (site_in(&dir), site_in(&dir));
        let Ok(Claim::Ours(validating)) = a.claim("k1") else {
            panic!("the first claim validates");
        };
        assert!(matches!(b.claim("k1"), Ok(Claim::Busy)), "the lock is held");
        validating.decide(&Decision::Bad("x.py:3: SyntaxError".into()));
        match b.claim("k1") {
            Ok(Claim::Decided(Decision::Bad(why))) => assert_eq!(why, "x.py:3: SyntaxError"),
            other => panic!("{other:?}"),
        }
        // Another version: validated again.
        let Ok(Claim::Ours(validating)) = b.claim("k2") else {
            panic!("a new key is not decided");
        };
        validating.decide(&Decision::Good);
        assert!(matches!(a.claim("k2"), Ok(Claim::Decided(Decision::Good))));
        // A validator that went away without a verdict lets the next one in.
        let Ok(Claim::Ours(gone)) = a.claim("k3") else {
            panic!("k3");
        };
        drop(gone);
        assert!(matches!(b.claim("k3"), Ok(Claim::Ours(_))));
        let _ = fs::remove_dir_all(&dir);
    }
}
