//! TLS 1.3 record protection that keeps only the raw traffic keys between records.
//!
//! rustls's *ring* suites hold each direction's key as a `ring::aead::LessSafeKey`: the expanded
//! AES key schedule and the GHASH table, about 560 bytes per direction (the type is an enum
//! sized for its largest algorithm, so ChaCha20 costs the same). An idle `wss://` tunnel keeps
//! both, about 1.1 KiB of its 3.8 KiB. The suites here are *ring*'s TLS 1.3 suites (same
//! algorithms, same hashes and HKDF, same suite identifiers, so tickets and metrics are
//! unchanged) whose encrypter and decrypter keep the key bytes (at most 32) and the IV, and
//! expand the key when a record is sealed or opened: some 100-200 ns (an AES key expansion and a
//! GHASH table), about 1% of a 16 KiB record's encryption, for about 1 KiB less per idle tunnel.
//! Each worker thread keeps the last key it expanded per direction, so a tunnel moving records
//! in a row (bulk) expands once.
//!
//! The record format is RFC 8446 5.2, as rustls's own ring suites write it: nonce = IV xor
//! the sequence number, additional data = the record header, inner content type after the
//! payload. TLS 1.2 handshakes keep rustls's ring suites unchanged. Once a session is
//! established rustls is dropped and `records.rs` protects the records of every suite, 1.2 and
//! 1.3, with the same [`Keys`] and the same per-thread caches.

use ring::aead;
use rustls::crypto::cipher::{
    make_tls13_aad, AeadKey, InboundOpaqueMessage, InboundPlainMessage, Iv, MessageDecrypter,
    MessageEncrypter, Nonce, OutboundOpaqueMessage, OutboundPlainMessage, PrefixedPayload,
    Tls13AeadAlgorithm, UnsupportedOperationError,
};
use rustls::crypto::CryptoProvider;
use rustls::{
    CipherSuite, CipherSuiteCommon, ConnectionTrafficSecrets, ContentType, Error, ProtocolVersion,
    SupportedCipherSuite, Tls13CipherSuite,
};
use std::cell::RefCell;
use std::sync::OnceLock;
use zeroize::Zeroize;

/// *ring*'s default provider with its TLS 1.3 suites replaced by the lazily keyed ones.
pub fn provider() -> CryptoProvider {
    let mut p = rustls::crypto::ring::default_provider();
    for s in &mut p.cipher_suites {
        if let SupportedCipherSuite::Tls13(t) = s {
            if let Some(lazy) = lazy_suite(t.common.suite) {
                *s = SupportedCipherSuite::Tls13(lazy);
            }
        }
    }
    p
}

/// The lazy twin of one of *ring*'s TLS 1.3 suites, made once per process.
fn lazy_suite(id: CipherSuite) -> Option<&'static Tls13CipherSuite> {
    static SUITES: OnceLock<Vec<&'static Tls13CipherSuite>> = OnceLock::new();
    let all = SUITES.get_or_init(|| {
        rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .filter_map(|s| match s {
                SupportedCipherSuite::Tls13(t) => {
                    let alg: &'static LazyAead = match t.common.suite {
                        CipherSuite::TLS13_AES_128_GCM_SHA256 => &AES_128,
                        CipherSuite::TLS13_AES_256_GCM_SHA384 => &AES_256,
                        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => &CHACHA,
                        _ => return None,
                    };
                    let suite: &'static Tls13CipherSuite = Box::leak(Box::new(Tls13CipherSuite {
                        common: CipherSuiteCommon {
                            suite: t.common.suite,
                            hash_provider: t.common.hash_provider,
                            confidentiality_limit: t.common.confidentiality_limit,
                        },
                        hkdf_provider: t.hkdf_provider,
                        aead_alg: alg,
                        quic: None,
                    }));
                    Some(suite)
                }
                SupportedCipherSuite::Tls12(_) => None,
            })
            .collect()
    });
    all.iter().copied().find(|s| s.common.suite == id)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Aes128,
    Aes256,
    Chacha,
}

