//! What is wrong with how a site is deployed: the classic mistakes of an
//! upload to a shared host, each said in one line with its fix.
//!
//! Owns: the diagnoses `fcgi-shim check` prints, and the ones the shim adds
//! to its log line when an application cannot start: the file the web server
//! runs (execute bit, the `#!` line, Windows line endings, the interpreter it
//! names), what suEXEC refuses (a file or directory writable by others,
//! owners that differ, setuid), paths of the application that the current
//! user cannot read or enter (with the directory that blocks the way, its
//! mode and owner), and settings the web server would serve because no
//! `.htaccess` denies them. User and group names come from /etc/passwd and
//! /etc/group directly: the static build has no NSS.
//! Must not: change anything, or run per request: only `check` and the paths
//! where an application failed to start call it.

use std::fmt;
use std::fs::{self, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::unistd::AccessFlags;

use crate::config::{AppConfig, CgiProgram, Config, WsgiConfig};

/// Set (to `reload`) by a running shim that asks a new version's `check` if
/// it can re-exec into it; see [`Purpose`].
pub const CHECK_FOR_ENV: &str = "FCGI_SHIM_CHECK_FOR";

/// The role of the file the web server runs (the shebang settings file, or
/// the executable `mysite.fcgi`).
const WEB_SERVER_RUNS: &str = "the file the web server runs";

/// How much of a file is read to look at its `#!` line (Linux reads 256 bytes).
const HEAD_BYTES: usize = 256;
/// How much of a shebang settings file is read to look for CRLF line endings.
const TEXT_CAP: u64 = 1 << 20;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The site does not work this way: `check` exits non-zero.
    Error,
    /// Risky, or fatal only elsewhere (under suEXEC, for another user).
    Warning,
}

/// One thing wrong with the deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file or directory that has to change.
    pub path: PathBuf,
    pub severity: Severity,
    /// What is wrong, and what it breaks.
    pub what: String,
    /// What to do about it.
    pub fix: String,
}

impl Problem {
    fn error(path: &Path, what: String, fix: String) -> Problem {
        Problem {
            path: path.to_path_buf(),
            severity: Severity::Error,
            what,
            fix,
        }
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let warning = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        write!(
            f,
            "{}: {warning}{}; fix: {}",
            self.path.display(),
            self.what,
            self.fix
        )
    }
}

/// Who asks, which decides how bad suEXEC's refusals are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Someone checks the deployment: everything that stops the site is an error.
    Deployment,
    /// A running shim asks whether it can re-exec into a new version (which
    /// does not pass through suEXEC): suEXEC's refusals are only warnings.
    Reload,
}

impl Purpose {
    pub fn from_env() -> Purpose {
        match std::env::var_os(CHECK_FOR_ENV) {
            Some(v) if v == "reload" => Purpose::Reload,
            _ => Purpose::Deployment,
        }
    }
}

// ---------------------------------------------------------------------------
// The whole site.

/// Everything wrong with the site whose settings file is `settings`, checked
/// by the executable `exe`; `config` when the settings are valid (then the
/// application's paths are checked too).
pub fn diagnose(
    settings: &Path,
    exe: &Path,
    config: Option<&Config>,
    purpose: Purpose,
) -> Vec<Problem> {
    let settings = absolute(settings);
    let mut problems = Vec::new();
    let shebang_form = read_head(&settings).is_some_and(|h| shebang(&h).is_some());
    let program = if shebang_form {
        Some(settings.clone())
    } else {
        started_program(&settings, exe)
    };
    if let Some(program) = &program {
        problems.extend(program_problems(program, WEB_SERVER_RUNS));
        if shebang_form {
            problems.extend(crlf_problem(&settings));
        }
        problems.extend(suexec_problems(program, purpose));
    }
    if let Some(config) = config {
        problems.extend(app_problems(&config.app));
    }
    if !shebang_form {
        problems.extend(settings_served(&settings, purpose));
    }
    problems
}

