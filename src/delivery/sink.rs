//! File sinks: a group's token written to a file its consumer reads
//! (docs/design.md section 6, issue 4 item 1).
//!
//! [`render`] turns a group's published tokens into the bytes of one of the
//! three [`SinkFormat`]s; [`write`](fn@write) puts them on disk atomically; [`remove`]
//! deletes a sink whose group left the config;
//! [`remove_stale_temporaries`] deletes the temporary files a writer killed
//! mid-write (`kill -9`) left behind. The caller (the delivery service)
//! cleans up and writes every sink at start, because a tmpfs may be empty
//! after boot, after every rotation, and again with backoff while a write
//! fails.
//!
//! # Invariants
//!
//! - A reader never sees a partial, empty or missing file once the sink was
//!   written: the bytes go to a temporary file in the same directory
//!   (created `O_EXCL` with the sink's mode, so it is never readable by
//!   anyone the sink itself would not admit), which is flushed, given its
//!   mode and owner, and renamed over the target; then the directory is
//!   flushed so the rename survives a crash. On any error the temporary file
//!   is removed and the previous sink file is left as it was.
//! - The file's mode is exactly the spec's permission bits, whatever the
//!   umask, and it never carries set-id or sticky bits.
//! - A [`SinkError`] names the path and the step that failed and never
//!   contains a token.
//!
//! # Decisions
//!
//! - `raw` holds the token alone, with no trailing newline, like the token
//!   files Kubernetes mounts: `$(cat file)` works either way, and a program
//!   that reads the file verbatim into an `Authorization` header must not
//!   get a stray `\n`.
//! - `env` is three `NAME=value` lines with no quotes, readable by systemd's
//!   `EnvironmentFile=`, `docker --env-file` and a shell's `.`. Tokens and
//!   key IDs are base64url with dots, timestamps RFC 3339, so no quoting is
//!   needed; a value holding anything else is refused rather than written in
//!   a form one of those readers would misparse.
//! - A missing parent directory is created with mode 0755 (each missing
//!   level, whatever the umask): the file's own mode protects the token, and
//!   a consumer admitted by the file's owner or group must be able to reach
//!   it. A parent that exists is left as it is.
//! - Owner and group names are looked up in `/etc/passwd` and `/etc/group`
//!   only (no NSS: `unsafe` is forbidden here, so no `getpwnam`); accounts
//!   from a directory service must be given as numeric ids. Changing the
//!   owner needs root; a non-root daemon can only give a file to itself or
//!   to a group it belongs to, and gets an error naming the step otherwise.
//!
//! Depends on `domain` and [`super::published`]; reads no config, no clock
//! and no environment.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::published::{GroupTokens, PublishedToken};
use crate::domain::{ChannelId, GroupName};

/// Where names given as a sink's `owner` are looked up.
const PASSWD: &str = "/etc/passwd";
/// Where names given as a sink's `group` are looked up.
const GROUP: &str = "/etc/group";
/// The mode of a directory [`write()`] has to create (see the module docs).
const CREATED_DIR_MODE: u32 = 0o755;

/// What a sink file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SinkFormat {
    /// The current token alone, no trailing newline.
    Raw,
    /// A JSON object: `access_token`, `token_type` (`"Bearer"`), `key_id`,
    /// `expires_at` and `issued_at` (RFC 3339, UTC), `channel`, `group`, and
    /// `previous` (`access_token`, `key_id`, `expires_at`, or `null`) so a
    /// client can fall back to the token the current one replaced.
    Json,
    /// `LINE_CHANNEL_ACCESS_TOKEN=...`, `LINE_CHANNEL_ACCESS_TOKEN_KEY_ID=...`
    /// and `LINE_CHANNEL_ACCESS_TOKEN_EXPIRES_AT=...`, one per line, unquoted.
    Env,
}

/// One sink of a group, as `app` hands it over from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSpec {
    /// The file to write.
    pub path: PathBuf,
    /// What goes in it.
    pub format: SinkFormat,
    /// Its permission bits (e.g. `0o600`); anything above `0o777` is
    /// ignored.
    pub mode: u32,
    /// The user to give it to: a name from `/etc/passwd` or a numeric uid.
    /// `None` leaves it owned by the daemon.
    pub owner: Option<String>,
    /// The group to give it to: a name from `/etc/group` or a numeric gid.
    /// `None` leaves the daemon's group.
    pub group: Option<String>,
}

