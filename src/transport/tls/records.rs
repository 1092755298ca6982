//! The record layer of an established session. Once the handshake is done and rustls has
//! written everything it wanted to (the server's NewSessionTicket, a KeyUpdate it owed), the
//! rustls connection is turned into its traffic secrets (`dangerous_into_kernel_connection`)
//! and dropped, and records are framed and protected here:
//!
//! ```text
//!   TLS 1.3 (RFC 8446 5.2)   17 03 03 len | AEAD(payload ‖ inner type) ‖ tag
//!                            nonce = iv ⊕ seq, additional data = the 5-byte header
//!   TLS 1.2 AES-GCM (5288)   type 03 03 len | explicit nonce (8) ‖ AEAD(payload) ‖ tag
//!                            nonce = salt (4) ‖ explicit; ours sends (iv ⊕ seq)[4..] as rustls
//!   TLS 1.2 ChaCha20 (7905)  type 03 03 len | AEAD(payload) ‖ tag, nonce = iv ⊕ seq
//!   TLS 1.2 additional data  seq (8) ‖ type ‖ 03 03 ‖ plaintext length (2)
//! ```
//!
//! What an idle established session keeps here: each direction's key bytes, IV and sequence
//! number (64 B), and for TLS 1.3 what the next keys are derived from on a KeyUpdate: a
//! client's two traffic secrets ([`super::secrets`], 100 B boxed), or, toward a backend (whose
//! session tickets rustls's session cache takes) and for a client whose secrets were not
//! captured, rustls's `KernelConnection` (about 800 B). Keys are expanded per record through the
//! worker thread's caches ([`super::lazy_aead`]), as during the handshake, so a tunnel moving
//! records in a row expands its key once.
//!
//! Handled: application data; close_notify (the end, as FIN); KeyUpdate (TLS 1.3: the receive
//! keys move on; when the peer asks, ours too, after our own KeyUpdate under the old keys); a
//! TLS backend's NewSessionTicket (into rustls's session cache, for resumption). Anything else
//! (another alert, a ChangeCipherSpec, a handshake message such as a TLS 1.2 renegotiation or a
//! post-handshake message split over records, a record that does not open) is an error: the
//! session sends a fatal alert and the connection closes, and nothing of that record reaches the
//! other side.
//!
//! kTLS would take the same secrets ([`Records::new`]'s input) and hand the kernel the framing
//! done here, behind the same `Transport` seam (not built: this kernel has no `tls` ULP).

use super::lazy_aead::Keys;
use super::role::Role;
use super::secrets::Secrets;
use ring::aead;
use rustls::crypto::cipher::{AeadKey, Iv};
use rustls::kernel::KernelConnection;
use rustls::{
    AlertDescription, ConnectionTrafficSecrets, ContentType, Error, ExtractedSecrets,
    InvalidMessage, ProtocolVersion,
};
use std::ops::Range;

const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
/// Handshake message types after the handshake.
const NEW_SESSION_TICKET: u8 = 4;
const KEY_UPDATE: u8 = 24;
/// Alert descriptions.
const CLOSE_NOTIFY: u8 = 0;
const FATAL: u8 = 2;
const WARNING: u8 = 1;

/// The most plaintext a record carries.
const MAX_PLAIN: usize = 1 << 14;
/// The largest record body accepted: TLS 1.2 allows 2^14 + 2048 (1.3 less).
const MAX_BODY: usize = MAX_PLAIN + 2048;
const TAG: usize = 16;
/// TLS 1.2 AES-GCM's explicit nonce.
const EXPLICIT: usize = 8;
/// The most a record adds to its plaintext: header, explicit nonce or inner type, tag.
pub(super) const OVERHEAD: usize = 5 + EXPLICIT + TAG;
/// AES-GCM records sealed under one key before it is changed (TLS 1.3: a KeyUpdate) or the
/// connection refused (TLS 1.2), as rustls's suites say.
const AES_GCM_LIMIT: u64 = 1 << 24;

/// One direction: its keys and the sequence number of its next record.
struct Direction {
    keys: Keys,
    seq: u64,
}

