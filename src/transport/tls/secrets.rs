//! TLS 1.3 traffic secrets kept for KeyUpdate, instead of rustls's `KernelConnection`.
//!
//! A KeyUpdate needs each direction's current application traffic secret and the suite's hash
//! (RFC 8446 7.2: next = HKDF-Expand-Label(current, "traffic upd", "", Hash.length); key and
//! IV are expanded from it as in the handshake). rustls's `KernelConnection` keeps them inside
//! some 800 bytes of state (QUIC fields, the key schedule, the exporter secret) and does not hand
//! them out. rustls does tell them to a [`KeyLog`] as it derives them, on the thread running
//! the handshake: [`Capture`] keeps the last ones per thread, the session takes them after each
//! step of its handshake ([`take`]), and a client's session keeps them (2 × at most 48 bytes)
//! instead of the `KernelConnection` once they are checked against the keys rustls handed over
//! ([`Secrets::matches`]). A session whose check fails, and every session toward a backend
//! (whose NewSessionTickets go to rustls's session cache), keep the `KernelConnection`.

use ring::hkdf;
use rustls::crypto::cipher::Iv;
use rustls::{ConnectionTrafficSecrets, KeyLog};
use std::cell::RefCell;
use zeroize::Zeroize;

const CLIENT: &str = "CLIENT_TRAFFIC_SECRET_0";
const SERVER: &str = "SERVER_TRAFFIC_SECRET_0";

/// A [`KeyLog`] that keeps the TLS 1.3 application traffic secrets rustls derives on this
/// thread, for the session whose handshake step is running ([`take`]). Logs nothing anywhere.
#[derive(Debug)]
pub(super) struct Capture;

/// The secrets the last handshake step on this thread derived: (client's, server's).
type Caught = (Option<Secret>, Option<Secret>);

thread_local! {
    static CAUGHT: RefCell<Caught> = const { RefCell::new((None, None)) };
}

impl KeyLog for Capture {
    fn will_log(&self, label: &str) -> bool {
        label == CLIENT || label == SERVER
    }

    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        let Some(s) = Secret::new(secret) else {
            return;
        };
        CAUGHT.with(|c| {
            let mut c = c.borrow_mut();
            match label {
                CLIENT => c.0 = Some(s),
                SERVER => c.1 = Some(s),
                _ => {}
            }
        });
    }
}

/// Forgets what an earlier handshake step on this thread left.
pub(super) fn clear() {
    CAUGHT.with(|c| *c.borrow_mut() = (None, None));
}

/// The secrets the handshake step that just ran derived, if it derived both. `server`: the
/// session's side (its own secret is the server's).
pub(super) fn take(server: bool) -> Option<Box<Secrets>> {
    let (client, srv) = CAUGHT.with(|c| std::mem::take(&mut *c.borrow_mut()));
    let (client, srv) = (client?, srv?);
    let (tx, rx) = if server { (srv, client) } else { (client, srv) };
    Some(Box::new(Secrets { tx, rx }))
}

/// One traffic secret: SHA-256's 32 bytes or SHA-384's 48.
struct Secret {
    bytes: [u8; 48],
    len: u8,
}

impl Secret {
    fn new(s: &[u8]) -> Option<Secret> {
        if s.len() != 32 && s.len() != 48 {
            return None;
        }
        let mut bytes = [0u8; 48];
        bytes[..s.len()].copy_from_slice(s);
        Some(Secret {
            bytes,
            len: s.len() as u8,
        })
    }

    fn prk(&self) -> hkdf::Prk {
        let alg = if self.len == 48 {
            hkdf::HKDF_SHA384
        } else {
            hkdf::HKDF_SHA256
        };
        hkdf::Prk::new_less_safe(alg, &self.bytes[..usize::from(self.len)])
    }

    /// The next generation (KeyUpdate).
    fn next(&self) -> Secret {
        let mut bytes = [0u8; 48];
        let len = usize::from(self.len);
        expand_label(&self.prk(), b"traffic upd", &mut bytes[..len]);
        Secret {
            bytes,
            len: self.len,
        }
    }

    /// The record key (`key_len` bytes, at most 32) and IV this secret gives.
    fn keys(&self, key_len: usize) -> ([u8; 32], [u8; 12]) {
        let key_len = key_len.min(32);
        let prk = self.prk();
        let mut key = [0u8; 32];
        let mut iv = [0u8; 12];
        expand_label(&prk, b"key", &mut key[..key_len]);
        expand_label(&prk, b"iv", &mut iv);
        (key, iv)
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.bytes.zeroize();
    }
}

/// HKDF-Expand-Label(secret, label, "", out.len()) (RFC 8446 7.1). The lengths here are fixed
/// and within HKDF's limit, so ring cannot refuse them.
fn expand_label(prk: &hkdf::Prk, label: &[u8], out: &mut [u8]) {
    struct Len(usize);
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let len = (out.len() as u16).to_be_bytes();
    let label_len = [(6 + label.len()) as u8];
    let info: [&[u8]; 5] = [&len, &label_len, b"tls13 ", label, &[0]];
    if let Ok(okm) = prk.expand(&info, Len(out.len())) {
        let _ = okm.fill(out);
    }
}

/// The key bytes and IV of a direction's secrets as rustls hands them over.
fn parts(s: &ConnectionTrafficSecrets) -> Option<(&[u8], &Iv)> {
    match s {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Some((key.as_ref(), iv)),
        _ => None,
    }
}

/// A session's current application traffic secrets: ours (`tx`) and the peer's (`rx`).
pub(super) struct Secrets {
    tx: Secret,
    rx: Secret,
}

impl Secrets {
    /// True when these secrets give exactly the keys rustls handed over (so a KeyUpdate
    /// derived from them is the one the peer derives).
    pub(super) fn matches(
        &self,
        tx: &ConnectionTrafficSecrets,
        rx: &ConnectionTrafficSecrets,
    ) -> bool {
        let check = |s: &Secret, c: &ConnectionTrafficSecrets| match parts(c) {
            Some((key, iv)) if key.len() <= 32 => {
                let (k, i) = s.keys(key.len());
                k[..key.len()] == *key && i[..] == *iv.as_ref()
            }
            _ => false,
        };
        check(&self.tx, tx) && check(&self.rx, rx)
    }

    /// Moves our secret to its next generation; the new key (`key_len` bytes of it) and IV.
    pub(super) fn update_tx(&mut self, key_len: usize) -> ([u8; 32], [u8; 12]) {
        self.tx = self.tx.next();
        self.tx.keys(key_len)
    }

    /// Moves the peer's secret to its next generation; the new key and IV.
    pub(super) fn update_rx(&mut self, key_len: usize) -> ([u8; 32], [u8; 12]) {
        self.rx = self.rx.next();
        self.rx.keys(key_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8448 (TLS 1.3 traces) 3: the server's application traffic secret gives the
    /// documented key and IV (AES-128-GCM, SHA-256).
    #[test]
    fn key_and_iv_follow_rfc_8448() {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
                .collect()
        };
        let secret = Secret::new(&hex(
            "a11af9f05531f856ad47116b45a950328204b4f44bfb6b3a4b4f1f3fcb631643",
        ))
        .expect("32 bytes");
        let (key, iv) = secret.keys(16);
        assert_eq!(key[..16], hex("9f02283b6c9c07efc26bb9f2ac92e356")[..]);
        assert_eq!(iv[..], hex("cf782b88dd83549aadf1e984")[..]);
        // The next generation differs and keeps its length.
        let next = secret.next();
        assert_eq!(next.len, 32);
        assert_ne!(next.bytes[..32], secret.bytes[..32]);
    }
}
