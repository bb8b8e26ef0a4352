//! The keys and the AEAD: AES-256-GCM (RustCrypto `aes-gcm`), 96-bit random nonces from the
//! operating system, one fresh nonce per sealing.
//!
//! A data key belongs to one customer; the master key wraps it (encrypts it, with the key id
//! and the customer id as associated data, so a wrapped key moved to another row does not
//! unwrap). Key bytes are wiped when dropped and never printed.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use uuid::Uuid;
use zeroize::Zeroizing;

/// The algorithm every sealed field and wrapped key uses, as `SealedPersonal.algorithm` names it.
pub const ALGORITHM: &str = "AES-256-GCM";
/// Bytes of a key (AES-256).
pub const KEY_LEN: usize = 32;
/// Bytes of a nonce (GCM's 96 bits).
pub const NONCE_LEN: usize = 12;

/// Why a master key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MasterKeyError {
    #[error("the master key is not base64 (standard alphabet, with padding): {0}")]
    NotBase64(String),
    #[error("the master key has {0} bytes; it must have exactly 32 (make one with `orderflow keys new-master-key`)")]
    WrongLength(usize),
}

/// The key that wraps every data key. Not stored anywhere by us: read from a file or the
/// environment at start ([`crate::settings`]).
pub struct MasterKey {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

impl MasterKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<MasterKey, MasterKeyError> {
        if bytes.len() != KEY_LEN {
            return Err(MasterKeyError::WrongLength(bytes.len()));
        }
        Ok(MasterKey {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(bytes)),
        })
    }

    /// A master key written as base64 text (surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<MasterKey, MasterKeyError> {
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| MasterKeyError::NotBase64(e.to_string()))?,
        );
        MasterKey::from_bytes(&bytes)
    }

    /// A new random master key as base64 text, for an operator to store.
    pub fn generate_base64() -> String {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(Aes256Gcm::generate_key(OsRng).as_slice());
        base64::engine::general_purpose::STANDARD.encode(bytes.as_slice())
    }

    /// `key` encrypted under the master key: (nonce, ciphertext with tag).
    pub fn wrap(&self, key: &DataKey) -> (Vec<u8>, Vec<u8>) {
        let nonce = Aes256Gcm::generate_nonce(OsRng);
        let aad = wrap_aad(key.id, &key.customer_id);
        let wrapped = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: key.bytes.as_slice(),
                    aad: &aad,
                },
            )
            .expect("AES-GCM encrypts any message shorter than 64 GiB");
        (nonce.to_vec(), wrapped)
    }

    /// The data key `key_id` of `customer_id` from its wrapped form; `None` when it does not
    /// unwrap: another master key wrapped it, or the row was changed or moved.
    pub fn unwrap(
        &self,
        key_id: Uuid,
        customer_id: &str,
        nonce: &[u8],
        wrapped: &[u8],
    ) -> Option<DataKey> {
        if nonce.len() != NONCE_LEN {
            return None;
        }
        let aad = wrap_aad(key_id, customer_id);
        let bytes = Zeroizing::new(
            self.cipher
                .decrypt(
                    Nonce::from_slice(nonce),
                    Payload {
                        msg: wrapped,
                        aad: &aad,
                    },
                )
                .ok()?,
        );
        let bytes: [u8; KEY_LEN] = bytes.as_slice().try_into().ok()?;
        Some(DataKey {
            id: key_id,
            customer_id: customer_id.to_owned(),
            bytes: Zeroizing::new(bytes),
        })
    }
}

fn wrap_aad(key_id: Uuid, customer_id: &str) -> Vec<u8> {
    format!("orderflow data key {key_id} of customer {customer_id}").into_bytes()
}

/// One customer's data key, unwrapped (in memory only).
#[derive(Clone)]
pub struct DataKey {
    pub id: Uuid,
    pub customer_id: String,
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({} of {:?}, ***)", self.id, self.customer_id)
    }
}

impl DataKey {
    /// A new random key for `customer_id`, with a random id.
    pub fn generate(customer_id: &str) -> DataKey {
        let key = Aes256Gcm::generate_key(OsRng);
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(key.as_slice());
        DataKey {
            id: Uuid::new_v4(),
            customer_id: customer_id.to_owned(),
            bytes,
        }
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.bytes.as_slice()))
    }

    /// `plaintext` sealed under this key with `aad` bound: (nonce, ciphertext with tag).
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let nonce = Aes256Gcm::generate_nonce(OsRng);
        let sealed = self
            .cipher()
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM encrypts any message shorter than 64 GiB");
        (nonce.to_vec(), sealed)
    }

    /// The plaintext, or `None` when the ciphertext, the nonce or `aad` is not what was sealed.
    pub fn open(&self, aad: &[u8], nonce: &[u8], ciphertext: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if nonce.len() != NONCE_LEN {
            return None;
        }
        self.cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .ok()
            .map(Zeroizing::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_key_unwraps_only_with_its_master_id_and_customer() {
        let master = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        let other = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        let key = DataKey::generate("c-1");
        let (nonce, wrapped) = master.wrap(&key);
        let back = master
            .unwrap(key.id, "c-1", &nonce, &wrapped)
            .expect("unwraps");
        assert_eq!(back.bytes.as_slice(), key.bytes.as_slice());
        let mut flipped = wrapped.clone();
        flipped[3] ^= 1;
        let cases: [(&str, Option<DataKey>); 5] = [
            (
                "other master",
                other.unwrap(key.id, "c-1", &nonce, &wrapped),
            ),
            (
                "other customer",
                master.unwrap(key.id, "c-2", &nonce, &wrapped),
            ),
            (
                "other key id",
                master.unwrap(Uuid::new_v4(), "c-1", &nonce, &wrapped),
            ),
            (
                "changed byte",
                master.unwrap(key.id, "c-1", &nonce, &flipped),
            ),
            (
                "short nonce",
                master.unwrap(key.id, "c-1", &nonce[..8], &wrapped),
            ),
        ];
        for (name, result) in cases {
            assert!(result.is_none(), "{name}");
        }
    }

    #[test]
    fn master_keys_must_be_32_bytes_of_base64() {
        assert_eq!(
            MasterKey::from_base64("not base64!").unwrap_err(),
            MasterKeyError::NotBase64("Invalid symbol 32, offset 3.".into())
        );
        assert_eq!(
            MasterKey::from_base64("AAAA").unwrap_err(),
            MasterKeyError::WrongLength(3)
        );
        assert!(MasterKey::from_base64(&format!(" {} \n", MasterKey::generate_base64())).is_ok());
        assert_eq!(
            format!("{:?}", MasterKey::from_bytes(&[7; 32]).unwrap()),
            "MasterKey(***)"
        );
        let key = DataKey::generate("c");
        assert!(!format!("{key:?}").contains(&format!("{:?}", key.bytes.as_slice())));
    }

    #[test]
    fn sealing_binds_the_associated_data_and_uses_a_fresh_nonce() {
        let key = DataKey::generate("c-1");
        let (n1, c1) = key.seal(b"order-1", b"Ada Lovelace");
        let (n2, c2) = key.seal(b"order-1", b"Ada Lovelace");
        assert_ne!((n1.clone(), c1.clone()), (n2, c2));
        assert_eq!(
            key.open(b"order-1", &n1, &c1).unwrap().as_slice(),
            b"Ada Lovelace"
        );
        assert!(key.open(b"order-2", &n1, &c1).is_none());
        assert!(DataKey::generate("c-1")
            .open(b"order-1", &n1, &c1)
            .is_none());
    }
}