impl Direction {
    fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Result<Direction, Error> {
        let (alg, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => {
                return Err(Error::General(
                    "a cipher suite the record layer does not know".into(),
                ))
            }
        };
        Ok(Direction {
            keys: Keys::new(alg, &key, iv),
            seq,
        })
    }

    /// The keys of the next generation (KeyUpdate), from the secret: same algorithm, sequence
    /// numbers from 0.
    fn next(&self, (key, iv): ([u8; 32], [u8; 12])) -> Direction {
        Direction {
            keys: Keys::new(self.keys.alg, &AeadKey::from(key), Iv::from(iv)),
            seq: 0,
        }
    }

    fn chacha(&self) -> bool {
        *self.keys.alg == aead::CHACHA20_POLY1305
    }

    /// The nonce of record `seq`: the IV with the sequence number xored into its last 8 bytes.
    fn nonce(&self, seq: u64) -> [u8; 12] {
        let mut n = [0u8; 12];
        n.copy_from_slice(self.keys.iv.as_ref());
        for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }
}

fn tls12_aad(seq: u64, typ: u8, len: usize) -> aead::Aad<[u8; 13]> {
    let mut a = [0u8; 13];
    a[..8].copy_from_slice(&seq.to_be_bytes());
    a[8] = typ;
    a[9] = 3;
    a[10] = 3;
    a[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aead::Aad::from(a)
}

fn unexpected(typ: u8) -> Error {
    Error::InappropriateMessage {
        expect_types: vec![ContentType::ApplicationData],
        got_type: ContentType::from(typ),
    }
}

/// The fatal alert an error is answered with; `None` for an alert the peer sent.
pub(super) fn alert_for(e: &Error) -> Option<u8> {
    Some(match e {
        Error::AlertReceived(_) => return None,
        Error::DecryptError => 20,            // bad_record_mac
        Error::PeerSentOversizedRecord => 22, // record_overflow
        Error::InappropriateMessage { .. } | Error::InappropriateHandshakeMessage { .. } => 10,
        Error::InvalidMessage(InvalidMessage::InvalidKeyUpdate) => 47, // illegal_parameter
        Error::InvalidMessage(_) => 50,                                // decode_error
        _ => 80,                                                       // internal_error
    })
}

/// True when `rx` (the bytes after the last record rustls took) holds a whole record: rustls
/// is then in the middle of a handshake message spanning records, and keeps part of it.
pub(super) fn holds_whole_record(rx: &[u8]) -> bool {
    rx.len() >= 5 && rx.len() >= 5 + usize::from(u16::from_be_bytes([rx[3], rx[4]]))
}

/// Where a TLS 1.3 session's next keys come from.
enum Update<D> {
    /// TLS 1.2: no KeyUpdate, and no ticket after the handshake.
    Tls12,
    /// The traffic secrets, captured during the handshake and checked against the keys.
    Secrets(Box<Secrets>),
    /// rustls's remains of the connection: it derives them, and takes a backend's tickets.
    Kernel(Box<KernelConnection<D>>),
}

/// An established session's record protection.
pub(super) struct Records<D> {
    tx: Direction,
    rx: Direction,
    update: Update<D>,
}

impl<D> Records<D> {
    /// The record layer of a connection rustls handed over. `caught`: the traffic secrets
    /// captured during the handshake, kept instead of `kernel` when they give the same keys
    /// and `kernel` has no tickets to take (`tickets` false: a client's session).
    pub(super) fn new(
        secrets: ExtractedSecrets,
        kernel: KernelConnection<D>,
        caught: Option<Box<Secrets>>,
        tickets: bool,
    ) -> Result<Records<D>, Error> {
        let update = if kernel.protocol_version() != ProtocolVersion::TLSv1_3 {
            Update::Tls12
        } else {
            match caught {
                Some(s) if !tickets && s.matches(&secrets.tx.1, &secrets.rx.1) => {
                    Update::Secrets(s)
                }
                _ => Update::Kernel(Box::new(kernel)),
            }
        };
        Ok(Records {
            tx: Direction::new(secrets.tx)?,
            rx: Direction::new(secrets.rx)?,
            update,
        })
    }

    fn tls13(&self) -> bool {
        !matches!(self.update, Update::Tls12)
    }

    /// Seals one record of content type `typ` holding `payload` at the start of `out`; returns
    /// its length.
    fn seal(&mut self, typ: u8, payload: &[u8], out: &mut [u8]) -> Result<usize, Error> {
        let p = payload.len();
        if p > MAX_PLAIN || out.len() < p + OVERHEAD {
            return Err(Error::EncryptError);
        }
        let tls13 = self.tls13();
        let tx = &mut self.tx;
        let seq = tx.seq;
        let nonce = tx.nonce(seq);
        // (where the sealed bytes start, how many, the header's type and length)
        let (start, sealed, outer, len) = if tls13 {
            out[5 + p] = typ;
            (5, p + 1, APPLICATION_DATA, p + 1 + TAG)
        } else if tx.chacha() {
            (5, p, typ, p + TAG)
        } else {
            out[5..5 + EXPLICIT].copy_from_slice(&nonce[4..]);
            (5 + EXPLICIT, p, typ, EXPLICIT + p + TAG)
        };
        let header = [outer, 3, 3, (len >> 8) as u8, len as u8];
        out[..5].copy_from_slice(&header);
        out[start..start + p].copy_from_slice(payload);
        let nonce = aead::Nonce::assume_unique_for_key(nonce);
        let region = &mut out[start..start + sealed];
        let tag = if tls13 {
            tx.keys
                .sealing(|k| k.seal_in_place_separate_tag(nonce, aead::Aad::from(header), region))?
        } else {
            tx.keys
                .sealing(|k| k.seal_in_place_separate_tag(nonce, tls12_aad(seq, typ, p), region))?
        }
        .map_err(|_| Error::EncryptError)?;
        out[start + sealed..start + sealed + TAG].copy_from_slice(tag.as_ref());
        tx.seq = seq.checked_add(1).ok_or(Error::EncryptError)?;
        Ok(5 + len)
    }

    /// Seals `data` as application-data records into `out` (room for `data`, [`OVERHEAD`] per
    /// 16 KiB and one KeyUpdate record); returns the length.
    pub(super) fn seal_data(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize, Error> {
        let mut at = 0;
        for chunk in data.chunks(MAX_PLAIN) {
            if !self.tx.chacha() && self.tx.seq >= AES_GCM_LIMIT {
                // TLS 1.3 moves to fresh keys; TLS 1.2 cannot, and refuses to go on.
                at += self.update_tx(&mut out[at..])?;
            }
            at += self.seal(APPLICATION_DATA, chunk, &mut out[at..])?;
        }
        Ok(at)
    }

    /// Seals an alert (close_notify, or a fatal one) into `out`; returns its length.
    pub(super) fn seal_alert(&mut self, description: u8, out: &mut [u8]) -> Result<usize, Error> {
        let level = if description == CLOSE_NOTIFY {
            WARNING
        } else {
            FATAL
        };
        self.seal(ALERT, &[level, description], out)
    }

    /// Appends a fatal alert to `tx` (best effort: the connection is closing).
    pub(super) fn queue_alert(&mut self, description: u8, tx: &mut Vec<u8>) {
        let at = tx.len();
        tx.resize(at + 2 + OVERHEAD, 0);
        let n = self.seal_alert(description, &mut tx[at..]).unwrap_or(0);
        tx.truncate(at + n);
    }

    /// Seals our KeyUpdate (update_not_requested) under the current keys into `out`, then moves
    /// the sending keys on. TLS 1.2 has no KeyUpdate: an error.
    fn update_tx(&mut self, out: &mut [u8]) -> Result<usize, Error> {
        if !self.tls13() {
            return Err(Error::EncryptError);
        }
        let n = self.seal(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 0], out)?;
        self.tx = match &mut self.update {
            Update::Secrets(s) => self.tx.next(s.update_tx(self.tx.keys.alg.key_len())),
            Update::Kernel(k) => Direction::new(k.update_tx_secret()?)?,
            Update::Tls12 => return Err(Error::EncryptError),
        };
        Ok(n)
    }

    /// Opens the whole record `rec` (header and body) in place: its content type and where its
    /// plaintext lies in `rec`.
    fn open(&mut self, rec: &mut [u8]) -> Result<(u8, Range<usize>), Error> {
        let header = [rec[0], rec[1], rec[2], rec[3], rec[4]];
        let body = rec.len() - 5;
        let rx = &self.rx;
        let seq = rx.seq;
        let (typ, range) = if self.tls13() {
            // Every protected TLS 1.3 record says application data outside.
            if header[0] != APPLICATION_DATA {
                return Err(unexpected(header[0]));
            }
            if body < TAG + 1 {
                return Err(Error::DecryptError);
            }
            let nonce = aead::Nonce::assume_unique_for_key(rx.nonce(seq));
            let plain = rx
                .keys
                .opening(|k| {
                    k.open_in_place(nonce, aead::Aad::from(header), &mut rec[5..])
                        .map(|p| p.len())
                })?
                .map_err(|_| Error::DecryptError)?;
            // The inner type is the last byte that is not padding.
            let mut end = 5 + plain;
            loop {
                if end == 5 {
                    return Err(InvalidMessage::InvalidContentType.into());
                }
                end -= 1;
                if rec[end] != 0 {
                    break;
                }
            }
            (rec[end], 5..end)
        } else {
            let typ = header[0];
            if !matches!(typ, APPLICATION_DATA | ALERT | HANDSHAKE) {
                return Err(unexpected(typ));
            }
            if rx.chacha() {
                let Some(len) = body.checked_sub(TAG) else {
                    return Err(Error::DecryptError);
                };
                let nonce = aead::Nonce::assume_unique_for_key(rx.nonce(seq));
                let aad = tls12_aad(seq, typ, len);
                let plain = rx
                    .keys
                    .opening(|k| k.open_in_place(nonce, aad, &mut rec[5..]).map(|p| p.len()))?
                    .map_err(|_| Error::DecryptError)?;
                (typ, 5..5 + plain)
            } else {
                let Some(len) = body.checked_sub(EXPLICIT + TAG) else {
                    return Err(Error::DecryptError);
                };
                let mut n = [0u8; 12];
                n[..4].copy_from_slice(&rx.keys.iv.as_ref()[..4]);
                n[4..].copy_from_slice(&rec[5..5 + EXPLICIT]);
                let nonce = aead::Nonce::assume_unique_for_key(n);
                let aad = tls12_aad(seq, typ, len);
                let plain = rx
                    .keys
                    .opening(|k| {
                        k.open_within(nonce, aad, &mut rec[5..], EXPLICIT..)
                            .map(|p| p.len())
                    })?
                    .map_err(|_| Error::DecryptError)?;
                (typ, 5..5 + plain)
            }
        };
        if range.len() > MAX_PLAIN {
            return Err(Error::PeerSentOversizedRecord);
        }
        self.rx.seq = seq.checked_add(1).ok_or(Error::DecryptError)?;
        Ok((typ, range))
    }

    /// The handshake messages of one TLS 1.3 record: KeyUpdate, or a backend's ticket.
    fn handshake<C: Role<Data = D>>(
        &mut self,
        mut msg: &[u8],
        tx: &mut Vec<u8>,
    ) -> Result<(), Error> {
        if !self.tls13() {
            // TLS 1.2: a renegotiation, which is refused.
            return Err(unexpected(HANDSHAKE));
        }
        while !msg.is_empty() {
            let [typ, a, b, c, rest @ ..] = msg else {
                return Err(InvalidMessage::MessageTooShort.into());
            };
            let len = (usize::from(*a) << 16) | (usize::from(*b) << 8) | usize::from(*c);
            if rest.len() < len {
                // Split over records: never done with these small messages, not supported.
                return Err(InvalidMessage::MessageTooShort.into());
            }
            let (body, rest) = rest.split_at(len);
            match *typ {
                KEY_UPDATE => {
                    // A key change must end its record (RFC 8446 5.1).
                    if !rest.is_empty() {
                        return Err(InvalidMessage::TrailingData("KeyUpdate").into());
                    }
                    let requested = match body {
                        [0] => false,
                        [1] => true,
                        _ => return Err(InvalidMessage::InvalidKeyUpdate.into()),
                    };
                    self.rx = match &mut self.update {
                        Update::Secrets(s) => self.rx.next(s.update_rx(self.rx.keys.alg.key_len())),
                        Update::Kernel(k) => Direction::new(k.update_rx_secret()?)?,
                        Update::Tls12 => return Err(unexpected(HANDSHAKE)),
                    };
                    if requested {
                        let at = tx.len();
                        tx.resize(at + 5 + OVERHEAD, 0);
                        let n = self.update_tx(&mut tx[at..]);
                        tx.truncate(at + *n.as_ref().unwrap_or(&0));
                        n?;
                    }
                }
                NEW_SESSION_TICKET => match &mut self.update {
                    Update::Kernel(k) => C::take_ticket(k, body)?,
                    _ => return Err(unexpected(HANDSHAKE)),
                },
                _ => {
                    return Err(Error::InappropriateHandshakeMessage {
                        expect_types: vec![rustls::HandshakeType::KeyUpdate],
                        got_type: rustls::HandshakeType::from(*typ),
                    })
                }
            }
            msg = rest;
        }
        Ok(())
    }

    /// Opens the whole records of `work[..*have]`: application data to `out[*n..]` (what does
    /// not fit to `plain`), our answers (KeyUpdate) to `tx`. Processed bytes leave the front of
    /// `work`. Returns true at the peer's close_notify (whatever follows it is dropped).
    pub(super) fn read<C: Role<Data = D>>(
        &mut self,
        work: &mut [u8],
        have: &mut usize,
        out: &mut [u8],
        n: &mut usize,
        plain: &mut Vec<u8>,
        tx: &mut Vec<u8>,
    ) -> Result<bool, Error> {
        let mut at = 0;
        let mut closed = false;
        let res = loop {
            let rest = &mut work[at..*have];
            if rest.len() < 5 {
                break Ok(());
            }
            let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            if len > MAX_BODY {
                break Err(Error::PeerSentOversizedRecord);
            }
            if rest.len() < 5 + len {
                break Ok(());
            }
            at += 5 + len;
            let rec = &mut rest[..5 + len];
            let (typ, range) = match self.open(rec) {
                Ok(r) => r,
                Err(e) => break Err(e),
            };
            let body = &rec[range];
            match typ {
                APPLICATION_DATA => {
                    let k = body.len().min(out.len() - *n);
                    out[*n..*n + k].copy_from_slice(&body[..k]);
                    *n += k;
                    plain.extend_from_slice(&body[k..]);
                }
                ALERT => match body {
                    [_, CLOSE_NOTIFY] => {
                        closed = true;
                        at = *have;
                        break Ok(());
                    }
                    [_, d] => break Err(Error::AlertReceived(AlertDescription::from(*d))),
                    _ => break Err(InvalidMessage::MessageTooShort.into()),
                },
                HANDSHAKE => {
                    if let Err(e) = self.handshake::<C>(body, tx) {
                        break Err(e);
                    }
                }
                t => break Err(unexpected(t)),
            }
        };
        work.copy_within(at..*have, 0);
        *have -= at;
        res.map(|()| closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an established session keeps besides rustls's TLS 1.3 remains.
    #[test]
    fn an_established_session_is_small() {
        let size = std::mem::size_of::<Records<rustls::server::ServerConnectionData>>();
        assert!(size <= 160, "Records grew to {size} B");
    }

    #[test]
    fn alerts_answer_errors_but_not_alerts() {
        assert_eq!(alert_for(&Error::DecryptError), Some(20));
        assert_eq!(
            alert_for(&Error::AlertReceived(AlertDescription::from(40))),
            None
        );
        assert_eq!(alert_for(&unexpected(20)), Some(10));
    }

    #[test]
    fn a_whole_record_is_told_from_a_partial_one() {
        assert!(!holds_whole_record(&[23, 3, 3, 0]));
        assert!(!holds_whole_record(&[23, 3, 3, 0, 2, 0]));
        assert!(holds_whole_record(&[23, 3, 3, 0, 2, 0, 0]));
    }
}