/// One AEAD algorithm of the TLS 1.3 suites.
struct LazyAead(&'static aead::Algorithm, Kind);

static AES_128: LazyAead = LazyAead(&aead::AES_128_GCM, Kind::Aes128);
static AES_256: LazyAead = LazyAead(&aead::AES_256_GCM, Kind::Aes256);
static CHACHA: LazyAead = LazyAead(&aead::CHACHA20_POLY1305, Kind::Chacha);

/// A direction's key bytes and IV: what stays with an idle session (here, and in the record
/// layer of an established session, `records.rs`, for every suite).
pub(super) struct Keys {
    pub(super) alg: &'static aead::Algorithm,
    key: [u8; 32],
    pub(super) iv: Iv,
}

impl Keys {
    pub(super) fn new(alg: &'static aead::Algorithm, key: &AeadKey, iv: Iv) -> Keys {
        let mut k = [0u8; 32];
        let bytes = key.as_ref();
        k[..bytes.len()].copy_from_slice(bytes);
        Keys { alg, key: k, iv }
    }

    /// Runs `f` with the expanded key. The worker thread keeps the last key it expanded for
    /// each direction (`slot`), so a tunnel moving many records in a row expands once; an
    /// idle tunnel holds only its key bytes.
    fn with_key<T>(
        &self,
        slot: &'static std::thread::LocalKey<RefCell<Option<Expanded>>>,
        f: impl FnOnce(&aead::LessSafeKey) -> T,
    ) -> Result<T, Error> {
        slot.with(|cell| {
            let mut last = cell.borrow_mut();
            let hit =
                matches!(&*last, Some(e) if std::ptr::eq(e.alg, self.alg) && e.key == self.key);
            if !hit {
                let key = aead::UnboundKey::new(self.alg, &self.key[..self.alg.key_len()])
                    .map(aead::LessSafeKey::new)
                    .map_err(|_| Error::General("traffic key of the wrong length".into()))?;
                *last = Some(Expanded {
                    alg: self.alg,
                    key: self.key,
                    expanded: key,
                });
            }
            match &*last {
                Some(e) => Ok(f(&e.expanded)),
                None => Err(Error::EncryptError),
            }
        })
    }

    fn nonce(&self, seq: u64) -> aead::Nonce {
        aead::Nonce::assume_unique_for_key(Nonce::new(&self.iv, seq).0)
    }

    /// Runs `f` with the expanded key, from this thread's sealing cache.
    pub(super) fn sealing<T>(&self, f: impl FnOnce(&aead::LessSafeKey) -> T) -> Result<T, Error> {
        self.with_key(&SEAL, f)
    }

    /// Runs `f` with the expanded key, from this thread's opening cache.
    pub(super) fn opening<T>(&self, f: impl FnOnce(&aead::LessSafeKey) -> T) -> Result<T, Error> {
        self.with_key(&OPEN, f)
    }
}

/// The key a worker thread expanded last for one direction.
struct Expanded {
    alg: &'static aead::Algorithm,
    key: [u8; 32],
    expanded: aead::LessSafeKey,
}

impl Drop for Expanded {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

thread_local! {
    static SEAL: RefCell<Option<Expanded>> = const { RefCell::new(None) };
    static OPEN: RefCell<Option<Expanded>> = const { RefCell::new(None) };
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl Tls13AeadAlgorithm for LazyAead {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        Box::new(Encrypter(Keys::new(self.0, &key, iv)))
    }

    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        Box::new(Decrypter(Keys::new(self.0, &key, iv)))
    }

    fn key_len(&self) -> usize {
        self.0.key_len()
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        Ok(match self.1 {
            Kind::Aes128 => ConnectionTrafficSecrets::Aes128Gcm { key, iv },
            Kind::Aes256 => ConnectionTrafficSecrets::Aes256Gcm { key, iv },
            Kind::Chacha => ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv },
        })
    }

    fn fips(&self) -> bool {
        false
    }
}

struct Encrypter(Keys);

