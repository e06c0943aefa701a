//! Last known good: a private copy of the settings of the last version that
//! validated, so that a process that starts on a broken edit still serves.
//!
//! Owns: where the copies live (`$XDG_STATE_HOME/fcgi-shim/`, else
//! `$HOME/.local/state/fcgi-shim/`, else the home directory /etc/passwd gives
//! our uid — suEXEC clears HOME — else `/tmp/fcgi-shim-UID/`), their names
//! (the settings file's stem and a hash of its absolute path), and saving
//! (temp file + rename, mode 0600, directories 0700) and reading them.
//! Also the back wrapper that saves once the application has started.
//! Must not: decide what is valid (config and `check --start-app` do) or
//! parse settings (the caller parses the saved text with
//! the original path, so relative paths and the site name resolve as before).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::back::{Back, Context, Outcome};
use crate::request::Exchange;

/// A saved version.
#[derive(Debug, Clone)]
pub struct Saved {
    /// The settings text (in the shebang form, the whole `mysite.fcgi`).
    pub text: String,
    /// When it was saved (the copy's mtime).
    pub saved: SystemTime,
    /// Where the copy is.
    pub path: PathBuf,
}

/// The directory the copies are kept in (not created).
pub fn state_dir() -> PathBuf {
    let from_env = |name: &str| {
        std::env::var_os(name)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(state) = from_env("XDG_STATE_HOME") {
        return state.join("fcgi-shim");
    }
    if let Some(home) = from_env("HOME").or_else(home_from_passwd) {
        return home.join(".local/state/fcgi-shim");
    }
    temp_dir()
}

fn temp_dir() -> PathBuf {
    std::env::temp_dir().join(format!("fcgi-shim-{}", nix::unistd::getuid().as_raw()))
}

/// Our home directory as /etc/passwd says (the static build has no NSS).
fn home_from_passwd() -> Option<PathBuf> {
    let db = fs::read_to_string("/etc/passwd").ok()?;
    let uid = nix::unistd::getuid().as_raw();
    // A service account's "home" (www-data: /var/www) is often a web root,
    // and not its own: only a directory we own is a home to keep secrets in.
    home_in(&db, uid).filter(|home| fs::metadata(home).is_ok_and(|m| m.uid() == uid))
}

/// The home directory (sixth field) of the entry whose uid is `uid`.
fn home_in(db: &str, uid: u32) -> Option<PathBuf> {
    db.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let found: u32 = fields.get(2)?.trim().parse().ok()?;
        let home = PathBuf::from(fields.get(5)?);
        (found == uid && home.is_absolute() && home != Path::new("/")).then_some(home)
    })
}

/// 64-bit FNV-1a: a stable short name for a path, no crate needed.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The copy's file name for the settings file `settings`: `mysite-3f9a1c2e.toml`.
pub fn file_name(settings: &Path) -> String {
    let absolute = std::path::absolute(settings).unwrap_or_else(|_| settings.to_path_buf());
    let hash = fnv1a(absolute.as_os_str().as_encoded_bytes());
    format!(
        "{}-{:08x}.toml",
        crate::config::site_of(&absolute),
        hash as u32 ^ (hash >> 32) as u32
    )
}

/// Where the copy for `settings` is (or would be) kept.
pub fn copy_path(settings: &Path) -> PathBuf {
    state_dir().join(file_name(settings))
}