/// What a sink is written from: a group and its published tokens.
#[derive(Debug, Clone, Copy)]
pub struct SinkContext<'a> {
    /// The group's channel.
    pub channel: &'a ChannelId,
    /// The group.
    pub group: &'a GroupName,
    /// Its current (and previous) token.
    pub tokens: &'a GroupTokens,
}

/// A step of writing or removing a sink, named in [`SinkError::Io`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkStep {
    /// Reading the account database (`/etc/passwd` or `/etc/group`) to
    /// resolve an owner or group name.
    ReadAccounts(&'static str),
    /// Creating a missing parent directory.
    CreateDirectory(PathBuf),
    /// Creating the temporary file next to the sink.
    CreateTemporary,
    /// Writing the bytes to the temporary file.
    Write,
    /// Setting the file's mode.
    SetMode(u32),
    /// Changing the file's owner and/or group.
    ChangeOwner {
        /// The uid asked for, if any.
        uid: Option<u32>,
        /// The gid asked for, if any.
        gid: Option<u32>,
    },
    /// Flushing the file to disk.
    Sync,
    /// Renaming the temporary file over the sink.
    Rename,
    /// Flushing the directory so the rename (or removal) is durable.
    SyncDirectory,
    /// Removing the sink.
    Remove,
    /// Listing the sink's directory for leftover temporary files.
    ListDirectory,
    /// Removing a temporary file a killed writer left behind.
    RemoveTemporary(PathBuf),
}

impl fmt::Display for SinkStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReadAccounts(db) => write!(f, "read {db} to resolve an account name"),
            Self::CreateDirectory(dir) => write!(f, "create the directory {}", dir.display()),
            Self::CreateTemporary => f.write_str("create a temporary file in its directory"),
            Self::Write => f.write_str("write the temporary file"),
            Self::SetMode(mode) => write!(f, "set mode {mode:04o}"),
            Self::ChangeOwner { uid, gid } => {
                f.write_str("change the owner to")?;
                if let Some(uid) = uid {
                    write!(f, " uid {uid}")?;
                }
                if let Some(gid) = gid {
                    write!(f, " gid {gid}")?;
                }
                f.write_str(
                    " (giving a file away needs root; a group needs root or membership of it)",
                )
            }
            Self::Sync => f.write_str("flush the temporary file to disk"),
            Self::Rename => f.write_str("rename the temporary file over it"),
            Self::SyncDirectory => f.write_str("flush its directory to disk"),
            Self::Remove => f.write_str("remove it"),
            Self::ListDirectory => f.write_str("list its directory for leftover temporary files"),
            Self::RemoveTemporary(path) => {
                write!(f, "remove the leftover temporary file {}", path.display())
            }
        }
    }
}

/// Which account database a name was missing from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountKind {
    /// A user (`owner`), looked up in `/etc/passwd`.
    User,
    /// A group (`group`), looked up in `/etc/group`.
    Group,
}

impl AccountKind {
    fn database(self) -> &'static str {
        match self {
            Self::User => PASSWD,
            Self::Group => GROUP,
        }
    }
}

impl fmt::Display for AccountKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::User => "user",
            Self::Group => "group",
        })
    }
}