/// In the two-file form, the executable the web server runs for `settings`:
/// `exe` when the settings are its sibling (`./mysite.fcgi check`), else
/// `mysite.fcgi` beside `mysite.toml`.
fn started_program(settings: &Path, exe: &Path) -> Option<PathBuf> {
    let sibling = crate::config::sibling_of(exe);
    if same_file(&sibling, settings) {
        return Some(absolute(exe));
    }
    let beside = settings.with_extension("fcgi");
    (beside != settings && beside.is_file()).then_some(beside)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The problems that explain why the application cannot start (errors only):
/// what the shim adds to its log line when a start or an import fails.
pub fn explain_start_failure(app: &AppConfig) -> Option<String> {
    let text: Vec<String> = app_problems(app)
        .into_iter()
        .filter(Problem::is_error)
        .map(|p| p.to_string())
        .collect();
    (!text.is_empty()).then(|| text.join("; "))
}

/// Why a CGI program could not be started, if the file says why.
pub fn explain_program_failure(program: &Path, workdir: Option<&Path>) -> Option<String> {
    let mut problems = program_problems(program, "the CGI program");
    if let Some(dir) = workdir {
        problems.extend(access_problem(dir, Need::Enter, "the workdir"));
    }
    let text: Vec<String> = problems.iter().map(Problem::to_string).collect();
    (!text.is_empty()).then(|| text.join("; "))
}

/// What the application needs, for the user we run as.
pub fn app_problems(app: &AppConfig) -> Vec<Problem> {
    let mut problems = Vec::new();
    match app {
        AppConfig::Wsgi(w) => {
            match resolve_program(&w.python) {
                Ok(python) => problems.extend(program_problems(&python, "the Python interpreter")),
                Err(p) => problems.push(p),
            }
            for dir in &w.python_path {
                problems.extend(access_problem(
                    dir,
                    Need::ReadDir,
                    "the python_path directory",
                ));
            }
            problems.extend(access_problem(&w.workdir, Need::Enter, "the workdir"));
            if problems.is_empty() {
                problems.extend(module_problem(w));
            }
        }
        AppConfig::Server(server) => {
            if let Some(first) = server.command.first().filter(|p| p.contains('/')) {
                problems.extend(program_problems(Path::new(first), "the server program"));
            }
            problems.extend(access_problem(&server.workdir, Need::Enter, "the workdir"));
        }
        AppConfig::Cgi(c) => {
            match &c.program {
                CgiProgram::Command(argv) => {
                    if let Some(first) = argv.first().filter(|p| p.contains('/')) {
                        problems.extend(program_problems(Path::new(first), "the CGI program"));
                    }
                }
                CgiProgram::Root(dir) => {
                    problems.extend(access_problem(dir, Need::ReadDir, "the CGI root directory"));
                }
            }
            if let Some(dir) = &c.workdir {
                problems.extend(access_problem(dir, Need::Enter, "the workdir"));
            }
        }
    }
    problems
}

/// The interpreter named by the `python` setting: a path, or found in PATH
/// as the worker's spawn will look for it.
fn resolve_program(name: &str) -> Result<PathBuf, Problem> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let path = std::env::var("PATH")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| crate::supervise::DEFAULT_PATH.to_string());
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Problem::error(
                Path::new(name),
                format!("the `python` setting names \"{name}\", which is not in PATH ({path})"),
                format!("write its full path, e.g. python = \"/home/you/venv/bin/{name}\""),
            )
        })
}

/// The application's module, where Python would find it (the first
/// python_path entry, or the workdir, that has it), if it cannot be read.
fn module_problem(w: &WsgiConfig) -> Option<Problem> {
    let parts: Vec<&str> = w.module.split('.').collect();
    let roots = w.python_path.iter().chain(std::iter::once(&w.workdir));
    let files = roots
        .into_iter()
        .find_map(|root| module_files(root, &parts))?;
    files.into_iter().enumerate().find_map(|(i, (path, need))| {
        let role = match (i, need) {
            (0, _) => "the directory Python imports the application from",
            (_, Need::ReadDir) => "the application package",
            _ => "the application module",
        };
        access_problem(&path, need, role)
    })
}

/// The directories and files Python reads to import the module `parts`
/// from `root`, if its first part is there.
fn module_files(root: &Path, parts: &[&str]) -> Option<Vec<(PathBuf, Need)>> {
    // Python lists the directory to find the module in it.
    let mut files = vec![(root.to_path_buf(), Need::ReadDir)];
    let mut at = root.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        let dir = at.join(part);
        let file = at.join(format!("{part}.py"));
        if dir.is_dir() {
            files.push((dir.clone(), Need::ReadDir));
            let init = dir.join("__init__.py");
            if init.exists() {
                files.push((init, Need::Read));
            }
            at = dir;
        } else if file.is_file() {
            files.push((file, Need::Read));
            break;
        } else if i == 0 {
            return None;
        } else {
            break;
        }
    }
    Some(files)
}

// ---------------------------------------------------------------------------
// Files that are run.

