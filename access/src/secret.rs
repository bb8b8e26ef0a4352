//! [`Secret`]: a string that prints as `***` (Debug and Display), read from a file or the
//! environment, so a pepper or a password never reaches a log line, an error or `--help`.

use std::fmt;
use std::path::Path;

/// A secret value. Only [`Secret::expose`] reveals it; formatting prints `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

/// Why a secret could not be read (fix the file or the variable named; the value is never
/// part of the message).
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{setting}: cannot read the secret file {path}: {source}")]
    File {
        setting: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{setting}: the secret is empty; put at least 32 random bytes in it (e.g. `openssl rand -hex 32`)")]
    Empty { setting: &'static str },
    #[error("{setting}: the secret is shorter than {min} bytes; use at least {min} random bytes (e.g. `openssl rand -hex 32`)")]
    Short { setting: &'static str, min: usize },
    #[error(
        "{setting}: no secret configured; set a file ({setting}) or the environment variable {env}"
    )]
    Missing {
        setting: &'static str,
        env: &'static str,
    },
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself: call it only where the secret is used, never to print it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Read a secret from `file` (surrounding whitespace trimmed) or, without a file, from the
    /// environment variable `env`; `setting` names where it is configured, for the errors. At
    /// least `min_bytes` long.
    pub fn load(
        setting: &'static str,
        file: Option<&Path>,
        env: &'static str,
        min_bytes: usize,
    ) -> Result<Secret, SecretError> {
        let value = match file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|source| SecretError::File {
                    setting,
                    path: path.display().to_string(),
                    source,
                })?
                .trim()
                .to_string(),
            None => std::env::var(env)
                .map_err(|_| SecretError::Missing { setting, env })?
                .trim()
                .to_string(),
        };
        if value.is_empty() {
            return Err(SecretError::Empty { setting });
        }
        if value.len() < min_bytes {
            return Err(SecretError::Short {
                setting,
                min: min_bytes,
            });
        }
        Ok(Secret(value))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_prints() {
        let secret = Secret::new("hunter2-hunter2");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(format!("{:?}", Some(secret.clone())), "Some(***)");
        assert_eq!(secret.expose(), "hunter2-hunter2");
    }

    #[test]
    fn a_secret_comes_from_a_file_or_the_environment() {
        let path = std::env::temp_dir().join(format!("access-secret-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, "  0123456789abcdef0123456789abcdef\n").unwrap();
        let secret =
            Secret::load("api.auth.api_key_pepper_file", Some(&path), "UNUSED", 32).unwrap();
        assert_eq!(secret.expose(), "0123456789abcdef0123456789abcdef");
        let short =
            Secret::load("api.auth.api_key_pepper_file", Some(&path), "UNUSED", 64).unwrap_err();
        assert!(short.to_string().contains("shorter than 64"), "{short}");
        assert!(
            !short.to_string().contains("0123"),
            "the value leaks: {short}"
        );
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            Secret::load("s", Some(&path), "UNUSED", 1),
            Err(SecretError::Empty { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        let missing = Secret::load("s", Some(&path), "UNUSED", 1).unwrap_err();
        assert!(
            missing.to_string().contains("cannot read the secret file"),
            "{missing}"
        );
        let unset = Secret::load("s", None, "ACCESS_TEST_SURELY_UNSET_VARIABLE", 1).unwrap_err();
        assert!(
            unset
                .to_string()
                .contains("ACCESS_TEST_SURELY_UNSET_VARIABLE"),
            "{unset}"
        );
    }
}