/// Why a sink could not be rendered, written or removed. Never holds a
/// token: only paths, names, ids and the underlying IO error.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The group has no current token yet, so there is nothing to write.
    #[error("group {group} of channel {channel} has no token yet; there is nothing to write")]
    NoCurrentToken {
        /// The channel.
        channel: ChannelId,
        /// The group.
        group: GroupName,
    },
    /// A value for the `env` format holds a character that would need
    /// quoting; refused rather than written in a form a reader misparses.
    #[error(
        "the {field} of group {group} of channel {channel} holds a character an env file \
         cannot carry unquoted (allowed: letters, digits and . _ - ~ + / = :); \
         use the json format for it"
    )]
    UnsafeEnvValue {
        /// The channel.
        channel: ChannelId,
        /// The group.
        group: GroupName,
        /// Which value (`token`, `key_id`, `expires_at`).
        field: &'static str,
    },
    /// A channel's long-lived token holds a character an `env` file cannot
    /// carry unquoted.
    #[error(
        "the long-lived token of channel {channel} holds a character an env file cannot carry \
         unquoted (allowed: letters, digits and . _ - ~ + / = :); use the json format for it"
    )]
    UnsafeEnvToken {
        /// The channel.
        channel: ChannelId,
    },
    /// The JSON document could not be encoded. Strings and timestamps
    /// always encode, so this means a bug, reported rather than written as
    /// an empty file.
    #[error("cannot encode the json sink document: {source}")]
    Encode {
        /// What serde_json said (about structure, never a value).
        #[source]
        source: serde_json::Error,
    },
    /// The sink's path has no file name (it ends in `..` or is `/`).
    #[error("the sink path {path} does not name a file")]
    NotAFile {
        /// The path as configured.
        path: PathBuf,
    },
    /// The owner or group name is neither a number nor in the account
    /// database.
    #[error(
        "cannot give the sink {path} to {kind} {name:?}: there is no such {kind} in {database} \
         (accounts from a directory service must be given as numeric ids)"
    )]
    UnknownAccount {
        /// The sink.
        path: PathBuf,
        /// User or group.
        kind: AccountKind,
        /// The name as configured.
        name: String,
        /// Where it was looked up.
        database: &'static str,
    },
    /// A filesystem step failed.
    #[error("cannot write the sink {path}: could not {step}: {source}")]
    Io {
        /// The sink.
        path: PathBuf,
        /// What was being done.
        step: SinkStep,
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

/// Renders the group's tokens in `format`.
///
/// # Errors
///
/// [`SinkError::NoCurrentToken`] when the group has no current token;
/// [`SinkError::UnsafeEnvValue`] when an `env` value would need quoting.
pub fn render(format: SinkFormat, ctx: &SinkContext<'_>) -> Result<Vec<u8>, SinkError> {
    let current = ctx
        .tokens
        .current
        .as_ref()
        .ok_or_else(|| SinkError::NoCurrentToken {
            channel: ctx.channel.clone(),
            group: ctx.group.clone(),
        })?;
    match format {
        SinkFormat::Raw => Ok(current.token.expose().as_bytes().to_vec()),
        SinkFormat::Json => render_json(ctx, current),
        SinkFormat::Env => render_env(ctx, current),
    }
}

/// The JSON document; field order is the order consumers see.
#[derive(Serialize)]
struct JsonDocument<'a> {
    access_token: &'a str,
    token_type: &'static str,
    key_id: &'a str,
    expires_at: String,
    issued_at: String,
    channel: &'a str,
    group: &'a str,
    previous: Option<JsonPrevious<'a>>,
}

#[derive(Serialize)]
struct JsonPrevious<'a> {
    access_token: &'a str,
    key_id: &'a str,
    expires_at: String,
}

fn render_json(ctx: &SinkContext<'_>, current: &PublishedToken) -> Result<Vec<u8>, SinkError> {
    let doc = JsonDocument {
        access_token: current.token.expose(),
        token_type: "Bearer",
        key_id: current.key_id.as_str(),
        expires_at: timestamp(current.expires_at),
        issued_at: timestamp(current.issued_at),
        channel: ctx.channel.as_str(),
        group: ctx.group.as_str(),
        previous: ctx.tokens.previous.as_ref().map(|p| JsonPrevious {
            access_token: p.token.expose(),
            key_id: p.key_id.as_str(),
            expires_at: timestamp(p.expires_at),
        }),
    };
    let mut bytes =
        serde_json::to_vec_pretty(&doc).map_err(|source| SinkError::Encode { source })?;
    bytes.push(b'\n');
    Ok(bytes)
}

fn render_env(ctx: &SinkContext<'_>, current: &PublishedToken) -> Result<Vec<u8>, SinkError> {
    let expires_at = timestamp(current.expires_at);
    let lines = [
        ("LINE_CHANNEL_ACCESS_TOKEN", "token", current.token.expose()),
        (
            "LINE_CHANNEL_ACCESS_TOKEN_KEY_ID",
            "key_id",
            current.key_id.as_str(),
        ),
        (
            "LINE_CHANNEL_ACCESS_TOKEN_EXPIRES_AT",
            "expires_at",
            &expires_at,
        ),
    ];
    let mut out = String::new();
    for (name, field, value) in lines {
        if !env_safe(value) {
            return Err(SinkError::UnsafeEnvValue {
                channel: ctx.channel.clone(),
                group: ctx.group.clone(),
                field,
            });
        }
        out.push_str(name);
        out.push('=');
        out.push_str(value);
        out.push('\n');
    }
    Ok(out.into_bytes())
}

