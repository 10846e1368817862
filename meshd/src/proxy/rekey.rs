//! TLS 1.3 key updates on a kernel TLS socket (Linux ≥ 6.14 accepts new keys on a live kTLS
//! socket). The session's traffic secrets are captured from rustls through a per-connection
//! key log; each update derives the next secret (RFC 8446 §7.2:
//! `HKDF-Expand-Label(secret, "traffic upd", "", Hash.length)`), then its key and IV.

use std::sync::{Arc, Mutex};

use ktls_sys::bindings as sys;
use ring::hkdf;
use rustls::{KeyLog, SupportedCipherSuite};

/// One direction's traffic secret and the suite's parameters.
pub struct Secret {
    hash: hkdf::Algorithm,
    key_len: usize,
    secret: Vec<u8>,
}

/// Captures a connection's application traffic secrets (`*_TRAFFIC_SECRET_0`).
#[derive(Debug, Default)]
pub struct SecretLog {
    client: Mutex<Option<Vec<u8>>>,
    server: Mutex<Option<Vec<u8>>>,
}

impl KeyLog for SecretLog {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let slot = match label {
            "CLIENT_TRAFFIC_SECRET_0" => &self.client,
            "SERVER_TRAFFIC_SECRET_0" => &self.server,
            _ => return,
        };
        *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(secret.to_vec());
    }

    fn will_log(&self, label: &str) -> bool {
        matches!(label, "CLIENT_TRAFFIC_SECRET_0" | "SERVER_TRAFFIC_SECRET_0")
    }
}

impl SecretLog {
    /// The (transmit, receive) secrets of the side that is `client` or not.
    pub fn take(log: &Arc<Self>, suite: SupportedCipherSuite, client: bool) -> Option<(Secret, Secret)> {
        let (hash, key_len) = match suite.suite() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => (hkdf::HKDF_SHA256, 16),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => (hkdf::HKDF_SHA384, 32),
            _ => return None,
        };
        let get = |m: &Mutex<Option<Vec<u8>>>| m.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        let (c, s) = (get(&log.client)?, get(&log.server)?);
        let (tx, rx) = if client { (c, s) } else { (s, c) };
        Some((Secret { hash, key_len, secret: tx }, Secret { hash, key_len, secret: rx }))
    }
}

/// The handshake message `KeyUpdate(update_not_requested)` (type 24, length 1).
pub const KEY_UPDATE: [u8; 5] = [24, 0, 0, 1, 0];

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn expand_label(hash: hkdf::Algorithm, secret: &[u8], label: &str, len: usize) -> Option<Vec<u8>> {
    let full = format!("tls13 {label}");
    let info = [&(len as u16).to_be_bytes()[..], &[full.len() as u8], full.as_bytes(), &[0u8]];
    let prk = hkdf::Prk::new_less_safe(hash, secret);
    let okm = prk.expand(&info, Len(len)).ok()?;
    let mut out = vec![0u8; len];
    okm.fill(&mut out).ok()?;
    Some(out)
}

impl Secret {
    /// Moves to the next generation and returns its kernel crypto info (record sequence 0).
    pub fn update(&mut self) -> Option<CryptoInfo> {
        let next = expand_label(self.hash, &self.secret, "traffic upd", self.secret.len())?;
        self.secret = next;
        let key = expand_label(self.hash, &self.secret, "key", self.key_len)?;
        let iv = expand_label(self.hash, &self.secret, "iv", 12)?;
        let info = |cipher: u32| sys::tls_crypto_info {
            version: ((sys::TLS_1_3_VERSION_MAJOR << 8) | sys::TLS_1_3_VERSION_MINOR) as u16,
            cipher_type: cipher as u16,
        };
        let mut salt = [0u8; 4];
        salt.copy_from_slice(&iv[..4]);
        let mut iv8 = [0u8; 8];
        iv8.copy_from_slice(&iv[4..]);
        Some(if self.key_len == 16 {
            let mut k = [0u8; 16];
            k.copy_from_slice(&key);
            CryptoInfo::Aes128(sys::tls12_crypto_info_aes_gcm_128 {
                info: info(sys::TLS_CIPHER_AES_GCM_128),
                iv: iv8,
                key: k,
                salt,
                rec_seq: [0; 8],
            })
        } else {
            let mut k = [0u8; 32];
            k.copy_from_slice(&key);
            CryptoInfo::Aes256(sys::tls12_crypto_info_aes_gcm_256 {
                info: info(sys::TLS_CIPHER_AES_GCM_256),
                iv: iv8,
                key: k,
                salt,
                rec_seq: [0; 8],
            })
        })
    }
}

/// Kernel crypto info for one direction.
pub enum CryptoInfo {
    Aes128(sys::tls12_crypto_info_aes_gcm_128),
    Aes256(sys::tls12_crypto_info_aes_gcm_256),
}

impl CryptoInfo {
    /// Installs the key for `direction` (`sys::TLS_TX` or `sys::TLS_RX`).
    pub fn install(&self, fd: std::os::fd::RawFd, direction: u32) -> std::io::Result<()> {
        match self {
            Self::Aes128(i) => super::ktls::set_crypto(fd, direction, i),
            Self::Aes256(i) => super::ktls::set_crypto(fd, direction, i),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_update_follows_rfc_8448() {
        // RFC 8448 §3 (simple 1-RTT handshake): server application traffic secret 0 and the
        // server's application write key and IV derived from it.
        let hex = |s: &str| {
            (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect::<Vec<u8>>()
        };
        let secret = hex("a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643");
        assert_eq!(
            expand_label(hkdf::HKDF_SHA256, &secret, "key", 16).unwrap(),
            hex("9f02283b6c9c07efc26bb9f2ac92e356")
        );
        assert_eq!(expand_label(hkdf::HKDF_SHA256, &secret, "iv", 12).unwrap(), hex("cf782b88dd83549aadf1e984"));
        // An update changes the secret and yields sequence-0 keys of the right size.
        let mut s = Secret { hash: hkdf::HKDF_SHA256, key_len: 16, secret: secret.clone() };
        let CryptoInfo::Aes128(info) = s.update().unwrap() else { panic!("AES-128 expected") };
        assert_ne!(s.secret, secret);
        assert_eq!(info.rec_seq, [0; 8]);
        let again = expand_label(hkdf::HKDF_SHA256, &s.secret, "key", 16).unwrap();
        assert_eq!(info.key.to_vec(), again);
    }
}
