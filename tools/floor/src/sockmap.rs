//! `floor --sockmap`: the relay done by the kernel instead of by a thread (issue 13's question
//! whether any relay on this kernel can cost 0.6 × nginx per message). Each tunnel's two sockets
//! go into one BPF sockhash, each under its peer's socket cookie, and an `sk_skb` verdict program
//! attached to the map redirects every received skb to the egress of the socket stored under
//! the receiving socket's own cookie:
//!
//! ```text
//!     r6 = r1                               ; the skb
//!     r0 = bpf_get_socket_cookie(r1)        ; the receiving socket's cookie
//!     *(u64 *)(r10 - 8) = r0
//!     return bpf_sk_redirect_hash(r6, &peers, r10 - 8, 0)   ; 0: egress of the peer
//! ```
//!
//! The thread only accepts, connects, inserts the pair, and handles FIN (a FIN is not an skb
//! the verdict sees: the socket becomes readable, a read returns 0, the other side is shut
//! down) and the bytes that arrived before the pair was inserted (the upgrade request).
//! Needs CAP_BPF and CAP_NET_ADMIN (root). Plaintext only: a TLS relay must decrypt in user
//! space, and this kernel has no kTLS.

use std::io;
use std::os::fd::RawFd;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
const BPF_PROG_TYPE_SK_SKB: u32 = 14;
const BPF_SK_SKB_VERDICT: u32 = 38;
const FN_GET_SOCKET_COOKIE: i32 = 46;
const FN_SK_REDIRECT_HASH: i32 = 72;

/// `union bpf_attr` is 144 bytes on this kernel; every command reads its leading fields and
/// requires the rest to be zero.
#[repr(C, align(8))]
struct Attr([u8; 144]);

impl Attr {
    fn new() -> Self {
        Attr([0; 144])
    }
    fn u32(mut self, at: usize, v: u32) -> Self {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(mut self, at: usize, v: u64) -> Self {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr, what: &str) -> io::Result<RawFd> {
    // SAFETY: bpf(2) with a zero-padded attribute block of the size the kernel expects, whose
    // pointers (instructions, license, log, key, value) point at data that outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("bpf {what}: {e}")));
    }
    Ok(rc as RawFd)
}

/// One eBPF instruction: opcode, dst and src registers (4 bits each), offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    (code as u64)
        | (((dst | (src << 4)) as u64) << 8)
        | ((off as u16 as u64) << 16)
        | ((imm as u32 as u64) << 32)
}

/// The sockhash and its attached verdict program (both kept open for the process's life).
pub struct Peers {
    map: RawFd,
}

impl Peers {
    pub fn new(max: u32) -> io::Result<Peers> {
        let mut a = Attr::new()
            .u32(0, BPF_MAP_TYPE_SOCKHASH)
            .u32(4, 8) // key: a socket cookie
            .u32(8, 4) // value: a socket descriptor
            .u32(12, max);
        let map = bpf(BPF_MAP_CREATE, &mut a, "map_create (sockhash)")?;
        let prog = [
            insn(0xbf, 6, 1, 0, 0),                    // r6 = r1
            insn(0x85, 0, 0, 0, FN_GET_SOCKET_COOKIE), // call
            insn(0x7b, 10, 0, -8, 0),                  // *(u64 *)(r10 - 8) = r0
            insn(0xbf, 1, 6, 0, 0),                    // r1 = r6
            insn(0x18, 2, 1, 0, map),                  // r2 = map (ld_imm64, pseudo map fd)
            0,
            insn(0xbf, 3, 10, 0, 0),                  // r3 = r10
            insn(0x07, 3, 0, 0, -8),                  // r3 += -8
            insn(0xb7, 4, 0, 0, 0),                   // r4 = 0 (egress)
            insn(0x85, 0, 0, 0, FN_SK_REDIRECT_HASH), // call
            insn(0x95, 0, 0, 0, 0),                   // exit
        ];
        let license = b"GPL\0";
        let mut log = vec![0u8; 64 * 1024];
        let mut a = Attr::new()
            .u32(0, BPF_PROG_TYPE_SK_SKB)
            .u32(4, prog.len() as u32)
            .u64(8, prog.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64)
            .u32(24, 1)
            .u32(28, log.len() as u32)
            .u64(32, log.as_mut_ptr() as u64)
            .u32(68, BPF_SK_SKB_VERDICT); // expected_attach_type
        let prog = bpf(BPF_PROG_LOAD, &mut a, "prog_load (sk_skb verdict)").map_err(|e| {
            let end = log.iter().position(|&b| b == 0).unwrap_or(0);
            io::Error::new(
                e.kind(),
                format!("{e}: {}", String::from_utf8_lossy(&log[..end])),
            )
        })?;
        let mut a = Attr::new()
            .u32(0, map as u32)
            .u32(4, prog as u32)
            .u32(8, BPF_SK_SKB_VERDICT);
        bpf(
            BPF_PROG_ATTACH,
            &mut a,
            "prog_attach (sk_skb verdict to the sockhash)",
        )?;
        Ok(Peers { map })
    }

    /// Inserts a tunnel: each socket under the other's cookie.
    pub fn insert(&self, a: RawFd, b: RawFd) -> io::Result<()> {
        let (ca, cb) = (cookie(a)?, cookie(b)?);
        for (key, fd) in [(ca, b), (cb, a)] {
            let value = fd as u32;
            let mut attr = Attr::new()
                .u32(0, self.map as u32)
                .u64(8, &key as *const u64 as u64)
                .u64(16, &value as *const u32 as u64);
            bpf(BPF_MAP_UPDATE_ELEM, &mut attr, "map_update_elem (sockhash)")?;
        }
        Ok(())
    }
}

fn cookie(fd: RawFd) -> io::Result<u64> {
    let mut c: u64 = 0;
    let mut len = 8 as libc::socklen_t;
    // SAFETY: getsockopt(SO_COOKIE) into a u64 on the stack, with its length.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut c as *mut u64).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(c)
}