/// True when every env-file reader takes `value` literally without quotes:
/// no whitespace, quotes, `$`, backslash, `#` or control characters.
pub(crate) fn env_safe(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-~+/=:".contains(&b))
}

/// RFC 3339 in UTC to the second (`2025-01-31T12:00:00Z`): what every JSON
/// and shell date parser reads.
pub(crate) fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Renders the group's tokens in the spec's format and replaces the sink
/// file with them atomically (see the module docs for the steps).
///
/// # Errors
///
/// Any [`SinkError`]; the previous file, if any, is then left untouched and
/// no temporary file remains.
pub fn write(spec: &SinkSpec, ctx: &SinkContext<'_>) -> Result<(), SinkError> {
    let bytes = render(spec.format, ctx)?;
    write_bytes(spec, &bytes)
}

/// Replaces the sink file with `bytes` atomically, as [`write()`] does
/// with a group's rendered tokens (the stateless cache renders its own
/// documents and writes them through here).
///
/// # Errors
///
/// Any [`SinkError`] but the rendering ones; the previous file, if any,
/// is then left untouched and no temporary file remains.
pub fn write_bytes(spec: &SinkSpec, bytes: &[u8]) -> Result<(), SinkError> {
    let path = spec.path.as_path();
    let io = |step: SinkStep| {
        move |source: io::Error| SinkError::Io {
            path: path.to_owned(),
            step,
            source,
        }
    };

    // Resolve names first: an unknown account must fail before anything
    // touches the disk.
    let uid = resolve(spec, AccountKind::User, spec.owner.as_deref())?;
    let gid = resolve(spec, AccountKind::Group, spec.group.as_deref())?;
    let (dir, name) = split(path)?;
    create_missing_dirs(dir).map_err(|(dir, e)| io(SinkStep::CreateDirectory(dir))(e))?;

    let mode = spec.mode & 0o777;
    let mut temp = Temporary::create(dir, name, mode).map_err(io(SinkStep::CreateTemporary))?;
    temp.file.write_all(bytes).map_err(io(SinkStep::Write))?;
    // The open mode was filtered by the umask; set the exact bits.
    temp.file
        .set_permissions(Permissions::from_mode(mode))
        .map_err(io(SinkStep::SetMode(mode)))?;
    if uid.is_some() || gid.is_some() {
        std::os::unix::fs::fchown(&temp.file, uid, gid)
            .map_err(io(SinkStep::ChangeOwner { uid, gid }))?;
    }
    temp.file.sync_all().map_err(io(SinkStep::Sync))?;
    fs::rename(&temp.path, path).map_err(io(SinkStep::Rename))?;
    temp.renamed = true;
    sync_dir(dir).map_err(io(SinkStep::SyncDirectory))
}

/// Removes the sink file (its group left the config). A file that is
/// already gone is fine.
///
/// # Errors
///
/// [`SinkError::Io`] when the file exists but cannot be removed.
pub fn remove(spec: &SinkSpec) -> Result<(), SinkError> {
    let path = spec.path.as_path();
    let io = |step: SinkStep| {
        move |source: io::Error| SinkError::Io {
            path: path.to_owned(),
            step,
            source,
        }
    };
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(SinkStep::Remove)(e)),
    }
    let (dir, _) = split(path)?;
    sync_dir(dir).map_err(io(SinkStep::SyncDirectory))
}

/// The suffix of a temporary sink file: `.<name>.<16 hex digits>.linetokd-tmp`
/// (see [`Temporary::create`]).
const TEMP_SUFFIX: &str = ".linetokd-tmp";

