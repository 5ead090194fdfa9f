//! Names of files that come from outside (a peer's snapshot offer, a
//! checkpoint's or an export's list of files, a backup catalog, a server's
//! download stream): the one rule they are all checked by before any path
//! is built from them, so none can name anything outside the directory it
//! is meant for.

/// Longest name accepted, in bytes (most file systems' limit).
const MAX_NAME_BYTES: usize = 255;

/// A name refused by [`check_file_name`] or [`check_relative_path`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a plain file name: {reason}")]
pub struct BadName {
    /// The refused name (cut to 300 bytes, for messages).
    pub name: String,
    /// Which rule it broke.
    pub reason: &'static str,
}

fn bad(name: &str, reason: &'static str) -> BadName {
    let mut end = name.len().min(300);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    BadName {
        name: name[..end].to_owned(),
        reason,
    }
}

/// Accepts a plain file name: not empty, at most 255 bytes, no `/`, `\`
/// or NUL, and not starting with `.` (no `.`, `..`, and none of the
/// hidden staging files Ferry itself writes).
///
/// ```
/// use ferry_engine::fs::check_file_name;
/// assert!(check_file_name("000004.sst").is_ok());
/// for bad in ["", ".", "..", "../x", "a/b", "a\\b", ".hidden", "a\0b"] {
///     assert!(check_file_name(bad).is_err(), "{bad:?}");
/// }
/// ```
pub fn check_file_name(name: &str) -> Result<(), BadName> {
    if name.is_empty() {
        return Err(bad(name, "it is empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(bad(name, "it is longer than 255 bytes"));
    }
    if name.contains(['/', '\\', '\0']) {
        return Err(bad(name, "it contains a separator or NUL"));
    }
    if name.starts_with('.') {
        return Err(bad(name, "it starts with a dot"));
    }
    Ok(())
}

/// Accepts a relative path of plain file names joined by `/` (e.g.
/// `log/000001.log`).
///
/// ```
/// use ferry_engine::fs::check_relative_path;
/// assert!(check_relative_path("objects/1a2b-10-000004.sst").is_ok());
/// for bad in ["/etc/passwd", "a//b", "a/../b", "a/", ""] {
///     assert!(check_relative_path(bad).is_err(), "{bad:?}");
/// }
/// ```
pub fn check_relative_path(path: &str) -> Result<(), BadName> {
    if path.is_empty() {
        return Err(bad(path, "it is empty"));
    }
    for part in path.split('/') {
        check_file_name(part).map_err(|e| bad(path, e.reason))?;
    }
    Ok(())
}