/// What is wrong with a file that is executed: missing, not executable, or a
/// script whose `#!` line cannot work.
pub fn program_problems(path: &Path, role: &str) -> Vec<Problem> {
    let path = &absolute(path);
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return vec![Problem::error(
                path,
                format!("{role} does not exist"),
                "correct the path, or put the file there".into(),
            )];
        }
        Err(_) => return access_problem(path, Need::Run, role).into_iter().collect(),
    };
    if meta.is_dir() {
        return vec![Problem::error(
            path,
            format!("{role} is a directory, not a program"),
            "name the program inside it".into(),
        )];
    }
    let mut problems = Vec::new();
    let mode = meta.permissions().mode();
    if mode & 0o111 == 0 {
        let consequence = if role == WEB_SERVER_RUNS {
            ": the web server cannot run it (Apache says only \"End of script output before headers\")"
        } else {
            ""
        };
        problems.push(Problem::error(
            path,
            format!(
                "{role} is not executable (mode {:04o}){consequence}",
                mode & 0o7777
            ),
            format!("chmod 755 {}", path.display()),
        ));
    } else if let Some(p) = access_problem(path, Need::Run, role) {
        problems.push(p);
    }
    let Some(head) = read_head(path) else {
        return problems;
    };
    if let Some(line) = shebang(&head) {
        if let Some(p) = access_problem(path, Need::Read, role) {
            // The interpreter must read the script.
            problems.push(p);
        }
        problems.extend(shebang_problems(path, &line));
    }
    problems
}

/// The first bytes of a readable file.
fn read_head(path: &Path) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(HEAD_BYTES);
    fs::File::open(path)
        .ok()?
        .take(HEAD_BYTES as u64)
        .read_to_end(&mut head)
        .ok()?;
    Some(head)
}

/// A `#!` line, as the kernel reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shebang {
    /// A UTF-8 byte order mark before `#!`: the kernel does not see a `#!` line.
    pub bom: bool,
    /// The interpreter, without a trailing carriage return.
    pub interpreter: String,
    /// The line ends with a carriage return (CRLF line endings).
    pub cr: bool,
}

/// The `#!` line at the start of `head`, if there is one.
pub fn shebang(head: &[u8]) -> Option<Shebang> {
    let (bom, rest) = match head.strip_prefix(b"\xEF\xBB\xBF") {
        Some(rest) => (true, rest),
        None => (false, head),
    };
    let line = rest.strip_prefix(b"#!")?;
    let line = line.split(|&b| b == b'\n').next().unwrap_or(line);
    let cr = line.ends_with(b"\r");
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = String::from_utf8_lossy(line);
    let interpreter = text
        .trim_start_matches([' ', '\t'])
        .split([' ', '\t'])
        .next()
        .unwrap_or("")
        .to_string();
    Some(Shebang {
        bom,
        interpreter,
        cr,
    })
}

/// Why a script with this `#!` line cannot start.
fn shebang_problems(script: &Path, line: &Shebang) -> Vec<Problem> {
    let name = script.display();
    if line.bom {
        return vec![Problem::error(
            script,
            "the file starts with an invisible byte order mark (saved as \"UTF-8 with BOM\"), \
             so the system does not see its #! line and cannot run it"
                .into(),
            format!("save it as UTF-8 without BOM, or: sed -i '1s/^\\xEF\\xBB\\xBF//' {name}"),
        )];
    }
    if line.cr {
        return vec![Problem::error(
            script,
            format!(
                "the #! line ends with a carriage return (Windows line endings, CRLF, as an FTP upload \
                 in binary mode or a Windows editor saves them): the system looks for a program \
                 named \"{}\\r\", finds none, and the web server cannot start the site",
                line.interpreter
            ),
            format!(
                "convert the file to Unix line endings: sed -i 's/\\r$//' {name} \
                 (or upload it in ASCII/text mode)"
            ),
        )];
    }
    if line.interpreter.is_empty() {
        return vec![Problem::error(
            script,
            "the #! line names no program".into(),
            "write the full path of fcgi-shim after #!, e.g. #!/home/you/bin/fcgi-shim".into(),
        )];
    }
    let interpreter = Path::new(&line.interpreter);
    if !interpreter.is_absolute() {
        return vec![Problem::error(
            script,
            format!(
                "the #! line names \"{}\", not a full path: the system looks for it in the \
                 current directory",
                line.interpreter
            ),
            format!(
                "write its full path, e.g. #!/home/you/bin/{}",
                line.interpreter
            ),
        )];
    }
    match fs::metadata(interpreter) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => vec![Problem::error(
            script,
            format!(
                "the #! line names {}, which does not exist: the web server cannot start the site \
                 (Apache says only \"End of script output before headers\")",
                line.interpreter
            ),
            format!(
                "install fcgi-shim at {} (mode 755), or correct the first line to where it is",
                line.interpreter
            ),
        )],
        Ok(m) if m.is_dir() => vec![Problem::error(
            script,
            format!(
                "the #! line names {}, which is a directory",
                line.interpreter
            ),
            "name the fcgi-shim executable itself".into(),
        )],
        Ok(m) if m.permissions().mode() & 0o111 == 0 => vec![Problem::error(
            script,
            format!(
                "the #! line names {}, which is not executable (mode {:04o})",
                line.interpreter,
                m.permissions().mode() & 0o7777
            ),
            format!("chmod 755 {}", line.interpreter),
        )],
        _ => access_problem(interpreter, Need::Run, "the program named on the #! line")
            .into_iter()
            .collect(),
    }
}

