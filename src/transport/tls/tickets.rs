//! Session tickets from explicit key bytes, so every worker (thread or process) that is handed
//! the same 32 bytes encrypts and accepts the same tickets, and a reload keeps them.
//!
//! Keys roll without coordination: the key for period `p` (six hours each, counted from the
//! Unix epoch) is HKDF-SHA256(master, "wsplice ticket key" ‖ p). A ticket is sealed with the
//! current period's key and accepted during that period and the next, so a stolen key opens
//! at most twelve hours of tickets and no process needs to tell another that a key changed.
//!
//! ```text
//! ticket = period (8, big-endian) ‖ nonce (12) ‖ ChaCha20-Poly1305(state) ‖ tag (16)
//!          (the period is the additional data)
//! ```

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hkdf::{Salt, HKDF_SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// How long one key seals tickets, seconds; tickets are accepted for up to twice this.
const PERIOD: u64 = 6 * 3600;
/// Tickets longer than this are not ours (rustls's session state is a few hundred bytes).
const MAX_TICKET: usize = 2048;

/// The ticket keys of the whole proxy: made once from 32 bytes, shared by every worker.
pub struct TicketKeys {
    master: [u8; 32],
    /// The keys of the last periods used, newest last.
    cache: Mutex<Vec<(u64, LessSafeKey)>>,
    rng: SystemRandom,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKeys(..)")
    }
}

impl TicketKeys {
    /// Keys from `master`: every process handed the same bytes accepts the same tickets.
    pub fn from_bytes(master: [u8; 32]) -> TicketKeys {
        TicketKeys {
            master,
            cache: Mutex::new(Vec::new()),
            rng: SystemRandom::new(),
        }
    }

    /// Fresh random key bytes from the system's generator (getrandom), and keys from them.
    pub fn generate() -> Result<([u8; 32], TicketKeys), ring::error::Unspecified> {
        let mut master = [0u8; 32];
        SystemRandom::new().fill(&mut master)?;
        Ok((master, TicketKeys::from_bytes(master)))
    }

    fn period_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() / PERIOD)
    }

    /// Runs `f` with the key of period `p`.
    fn with_key<R>(&self, p: u64, f: impl FnOnce(&LessSafeKey) -> R) -> Option<R> {
        let mut cache = self.cache.lock().ok()?;
        if let Some((_, k)) = cache.iter().find(|(q, _)| *q == p) {
            return Some(f(k));
        }
        let mut bytes = [0u8; 32];
        let info = [b"wsplice ticket key".as_slice(), &p.to_be_bytes()];
        Salt::new(HKDF_SHA256, &[])
            .extract(&self.master)
            .expand(&info, HKDF_SHA256)
            .ok()?
            .fill(&mut bytes)
            .ok()?;
        let key = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &bytes).ok()?);
        let r = f(&key);
        cache.push((p, key));
        if cache.len() > 3 {
            cache.remove(0);
        }
        Some(r)
    }
}

impl ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        PERIOD as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let p = Self::period_now();
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(8 + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&p.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let head = 8 + NONCE_LEN;
        let tag = self.with_key(p, |k| {
            k.seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(p.to_be_bytes()),
                &mut out[head..],
            )
        })?;
        out.extend_from_slice(tag.ok()?.as_ref());
        Some(out)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() > MAX_TICKET || ticket.len() < 8 + NONCE_LEN + 16 {
            return None;
        }
        let p = u64::from_be_bytes(ticket[..8].try_into().ok()?);
        let now = Self::period_now();
        if p != now && p.checked_add(1) != Some(now) {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&ticket[8..8 + NONCE_LEN]).ok()?;
        let mut sealed = ticket[8 + NONCE_LEN..].to_vec();
        let len = self.with_key(p, |k| {
            k.open_in_place(nonce, Aad::from(p.to_be_bytes()), &mut sealed)
                .map(|plain| plain.len())
        })?;
        sealed.truncate(len.ok()?);
        Some(sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_bytes_open_each_others_tickets_other_bytes_do_not() {
        let a = TicketKeys::from_bytes([7; 32]);
        let b = TicketKeys::from_bytes([7; 32]);
        let c = TicketKeys::from_bytes([8; 32]);
        let t = a.encrypt(b"session state").expect("sealed");
        assert_eq!(b.decrypt(&t).as_deref(), Some(&b"session state"[..]));
        assert_eq!(c.decrypt(&t), None);
        let mut bad = t.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(a.decrypt(&bad), None, "a tampered ticket is refused");
        assert_eq!(a.decrypt(&t[..20]), None, "a short ticket is refused");
    }

    #[test]
    fn a_ticket_of_an_old_period_is_refused() {
        let a = TicketKeys::from_bytes([1; 32]);
        let mut t = a.encrypt(b"x").expect("sealed");
        let old = TicketKeys::period_now() - 2;
        t[..8].copy_from_slice(&old.to_be_bytes());
        assert_eq!(a.decrypt(&t), None);
    }
}
