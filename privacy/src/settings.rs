//! `[privacy]`: where the master key comes from, and whether personal fields are sealed.
//!
//! The master key is 32 random bytes written as base64 (`orderflow keys new-master-key`
//! prints one), either in a file (`master_key_file`, read at start) or in
//! `ORDERFLOW_PRIVACY__MASTER_KEY`. It is never logged, shown or stored by orderflow.

use std::path::PathBuf;

use platform::config::Secret;
use serde::{Deserialize, Serialize};

use crate::crypto::{MasterKey, MasterKeyError};
use crate::keys::KeyRing;

/// The settings key whose environment variable is read verbatim.
pub const MASTER_KEY_KEY: &str = "privacy.master_key";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacySettings {
    /// A file holding the master key as base64.
    pub master_key_file: Option<PathBuf>,
    /// The master key as base64 (set it through `ORDERFLOW_PRIVACY__MASTER_KEY`, not a file
    /// that others read).
    pub master_key: Option<Secret>,
    /// Seal personal fields on the way into the log (intake and API). Off only to measure what
    /// sealing costs: orders then carry their personal fields in clear, and forgetting a
    /// customer cannot erase them from the log.
    pub seal: bool,
}

impl Default for PrivacySettings {
    fn default() -> Self {
        PrivacySettings {
            master_key_file: None,
            master_key: None,
            seal: true,
        }
    }
}

/// Why the master key could not be loaded. The message names the setting, never the key.
#[derive(Debug, thiserror::Error)]
pub enum MasterKeySettingError {
    #[error("no master key: set privacy.master_key_file to a file holding one, or ORDERFLOW_PRIVACY__MASTER_KEY (32 random bytes as base64; `orderflow keys new-master-key` prints one)")]
    Missing,
    #[error("privacy.master_key_file and ORDERFLOW_PRIVACY__MASTER_KEY are both set; keep one")]
    Both,
    #[error("privacy.master_key_file {path}: {error}")]
    File { path: String, error: String },
    #[error("privacy.master_key_file {path}: {error}")]
    BadFileKey { path: String, error: MasterKeyError },
    #[error("ORDERFLOW_PRIVACY__MASTER_KEY: {0}")]
    BadKey(MasterKeyError),
}

impl PrivacySettings {
    /// The master key as configured.
    pub fn master_key(&self) -> Result<MasterKey, MasterKeySettingError> {
        match (&self.master_key_file, &self.master_key) {
            (None, None) => Err(MasterKeySettingError::Missing),
            (Some(_), Some(_)) => Err(MasterKeySettingError::Both),
            (None, Some(secret)) => {
                MasterKey::from_base64(secret.expose()).map_err(MasterKeySettingError::BadKey)
            }
            (Some(path), None) => {
                let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                    MasterKeySettingError::File {
                        path: path.display().to_string(),
                        error: e.to_string(),
                    }
                })?);
                MasterKey::from_base64(&text).map_err(|error| MasterKeySettingError::BadFileKey {
                    path: path.display().to_string(),
                    error,
                })
            }
        }
    }

    /// The key ring of the configured master key.
    pub fn key_ring(&self) -> Result<KeyRing, MasterKeySettingError> {
        self.master_key().map(KeyRing::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_master_key_comes_from_exactly_one_place_and_errors_never_show_it() {
        let good = MasterKey::generate_base64();
        let dir = std::env::temp_dir().join(format!("privacy-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("master.key");
        std::fs::write(&file, format!("{good}\n")).unwrap();
        let short = dir.join("short.key");
        std::fs::write(&short, "c2VjcmV0LXZhbHVl").unwrap();
        let with = |f: Option<&PathBuf>, k: Option<&str>| PrivacySettings {
            master_key_file: f.cloned(),
            master_key: k.map(Secret::new),
            seal: true,
        };
        assert!(with(Some(&file), None).master_key().is_ok());
        assert!(with(None, Some(&good)).master_key().is_ok());
        let cases = [
            (with(None, None), "no master key"),
            (with(Some(&file), Some(&good)), "both set"),
            (
                with(Some(&dir.join("absent")), None),
                "absent: No such file",
            ),
            (
                with(Some(&short), None),
                "short.key: the master key has 12 bytes",
            ),
            (
                with(None, Some("c2VjcmV0LXZhbHVl")),
                "MASTER_KEY: the master key has 12 bytes",
            ),
        ];
        for (settings, expected) in cases {
            let message = settings.master_key().unwrap_err().to_string();
            assert!(
                message.contains(expected.split(": ").last().unwrap()),
                "{message}"
            );
            assert!(
                !message.contains(&good) && !message.contains("c2VjcmV0"),
                "{message}"
            );
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