/// Removes the temporary files a killed writer of this sink left behind
/// (`kill -9` between creating `.<name>.<hex>.linetokd-tmp` and renaming
/// it): each holds a token. Only regular files named exactly that way for
/// this sink's file name are touched, in the sink's own directory; anything
/// else there, including other sinks' temporaries, is left alone. Call it
/// only while no write of this sink runs (the daemon does at start). A
/// missing directory has nothing to clean. Returns the files removed.
///
/// # Errors
///
/// [`SinkError::Io`] when the directory cannot be listed or a leftover
/// cannot be removed (those removed before it stay removed).
pub fn remove_stale_temporaries(spec: &SinkSpec) -> Result<Vec<PathBuf>, SinkError> {
    let path = spec.path.as_path();
    let io = |step: SinkStep| {
        move |source: io::Error| SinkError::Io {
            path: path.to_owned(),
            step,
            source,
        }
    };
    let (dir, name) = split(path)?;
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(SinkStep::ListDirectory)(e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(SinkStep::ListDirectory))?;
        if !is_temporary_of(
            name.as_encoded_bytes(),
            entry.file_name().as_encoded_bytes(),
        ) {
            continue;
        }
        // A symlink or directory of that name is not something we wrote.
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if !is_file {
            continue;
        }
        let leftover = entry.path();
        match fs::remove_file(&leftover) {
            Ok(()) => removed.push(leftover),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(SinkStep::RemoveTemporary(leftover))(e)),
        }
    }
    if !removed.is_empty() {
        sync_dir(dir).map_err(io(SinkStep::SyncDirectory))?;
    }
    Ok(removed)
}