/// CRLF line endings after the first line of a shebang settings file.
fn crlf_problem(settings: &Path) -> Option<Problem> {
    let mut text = Vec::new();
    fs::File::open(settings)
        .ok()?
        .take(TEXT_CAP)
        .read_to_end(&mut text)
        .ok()?;
    if shebang(&text).is_some_and(|s| s.cr) {
        return None; // said already, about the first line
    }
    let lines = text.windows(2).filter(|w| w == b"\r\n").count();
    (lines > 0).then(|| {
        Problem::error(
            settings,
            format!(
                "{lines} line(s) end with a carriage return (Windows line endings, CRLF); the next \
                 upload may bring one to the #! line too"
            ),
            format!(
                "convert the file to Unix line endings: sed -i 's/\\r$//' {} \
                 (or upload it in ASCII/text mode)",
                settings.display()
            ),
        )
    })
}

// ---------------------------------------------------------------------------
// suEXEC.

/// What suEXEC refuses about the program the web server runs: a symbolic
/// link, the file or its directory writable by group or others,
/// setuid/setgid, and a file whose owner (user or group) is not its
/// directory's.
pub fn suexec_problems(program: &Path, purpose: Purpose) -> Vec<Problem> {
    let program = absolute(program);
    let Some(dir) = program.parent() else {
        return Vec::new();
    };
    let (Ok(file), Ok(dir_meta)) = (fs::metadata(&program), fs::metadata(dir)) else {
        return Vec::new();
    };
    // suEXEC runs the program as its owner: only then (or for root, who
    // checks for someone) are these refusals certain to matter.
    let uid = nix::unistd::getuid().as_raw();
    let severity = match purpose {
        Purpose::Reload => Severity::Warning,
        Purpose::Deployment if uid == 0 || uid == file.uid() => Severity::Error,
        Purpose::Deployment => Severity::Warning,
    };
    let mut problems = Vec::new();
    let mut add = |path: &Path, what: String, fix: String| {
        problems.push(Problem {
            path: path.to_path_buf(),
            severity,
            what,
            fix,
        })
    };
    if fs::symlink_metadata(&program).is_ok_and(|m| m.file_type().is_symlink()) {
        add(
            &program,
            "a symbolic link: suEXEC refuses to run it (its log says \"cannot stat program\") and \
             the site answers 500"
                .into(),
            format!(
                "put a copy there instead (cp --remove-destination \"$(readlink -f {0})\" {0}), \
                 or use the shebang form",
                program.display()
            ),
        );
    }
    let dir_mode = dir_meta.permissions().mode();
    if let Some(who) = writable_by(dir_mode) {
        add(
            dir,
            format!(
                "the directory of {} is writable by {who} (mode {:04o}): suEXEC refuses to run \
                 programs in it (its log says \"directory is writable by others\") and the site \
                 answers 500",
                file_name(&program),
                dir_mode & 0o7777
            ),
            format!("chmod 755 {}", dir.display()),
        );
    }
    let mode = file.permissions().mode();
    if let Some(who) = writable_by(mode) {
        add(
            &program,
            format!(
                "writable by {who} (mode {:04o}): suEXEC refuses to run it (\"file is writable by \
                 others\") and the site answers 500",
                mode & 0o7777
            ),
            format!("chmod 755 {}", program.display()),
        );
    }
    if mode & 0o6000 != 0 {
        add(
            &program,
            format!(
                "setuid or setgid (mode {:04o}): suEXEC refuses to run it",
                mode & 0o7777
            ),
            format!("chmod 755 {}", program.display()),
        );
    }
    if (file.uid(), file.gid()) != (dir_meta.uid(), dir_meta.gid()) {
        let owner = owner_text(dir_meta.uid(), dir_meta.gid());
        add(
            &program,
            format!(
                "owned by {} but its directory by {owner}: suEXEC refuses to run it (\"target \
                 uid/gid mismatch\") and the site answers 500",
                owner_text(file.uid(), file.gid())
            ),
            format!(
                "give it to the directory's owner: chown {owner} {} (or, logged in as that user, \
                 copy it and move the copy over it)",
                program.display()
            ),
        );
    }
    problems
}

