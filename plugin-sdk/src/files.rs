//! Files a plugin reads at `init` (a schema, a descriptor set, a .proto file) through its
//! grants, with the error every plugin gives when one cannot be read: the config key, the path,
//! the reason, and the grant that makes the folder readable.

use crate::Error;

/// The bytes of the file `path` that the config key `key` names, or a `fatal` error naming the
/// key, the path, the reason and the grant to add.
pub fn read(key: &str, path: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| unreadable(key, path, &e))
}

/// As [`read`], as UTF-8 text.
pub fn read_to_string(key: &str, path: &str) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| unreadable(key, path, &e))
}

/// The `fatal` error for a file the config key `key` names that cannot be read.
pub fn unreadable(key: &str, path: &str, e: &std::io::Error) -> Error {
    let folder = std::path::Path::new(path)
        .parent()
        .map(|p| p.display().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "/".into());
    Error::fatal(format!(
        "config key `{key}`: cannot read `{path}`: {e}; check the path, and grant its folder: \
         grants = {{ dirs = [{{ host = \"…\", guest = \"{folder}\", mode = \"ro\" }}] }}"
    ))
}