/// True when `candidate` is `.<name>.<16 lowercase hex>.linetokd-tmp`.
fn is_temporary_of(name: &[u8], candidate: &[u8]) -> bool {
    let Some(rest) = candidate.strip_prefix(b".") else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(name) else {
        return false;
    };
    let Some(rest) = rest.strip_suffix(TEMP_SUFFIX.as_bytes()) else {
        return false;
    };
    let Some(hex) = rest.strip_prefix(b".") else {
        return false;
    };
    hex.len() == 16 && hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The directory and file name of a sink; a bare name lives in `.`.
fn split(path: &Path) -> Result<(&Path, &std::ffi::OsStr), SinkError> {
    let name = path.file_name().ok_or_else(|| SinkError::NotAFile {
        path: path.to_owned(),
    })?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Ok((dir, name))
}

/// Creates each missing level of `dir` with [`CREATED_DIR_MODE`], top
/// down, and flushes the parent of each so the new entry is durable.
/// Returns the directory that failed with its error.
fn create_missing_dirs(dir: &Path) -> Result<(), (PathBuf, io::Error)> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(d) = at.filter(|d| !d.as_os_str().is_empty()) {
        match fs::metadata(d) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(d),
            Err(e) => return Err((d.to_owned(), e)),
        }
        at = d.parent();
    }
    for d in missing.into_iter().rev() {
        let fail = |e| (d.to_owned(), e);
        match DirBuilder::new().mode(CREATED_DIR_MODE).create(d) {
            Ok(()) => {
                // Only a directory this call made gets its mode forced
                // (the umask filtered the one given to mkdir).
                fs::set_permissions(d, Permissions::from_mode(CREATED_DIR_MODE)).map_err(fail)?;
                let parent = match d.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p,
                    _ => Path::new("."),
                };
                sync_dir(parent).map_err(fail)?;
            }
            // Someone else made it in the meantime: theirs to keep as is.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(fail(e)),
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The temporary file a sink is written to; removed on drop unless it was
/// renamed over the sink, so no error path leaves one behind.
struct Temporary {
    path: PathBuf,
    file: File,
    renamed: bool,
}

impl Temporary {
    /// `.<name>.<random>.linetokd-tmp` in `dir`: hidden, recognisable, and
    /// unique so concurrent or crashed writers never collide.
    fn create(dir: &Path, name: &std::ffi::OsStr, mode: u32) -> io::Result<Self> {
        let mut file_name = std::ffi::OsString::from(".");
        file_name.push(name);
        file_name.push(format!(".{:016x}{TEMP_SUFFIX}", rand::random::<u64>()));
        let path = dir.join(file_name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)?;
        Ok(Self {
            path,
            file,
            renamed: false,
        })
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        if !self.renamed {
            // Best effort: the write already failed and that error is what
            // the caller needs; a leftover is harmless (hidden, no token
            // readable beyond the sink's own mode).
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The numeric id for an owner or group setting: a number as is, a name
/// from the account database.
fn resolve(
    spec: &SinkSpec,
    kind: AccountKind,
    value: Option<&str>,
) -> Result<Option<u32>, SinkError> {
    let Some(value) = value else {
        return Ok(None);
    };
    if let Ok(id) = value.parse::<u32>() {
        return Ok(Some(id));
    }
    let database = kind.database();
    let text = fs::read_to_string(database).map_err(|source| SinkError::Io {
        path: spec.path.clone(),
        step: SinkStep::ReadAccounts(database),
        source,
    })?;
    lookup_id(&text, value)
        .map(Some)
        .ok_or_else(|| SinkError::UnknownAccount {
            path: spec.path.clone(),
            kind,
            name: value.to_owned(),
            database,
        })
}

/// The id of `name` in a passwd- or group-format text (`name:x:id:...`,
/// the id in the third field of both); comments and malformed lines are
/// skipped.
fn lookup_id(text: &str, name: &str) -> Option<u32> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let mut fields = line.split(':');
            (fields.next()? == name)
                .then(|| fields.nth(1)?.parse().ok())
                .flatten()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_ids_in_passwd_and_group_text() {
        let passwd = "# comment\nroot:x:0:0:root:/root:/bin/bash\n\
                      broken-line\nbad:x:notanumber:1::/:/bin/sh\n\
                      app:x:1001:1001:App,,,:/home/app:/usr/sbin/nologin\n";
        assert_eq!(lookup_id(passwd, "root"), Some(0));
        assert_eq!(lookup_id(passwd, "app"), Some(1001));
        assert_eq!(lookup_id(passwd, "ap"), None);
        assert_eq!(lookup_id(passwd, "bad"), None);
        assert_eq!(lookup_id(passwd, "broken-line"), None);
        assert_eq!(lookup_id(passwd, "# comment"), None);
        let group = "backend:x:2002:alice,bob\nempty:x:2003:\n";
        assert_eq!(lookup_id(group, "backend"), Some(2002));
        assert_eq!(lookup_id(group, "empty"), Some(2003));
        assert_eq!(lookup_id(group, "alice"), None);
    }

    #[test]
    fn env_values_must_need_no_quoting() {
        for ok in [
            "eyJhbGciOiJIUzI1NiJ9.eyJ4IjoxfQ.c2ln-_",
            "2025-01-31T12:00:00Z",
            "a+b/c=",
        ] {
            assert!(env_safe(ok), "{ok}");
        }
        for bad in [
            "", "a b", "a\"b", "a'b", "a$b", "a\\b", "a#b", "a\nb", "a`b",
        ] {
            assert!(!env_safe(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_bare_file_name_lives_in_the_current_directory() {
        let (dir, name) = split(Path::new("token.txt")).unwrap();
        assert_eq!(dir, Path::new("."));
        assert_eq!(name, "token.txt");
        assert!(matches!(
            split(Path::new("/")),
            Err(SinkError::NotAFile { .. })
        ));
        assert!(matches!(
            split(Path::new("/run/..")),
            Err(SinkError::NotAFile { .. })
        ));
    }

    #[test]
    fn only_our_own_temporary_names_count_as_leftovers() {
        let name = b"backend.json";
        assert!(is_temporary_of(
            name,
            b".backend.json.0123456789abcdef.linetokd-tmp"
        ));
        for other in [
            &b".backend.json.0123456789ABCDEF.linetokd-tmp"[..],
            b".backend.json.0123456789abcde.linetokd-tmp",
            b".backend.json.0123456789abcdef0.linetokd-tmp",
            b"backend.json.0123456789abcdef.linetokd-tmp",
            b".other.json.0123456789abcdef.linetokd-tmp",
            b".backend.json.x.0123456789abcdef.linetokd-tmp",
            b".backend.json.0123456789abcdef.linetokd-tmp.keep",
            b"backend.json",
        ] {
            assert!(
                !is_temporary_of(name, other),
                "{}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn steps_name_what_was_being_done() {
        let chown = SinkStep::ChangeOwner {
            uid: Some(0),
            gid: None,
        }
        .to_string();
        assert!(
            chown.contains("uid 0") && chown.contains("needs root"),
            "{chown}"
        );
        assert_eq!(SinkStep::SetMode(0o640).to_string(), "set mode 0640");
    }
}