/// "group", "others" or "group and others" when `mode` lets them write.
fn writable_by(mode: u32) -> Option<&'static str> {
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => Some("group and others"),
        (true, false) => Some("its group"),
        (false, true) => Some("others"),
        (false, false) => None,
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

// ---------------------------------------------------------------------------
// Permissions of the current user.

/// What the current user must be able to do with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Execute a file.
    Run,
    /// List and enter a directory.
    ReadDir,
    /// Enter a directory (chdir into it).
    Enter,
    /// Read a file.
    Read,
}

impl Need {
    fn flags(self) -> AccessFlags {
        match self {
            Need::Run | Need::Enter => AccessFlags::X_OK,
            Need::ReadDir => AccessFlags::R_OK | AccessFlags::X_OK,
            Need::Read => AccessFlags::R_OK,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Need::Run => "run",
            Need::Enter => "enter",
            Need::ReadDir | Need::Read => "read",
        }
    }

    fn bits(self) -> &'static str {
        match self {
            Need::Run | Need::Enter => "x",
            Need::ReadDir => "rx",
            Need::Read => "r",
        }
    }
}

/// Why the current user cannot use `path` (the `role` it plays, e.g.
/// "the python_path directory") as `need` says: the first directory on the way
/// that cannot be entered, or the path itself, with its mode and owner.
pub fn access_problem(path: &Path, need: Need, role: &str) -> Option<Problem> {
    let path = absolute(path);
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    ancestors.reverse();
    for dir in ancestors {
        match nix::unistd::access(dir, AccessFlags::X_OK) {
            Ok(()) => {}
            Err(Errno::EACCES) => {
                let meta = fs::metadata(dir).ok();
                return Some(Problem::error(
                    dir,
                    format!(
                        "{} cannot enter this directory ({}), so {role} {} cannot be reached",
                        me(),
                        meta.as_ref().map(describe).unwrap_or_default(),
                        path.display()
                    ),
                    chmod_fix(dir, meta.as_ref(), "x"),
                ));
            }
            Err(Errno::ENOENT | Errno::ENOTDIR) => return Some(missing(&path, role)),
            Err(_) => return None,
        }
    }
    match nix::unistd::access(&path, need.flags()) {
        Ok(()) => None,
        Err(Errno::EACCES) => {
            let meta = fs::metadata(&path).ok();
            Some(Problem::error(
                &path,
                format!(
                    "{} cannot {} {role} ({})",
                    me(),
                    need.verb(),
                    meta.as_ref().map(describe).unwrap_or_default()
                ),
                chmod_fix(&path, meta.as_ref(), need.bits()),
            ))
        }
        Err(Errno::ENOENT | Errno::ENOTDIR) => Some(missing(&path, role)),
        Err(_) => None,
    }
}

fn missing(path: &Path, role: &str) -> Problem {
    Problem::error(
        path,
        format!("{role} does not exist"),
        "correct the path in the settings, or create it".into(),
    )
}

/// "chmod o+rx PATH", for the class (owner, group, others) the current user is in.
fn chmod_fix(path: &Path, meta: Option<&Metadata>, bits: &str) -> String {
    let class = match meta {
        Some(m) if m.uid() == nix::unistd::getuid().as_raw() => "u",
        Some(m) if in_group(m.gid()) => "g",
        _ => "o",
    };
    format!("chmod {class}+{bits} {}", path.display())
}

fn in_group(gid: u32) -> bool {
    nix::unistd::getgid().as_raw() == gid
        || nix::unistd::getgroups()
            .map(|groups| groups.iter().any(|g| g.as_raw() == gid))
            .unwrap_or(false)
}

/// "mode 0700, owner alice, group alice".
fn describe(meta: &Metadata) -> String {
    format!(
        "mode {:04o}, owner {}, group {}",
        meta.permissions().mode() & 0o7777,
        user_name(meta.uid()),
        group_name(meta.gid())
    )
}

/// "alice:alice".
fn owner_text(uid: u32, gid: u32) -> String {
    format!("{}:{}", user_name(uid), group_name(gid))
}

