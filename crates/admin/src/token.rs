//! The admin token: read from its file, or made and written there (owner
//! read/write only) on first start, so the API is never open by default
//! and the CLI on the same machine finds the token where the node left it.

use std::path::{Path, PathBuf};

/// Where a running node leaves the address its admin API is bound to:
/// beside its token (`porchlight-admin.url` for `porchlight-admin.token`),
/// so the CLI reaches the node it was started with even when `[admin]
/// listen` asks for any free port.
pub fn address_file(token_file: &Path) -> PathBuf {
    token_file.with_extension("url")
}

/// Writes the admin API's base URL to [`address_file`].
pub fn write_address(token_file: &Path, addr: std::net::SocketAddr) -> Result<(), TokenError> {
    let path = address_file(token_file);
    std::fs::write(&path, format!("http://{addr}\n")).map_err(|source| TokenError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Why the token could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no token.
    #[error("{0}: the file is empty; delete it to have a new token made, or write one in it")]
    Empty(String),
    /// The system gave no randomness.
    #[error("no randomness for a new token: {0}")]
    Random(getrandom::Error),
}

/// The token in `path`, made (32 random bytes, hex) when the file does not exist.
pub fn load_or_create_token(path: &Path) -> Result<String, TokenError> {
    let io = |source| TokenError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let token = text.trim();
            if token.is_empty() {
                return Err(TokenError::Empty(path.display().to_string()));
            }
            Ok(token.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            getrandom::getrandom(&mut bytes).map_err(TokenError::Random)?;
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            write_private(path, &format!("{token}\n")).map_err(io)?;
            tracing::info!("admin API token written to {}", path.display());
            Ok(token)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

/// Compares in time that depends only on the lengths.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_read_back_private() {
        let dir = std::env::temp_dir().join(format!("porchlight-token-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("admin.token");
        let made = load_or_create_token(&path).unwrap();
        assert_eq!(made.len(), 64);
        assert_eq!(load_or_create_token(&path).unwrap(), made);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            load_or_create_token(&path),
            Err(TokenError::Empty(_))
        ));
    }

    #[test]
    fn comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert!(!same(b"", b"a"));
    }
}