/// Create `dir` (and its parents) 0700 if missing; refuse a directory that
/// is not ours or that others can enter.
fn private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = fs::symlink_metadata(dir)?;
    let uid = nix::unistd::getuid().as_raw();
    if !meta.is_dir() || meta.uid() != uid {
        return Err(io::Error::other(format!(
            "{} is not a directory owned by uid {uid}",
            dir.display()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// The private state directory in use (created 0700): the state directory
/// if it can be had, else the per-user temp directory. Every process of a
/// site runs as the same user with the same environment: they agree on it.
pub fn private_state_dir() -> io::Result<PathBuf> {
    let first = state_dir();
    match private_dir(&first) {
        Ok(()) => Ok(first),
        Err(e) if first != temp_dir() => {
            private_dir(&temp_dir()).map(|()| temp_dir()).map_err(|e2| {
                io::Error::other(format!(
                    "{}: {e}; {}: {e2}",
                    first.display(),
                    temp_dir().display()
                ))
            })
        }
        Err(e) => Err(e),
    }
}

/// Write `text` to `dir/name` (temp file beside it, mode 0600, renamed
/// over it), unless it already holds exactly that. `dir` must exist.
pub fn write_private(dir: &Path, name: &str, text: &str) -> io::Result<PathBuf> {
    save_in(dir, name, text)
}

/// Save `text` as the last good version of `settings`: written to a temp
/// file beside the copy (0600) and renamed over it. Where the state
/// directory cannot be used, the per-user temp directory is tried.
pub fn save(settings: &Path, text: &str) -> io::Result<PathBuf> {
    let name = file_name(settings);
    let first = state_dir();
    match save_in(&first, &name, text) {
        Ok(p) => Ok(p),
        Err(e) if first != temp_dir() => save_in(&temp_dir(), &name, text).map_err(|e2| {
            io::Error::other(format!(
                "{}: {e}; {}: {e2}",
                first.display(),
                temp_dir().display()
            ))
        }),
        Err(e) => Err(e),
    }
}

fn save_in(dir: &Path, name: &str, text: &str) -> io::Result<PathBuf> {
    private_dir(dir)?;
    let path = dir.join(name);
    if fs::read_to_string(&path).is_ok_and(|old| old == text) {
        // The same version: keep the file (and when it was first saved).
        return Ok(path);
    }
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let written = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(path)
}

/// The last good version of `settings`, if one was saved (the state
/// directory first, then the per-user temp directory).
pub fn load(settings: &Path) -> Option<Saved> {
    let name = file_name(settings);
    let uid = nix::unistd::getuid().as_raw();
    [state_dir(), temp_dir()].into_iter().find_map(|dir| {
        let path = dir.join(&name);
        let meta = fs::symlink_metadata(&path).ok()?;
        // Only a regular file of ours that nobody else could have written.
        if !meta.is_file() || meta.uid() != uid || meta.permissions().mode() & 0o022 != 0 {
            return None;
        }
        let text = fs::read_to_string(&path).ok()?;
        Some(Saved {
            text,
            saved: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            path,
        })
    })
}

/// Seconds since the epoch as `2026-12-01 19:30:00 UTC` (no time crate).
pub fn describe_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A back that saves its settings as the last good version once its
/// application has started (at once for `cgi`; for `wsgi` when a worker
/// became ready), then only passes calls on.
pub struct SaveWhenStarted {
    inner: Box<dyn Back>,
    /// The settings file and the text it was loaded from, until saved.
    pending: Option<(PathBuf, String)>,
}

impl SaveWhenStarted {
    pub fn new(inner: Box<dyn Back>, settings: PathBuf, text: String) -> SaveWhenStarted {
        let mut back = SaveWhenStarted {
            inner,
            pending: Some((settings, text)),
        };
        back.save_if_started();
        back
    }

    fn save_if_started(&mut self) {
        if self.pending.is_none() || !self.inner.app_started() {
            return;
        }
        if let Some((settings, text)) = self.pending.take() {
            keep(&settings, &text);
        }
    }
}

/// [`save`], with the outcome in the log.
pub fn keep(settings: &Path, text: &str) {
    match save(settings, text) {
        Ok(copy) => log::debug!("kept this version as the last good one: {}", copy.display()),
        Err(e) => log::warn!("cannot keep a copy of the last good version: {e}"),
    }
}

impl Back for SaveWhenStarted {
    fn serve(&mut self, exchange: &mut dyn Exchange, ctx: &mut Context<'_>) -> Outcome {
        let outcome = self.inner.serve(exchange, ctx);
        self.save_if_started();
        outcome
    }

    fn idle(&mut self) {
        self.inner.idle();
        self.save_if_started();
    }

    fn release_memory(&mut self) {
        self.inner.release_memory();
    }

    fn shutdown(&mut self) {
        self.inner.shutdown();
    }

    fn app_started(&mut self) -> bool {
        self.inner.app_started()
    }

    fn startup(&mut self) -> crate::back::Startup {
        let state = self.inner.startup();
        self.save_if_started();
        state
    }

    fn begin_stop(&mut self) {
        self.inner.begin_stop();
    }

    fn stopped(&mut self) -> bool {
        self.inner.stopped()
    }

    fn hand_over(&mut self) -> Option<(&'static str, String)> {
        self.save_if_started();
        self.inner.hand_over()
    }

    fn keep_after_failed_exec(&mut self) {
        self.inner.keep_after_failed_exec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_comes_from_the_uid_entry() {
        let db = "root:x:0:0:root:/root:/bin/bash\n#c\nweb:x:1000:1000::/home/web:/bin/sh\nnobody:x:65534:65534::/:/x\n";
        assert_eq!(home_in(db, 1000), Some(PathBuf::from("/home/web")));
        assert_eq!(home_in(db, 0), Some(PathBuf::from("/root")));
        assert_eq!(home_in(db, 65534), None);
        assert_eq!(home_in(db, 5), None);
    }

    #[test]
    fn names_are_stem_and_path_hash() {
        let a = file_name(Path::new("/srv/a/mysite.fcgi"));
        let b = file_name(Path::new("/srv/b/mysite.fcgi"));
        assert!(a.starts_with("mysite-") && a.ends_with(".toml"), "{a}");
        assert_eq!(a.len(), "mysite-".len() + 8 + ".toml".len());
        assert_ne!(a, b);
        assert_eq!(a, file_name(Path::new("/srv/a/mysite.fcgi")));
    }

    #[test]
    fn times_read_as_utc_dates() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_764_617_400);
        assert_eq!(describe_time(t), "2025-12-01 19:30:00 UTC");
        assert_eq!(
            describe_time(SystemTime::UNIX_EPOCH),
            "1970-01-01 00:00:00 UTC"
        );
    }

    #[test]
    fn saved_copies_are_private_and_read_back() {
        let dir = std::env::temp_dir().join(format!("last-good-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let path = save_in(&dir.join("state"), "s-1.toml", "x = 1\n").expect("save");
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = fs::metadata(dir.join("state"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700);
        assert_eq!(fs::read_to_string(&path).expect("read"), "x = 1\n");
        save_in(&dir.join("state"), "s-1.toml", "x = 2\n").expect("save again");
        assert_eq!(fs::read_to_string(&path).expect("read"), "x = 2\n");
        let _ = fs::remove_dir_all(&dir);
    }
}