/// The current user: "www-data (uid 33)".
fn me() -> String {
    let uid = nix::unistd::getuid().as_raw();
    format!("{} (uid {uid})", user_name(uid))
}

fn user_name(uid: u32) -> String {
    fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|db| name_in(&db, uid))
        .unwrap_or_else(|| format!("uid {uid}"))
}

fn group_name(gid: u32) -> String {
    fs::read_to_string("/etc/group")
        .ok()
        .and_then(|db| name_in(&db, gid))
        .unwrap_or_else(|| format!("gid {gid}"))
}

/// The name whose id (third field) is `id` in an /etc/passwd or /etc/group text.
fn name_in(db: &str, id: u32) -> Option<String> {
    db.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let found: u32 = fields.nth(1)?.trim().parse().ok()?;
        (found == id && !name.is_empty()).then(|| name.to_string())
    })
}

// ---------------------------------------------------------------------------
// Settings the web server would serve.

/// The settings file sits under a `.htaccess` (so, most likely, in the web
/// root) and none of the `.htaccess` files from its directory up denies it.
/// An error when someone checks the deployment (secrets are downloadable
/// now); only a warning for a reload, which must not keep a fix of the
/// application from going live.
pub fn settings_served(settings: &Path, purpose: Purpose) -> Option<Problem> {
    let settings = absolute(settings);
    let name = settings.file_name()?.to_string_lossy().into_owned();
    let mut nearest = None;
    for dir in settings.ancestors().skip(1) {
        let htaccess = dir.join(".htaccess");
        let Ok(text) = fs::read_to_string(&htaccess) else {
            continue;
        };
        let relative = settings
            .strip_prefix(dir)
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_else(|_| name.clone());
        if htaccess_denies(&text, &name, &relative) {
            return None;
        }
        nearest.get_or_insert(htaccess);
    }
    let htaccess = nearest?;
    Some(Problem {
        path: settings.clone(),
        severity: match purpose {
            Purpose::Deployment => Severity::Error,
            Purpose::Reload => Severity::Warning,
        },
        what: format!(
            "{} does not deny this file, so the web server sends it to anyone who asks for it, \
             secrets (env = {{ SECRET_KEY = ... }}) included",
            htaccess.display()
        ),
        fix: format!(
            "add the <FilesMatch \"\\.(toml|bak|orig|old|save|swp|swo)$|~$|^#.*#$\"> block of \
             htaccess-examples/mod_fcgid.htaccess to {}, or move the settings out of the web root",
            htaccess.display()
        ),
    })
}

/// An open `<Section args>` of a `.htaccess` file.
struct Section {
    /// Lower case: "files", "filesmatch", "ifmodule", ...
    name: String,
    args: String,
}

/// Does this `.htaccess` deny requests for the file `name` (its path below
/// the `.htaccess` directory is `relative`)? Denied are: a `<Files>`,
/// `<Files ~>` or `<FilesMatch>` section matching the name that holds
/// `Require all denied` or `Deny from all` (anywhere inside it, `<IfModule>`
/// or not), the same outside any such section (the whole directory), and a
/// `RewriteRule` with the F or G flag, without a `RewriteCond`, whose pattern
/// matches.
pub fn htaccess_denies(text: &str, name: &str, relative: &str) -> bool {
    let mut open: Vec<Section> = Vec::new();
    let mut after_cond = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('<') {
            // One or more tags: "<IfModule a><IfVersion >= 2.4>", "</IfVersion></IfModule>".
            for tag in line.split("><") {
                let tag = tag.trim_start_matches('<').trim_end_matches('>').trim();
                if let Some(name) = tag.strip_prefix('/') {
                    let name = name.trim().to_ascii_lowercase();
                    if let Some(at) = open.iter().rposition(|s| s.name == name) {
                        open.truncate(at);
                    }
                } else {
                    let (name, args) = tag.split_once([' ', '\t']).unwrap_or((tag, ""));
                    open.push(Section {
                        name: name.to_ascii_lowercase(),
                        args: args.trim().to_string(),
                    });
                }
            }
            continue;
        }
        let words: Vec<String> = line
            .split_whitespace()
            .map(|w| w.to_ascii_lowercase())
            .collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let files: Vec<&Section> = open
            .iter()
            .filter(|s| s.name == "files" || s.name == "filesmatch")
            .collect();
        let applies = files.iter().all(|s| files_section_matches(s, name));
        match words.as_slice() {
            ["require", "all", "denied"] | ["deny", "from", "all"] if applies => return true,
            ["rewritecond", ..] => {
                after_cond = true;
                continue;
            }
            ["rewriterule", ..]
                if !after_cond && files.is_empty() && rewrite_forbids(line, relative) =>
            {
                return true;
            }
            _ => {}
        }
        after_cond = false;
    }
    false
}