impl MessageEncrypter for Encrypter {
    fn encrypt(
        &mut self,
        msg: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        let total_len = self.encrypted_payload_len(msg.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total_len);
        payload.extend_from_chunks(&msg.payload);
        payload.extend_from_slice(&msg.typ.to_array());
        let aad = aead::Aad::from(make_tls13_aad(total_len));
        let nonce = self.0.nonce(seq);
        self.0
            .with_key(&SEAL, |k| {
                k.seal_in_place_append_tag(nonce, aad, &mut payload)
            })?
            .map_err(|_| Error::EncryptError)?;
        // TLS 1.3 records carry the legacy version 0x0303 (RFC 8446 5.1).
        Ok(OutboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            payload,
        ))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + 1 + self.0.alg.tag_len()
    }
}

struct Decrypter(Keys);

impl MessageDecrypter for Decrypter {
    fn decrypt<'a>(
        &mut self,
        mut msg: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let payload = &mut msg.payload;
        if payload.len() < self.0.alg.tag_len() {
            return Err(Error::DecryptError);
        }
        let aad = aead::Aad::from(make_tls13_aad(payload.len()));
        let nonce = self.0.nonce(seq);
        let plain_len = self
            .0
            .with_key(&OPEN, |k| {
                k.open_in_place(nonce, aad, payload).map(|p| p.len())
            })?
            .map_err(|_| Error::DecryptError)?;
        payload.truncate(plain_len);
        msg.into_tls13_unpadded_message()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lazy suites replace exactly ring's TLS 1.3 suites, in ring's order, and what an
    /// idle direction keeps is the key bytes and IV, not an expanded key.
    #[test]
    fn the_tls13_suites_are_replaced_and_keep_only_key_bytes() {
        let ring = rustls::crypto::ring::default_provider();
        let ours = provider();
        let ids = |p: &CryptoProvider| {
            p.cipher_suites
                .iter()
                .map(|s| s.suite())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&ring), ids(&ours));
        let lazy = ours
            .cipher_suites
            .iter()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls13(t) if t.quic.is_none()))
            .count();
        assert_eq!(lazy, 3);
        assert!(std::mem::size_of::<Encrypter>() <= 64);
        assert!(std::mem::size_of::<aead::LessSafeKey>() > 256);
    }

    /// A record sealed by ring's own TLS 1.3 encrypter opens with the lazy decrypter and the
    /// other way round, for every suite (the wire format is unchanged).
    #[test]
    fn records_interoperate_with_rings_suites() {
        let ring = rustls::crypto::ring::default_provider();
        let mut checked = 0;
        for s in ring.cipher_suites.iter() {
            let SupportedCipherSuite::Tls13(theirs) = s else {
                continue;
            };
            let Some(ours) = lazy_suite(theirs.common.suite) else {
                panic!("no lazy twin for {:?}", theirs.common.suite);
            };
            let key = || AeadKey::from([7u8; 32]);
            // Only rustls makes an AeadKey shorter than 32 bytes: AES-128-GCM is checked
            // against ring's suites end to end instead (tests/tls.rs, every cipher suite).
            if theirs.aead_alg.key_len() != 32 {
                continue;
            }
            checked += 1;
            let iv = || Iv::new([9u8; 12]);
            for (mut enc, mut dec) in [
                (
                    theirs.aead_alg.encrypter(key(), iv()),
                    ours.aead_alg.decrypter(key(), iv()),
                ),
                (
                    ours.aead_alg.encrypter(key(), iv()),
                    theirs.aead_alg.decrypter(key(), iv()),
                ),
            ] {
                let chunks = [&b"hello, records"[..]];
                let plain = OutboundPlainMessage {
                    typ: ContentType::ApplicationData,
                    version: ProtocolVersion::TLSv1_2,
                    payload: rustls::crypto::cipher::OutboundChunks::new(&chunks),
                };
                let sealed = enc.encrypt(plain, 5).expect("seal");
                let mut wire = sealed.encode();
                let opaque = InboundOpaqueMessage::new(
                    ContentType::ApplicationData,
                    ProtocolVersion::TLSv1_2,
                    &mut wire[5..],
                );
                let opened = dec.decrypt(opaque, 5).expect("open");
                assert_eq!(opened.payload, b"hello, records");
                assert_eq!(opened.typ, ContentType::ApplicationData);
            }
        }
        // AES-256-GCM and ChaCha20-Poly1305.
        assert_eq!(checked, 2);
    }
}