/// Does `<Files "glob">`, `<Files ~ "re">` or `<FilesMatch "re">` match `name`?
fn files_section_matches(section: &Section, name: &str) -> bool {
    let args = section.args.trim();
    let (regex, pattern) = match (section.name.as_str(), args.strip_prefix('~')) {
        ("filesmatch", _) => (true, args),
        (_, Some(rest)) => (true, rest.trim()),
        _ => (false, args),
    };
    let pattern = unquote(pattern);
    if regex {
        regex_lite::Regex::new(pattern).is_ok_and(|re| re.is_match(name))
    } else {
        glob_matches(pattern, name)
    }
}

fn unquote(text: &str) -> &str {
    let text = text.trim();
    text.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .or_else(|| text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')))
        .unwrap_or(text)
}

/// A shell wildcard (`*`, `?`, `[...]`) as Apache's `<Files>` reads it.
fn glob_matches(glob: &str, name: &str) -> bool {
    let mut re = String::from("^");
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            '[' => {
                re.push('[');
                if chars.peek() == Some(&'!') {
                    chars.next();
                    re.push('^');
                }
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    if c == '\\' || c == '[' || c == '^' {
                        re.push('\\');
                    }
                    re.push(c);
                }
                re.push(']');
            }
            c => re.push_str(&regex_lite::escape(&c.to_string())),
        }
    }
    re.push('$');
    regex_lite::Regex::new(&re).is_ok_and(|re| re.is_match(name))
}

/// `RewriteRule PATTERN - [F]` (or `[G]`, `[forbidden]`, `[gone]`) whose
/// pattern matches the path below the `.htaccess` directory.
fn rewrite_forbids(line: &str, relative: &str) -> bool {
    let mut words = line.split_whitespace().skip(1);
    let (Some(pattern), Some(_target)) = (words.next(), words.next()) else {
        return false;
    };
    let flags = words.next().unwrap_or("").to_ascii_lowercase();
    let flags = flags.trim_start_matches('[').trim_end_matches(']');
    let forbids = flags
        .split(',')
        .any(|f| matches!(f.trim(), "f" | "forbidden" | "g" | "gone"));
    if !forbids || pattern.starts_with('!') {
        return false;
    }
    regex_lite::Regex::new(unquote(pattern)).is_ok_and(|re| re.is_match(relative))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../htaccess-examples/mod_fcgid.htaccess");
    const NO_AUTHCONFIG: &str = include_str!("../htaccess-examples/no-authconfig.htaccess");

    #[test]
    fn the_shipped_htaccess_files_deny_settings_and_backups_only() {
        for text in [SHIPPED, NO_AUTHCONFIG] {
            assert_denies_settings_and_backups_only(text);
        }
    }

    fn assert_denies_settings_and_backups_only(shipped: &str) {
        for name in [
            "mysite.toml",
            "mysite.toml~",
            "mysite.fcgi.bak",
            ".mysite.toml.swp",
            "#mysite.toml#",
            "mysite.toml.orig",
        ] {
            assert!(htaccess_denies(shipped, name, name), "{name} is not denied");
        }
        for name in ["settings.conf", "index.html", "mysite.tomlx"] {
            assert!(!htaccess_denies(shipped, name, name), "{name} is denied");
        }
    }

    #[test]
    fn htaccess_forms_of_deny() {
        let table: &[(&str, &str, bool)] = &[
            ("AddHandler fcgid-script .fcgi\n", "mysite.toml", false),
            (
                "<Files \"mysite.toml\">\n  Require all denied\n</Files>\n",
                "mysite.toml",
                true,
            ),
            (
                "<Files \"*.toml\">\nOrder allow,deny\nDeny from all\n</Files>\n",
                "mysite.toml",
                true,
            ),
            (
                "<Files *.conf>\nRequire all denied\n</Files>\n",
                "mysite.toml",
                false,
            ),
            (
                "<Files ~ \"\\.toml$\">\nRequire all denied\n</Files>\n",
                "a.toml",
                true,
            ),
            (
                "<Files \"site.[tc]oml\">\nRequire all denied\n</Files>\n",
                "site.coml",
                true,
            ),
            (
                "<FilesMatch \"\\.ini$\">\nRequire all denied\n</FilesMatch>\n",
                "mysite.toml",
                false,
            ),
            // The whole directory.
            (
                "<IfModule mod_authz_core.c>\nRequire all denied\n</IfModule>\n",
                "x.toml",
                true,
            ),
            ("deny from all\n", "x.toml", true),
            // A deny that ended before the directive that matters.
            (
                "<FilesMatch \"\\.bak$\">\nRequire all denied\n</FilesMatch>\nRequire all granted\n",
                "x.toml",
                false,
            ),
            (
                "RewriteEngine On\nRewriteRule \\.toml$ - [F,L]\n",
                "x.toml",
                true,
            ),
            (
                "RewriteRule ^(.*)$ mysite.fcgi/$1 [QSA,L]\n",
                "x.toml",
                false,
            ),
            (
                "RewriteCond %{HTTP_HOST} ^a$\nRewriteRule \\.toml$ - [F]\n",
                "x.toml",
                false,
            ),
            // Two tags on one line, as in the shipped file.
            (
                "<FilesMatch \"\\.toml$\">\n<IfModule a><IfVersion >= 2.4>\nRequire all denied\n</IfVersion></IfModule>\n</FilesMatch>\n",
                "x.toml",
                true,
            ),
            (
                "<Files a.toml>\n</Files>\n<IfModule a><IfVersion >= 2.4>\n</IfVersion></IfModule>\nDeny from all\n",
                "x.toml",
                true,
            ),
            // A comment is not a directive.
            ("# Require all denied\n", "x.toml", false),
        ];
        for (text, name, denied) in table {
            assert_eq!(
                htaccess_denies(text, name, name),
                *denied,
                "{name} under:\n{text}"
            );
        }
    }

    /// A file's first bytes, and (interpreter, CR at the end, BOM) if it has a `#!` line.
    type ShebangCase = (&'static [u8], Option<(&'static str, bool, bool)>);

    #[test]
    fn shebang_lines() {
        let table: &[ShebangCase] = &[
            (
                b"#!/home/me/bin/fcgi-shim\n[app]\n",
                Some(("/home/me/bin/fcgi-shim", false, false)),
            ),
            (
                b"#!/home/me/bin/fcgi-shim\r\n[app]\r\n",
                Some(("/home/me/bin/fcgi-shim", true, false)),
            ),
            (
                b"#! /usr/bin/env fcgi-shim\n",
                Some(("/usr/bin/env", false, false)),
            ),
            (b"\xEF\xBB\xBF#!/x\n", Some(("/x", false, true))),
            (b"#!/x", Some(("/x", false, false))),
            (b"#!\n", Some(("", false, false))),
            (b"[app]\n", None),
            (b"\x7fELF\x02\x01", None),
            (b"", None),
        ];
        for (head, want) in table {
            let got = shebang(head).map(|s| (s.interpreter, s.cr, s.bom));
            let want = want.map(|(i, cr, bom)| (i.to_string(), cr, bom));
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn names_from_passwd_and_group() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n# comment\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\nbroken\n";
        assert_eq!(name_in(passwd, 0).as_deref(), Some("root"));
        assert_eq!(name_in(passwd, 33).as_deref(), Some("www-data"));
        assert_eq!(name_in(passwd, 1000), None);
        assert_eq!(
            name_in("staff:x:50:alice,bob\n", 50).as_deref(),
            Some("staff")
        );
    }

    #[test]
    fn writable_classes() {
        assert_eq!(writable_by(0o755), None);
        assert_eq!(writable_by(0o775), Some("its group"));
        assert_eq!(writable_by(0o757), Some("others"));
        assert_eq!(writable_by(0o1777), Some("group and others"));
    }

    #[test]
    fn globs() {
        assert!(glob_matches("*.toml", "mysite.toml"));
        assert!(!glob_matches("*.toml", "mysite.toml.bak"));
        assert!(glob_matches("my?ite.*", "mysite.fcgi"));
        assert!(glob_matches("[!.]*", "a"));
        assert!(!glob_matches("[!.]*", ".a"));
        assert!(glob_matches("a+b.toml", "a+b.toml"));
    }

    #[test]
    fn problem_lines_say_what_and_fix() {
        let p = Problem::error(
            Path::new("/w/mysite.fcgi"),
            "not executable".into(),
            "chmod 755 /w/mysite.fcgi".into(),
        );
        assert_eq!(
            p.to_string(),
            "/w/mysite.fcgi: not executable; fix: chmod 755 /w/mysite.fcgi"
        );
        let w = Problem {
            severity: Severity::Warning,
            ..p
        };
        assert!(
            w.to_string().starts_with("/w/mysite.fcgi: warning: "),
            "{w}"
        );
    }
}
