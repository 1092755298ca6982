//! Memory shared between the supervisor and its worker processes: a sealed memfd mapped
//! `MAP_SHARED`, seen as a run of `AtomicU64` words.
//!
//! Nothing but atomics ever touches the mapping, in any process, so there is no data race to
//! reason about: the layout (which word means what) lives in `driver::shared`.

use nix::fcntl::{fallocate, fcntl, FallocateFlags, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use std::ffi::c_void;
use std::io;
use std::num::NonZeroUsize;
use std::ops::Deref;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const WORD: usize = std::mem::size_of::<u64>();
const PAGE_WORDS: usize = 4096 / WORD;

/// A shared, fixed-size mapping of `AtomicU64` words backed by a memfd.
pub struct SharedMap {
    ptr: NonNull<c_void>,
    words: usize,
    fd: OwnedFd,
}

// SAFETY: the mapping is plain memory owned by this value until Drop; every access goes through
// `&[AtomicU64]`, which is Sync, so sharing or sending the owner across threads is sound.
unsafe impl Send for SharedMap {}
// SAFETY: as above: shared access is only ever atomic.
unsafe impl Sync for SharedMap {}

impl std::fmt::Debug for SharedMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedMap({} words)", self.words)
    }
}

impl SharedMap {
    /// A new zero-filled mapping of `words` words. Its size is sealed: no process holding the
    /// memfd can shrink it under another's mapping (which would turn reads into SIGBUS).
    pub fn create(name: &str, words: usize) -> io::Result<SharedMap> {
        let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
        let bytes = words
            .checked_mul(WORD)
            .and_then(|b| libc::off_t::try_from(b).ok())
            .ok_or_else(|| io::Error::other("shared memory size overflows"))?;
        nix::unistd::ftruncate(&fd, bytes)?;
        fcntl(
            &fd,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
            ),
        )?;
        SharedMap::map(fd)
    }

    /// Maps a memfd received from the supervisor; its size is what it was created with.
    pub fn attach(fd: OwnedFd) -> io::Result<SharedMap> {
        SharedMap::map(fd)
    }

    fn map(fd: OwnedFd) -> io::Result<SharedMap> {
        let size = usize::try_from(nix::sys::stat::fstat(&fd)?.st_size)
            .map_err(|_| io::Error::other("negative shared memory size"))?;
        let words = size / WORD;
        let len = NonZeroUsize::new(words * WORD)
            .ok_or_else(|| io::Error::other("empty shared memory"))?;
        // SAFETY: a fresh mapping at an address the kernel picks (no existing memory is
        // replaced); the fd is a memfd whose size is sealed, so the whole length stays backed.
        let ptr = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &fd,
                0,
            )?
        };
        Ok(SharedMap { ptr, words, fd })
    }

    /// The memfd, to pass to a worker process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The whole mapping.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: `ptr` is a page-aligned (so 8-aligned) mapping of `words * 8` bytes that lives
        // until Drop, which needs `&mut self`; the memfd started zero-filled and every bit
        // pattern is a valid u64; AtomicU64 has u64's size and alignment; all access, in this
        // and every other process, is atomic.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr() as *const AtomicU64, self.words) }
    }

    /// Zeroes `len` words from `start`, giving whole pages back to the kernel (a hole reads as
    /// zeros in every process that maps it).
    pub fn zero(&self, start: usize, len: usize) {
        let end = (start + len).min(self.words);
        let first_page = start.div_ceil(PAGE_WORDS) * PAGE_WORDS;
        let last_page = end / PAGE_WORDS * PAGE_WORDS;
        // off_t is 32 bits on 32-bit glibc: a range it cannot name is zeroed word by word.
        let range = libc::off_t::try_from(first_page * WORD)
            .ok()
            .zip(libc::off_t::try_from((last_page - first_page) * WORD).ok());
        let punched = first_page < last_page
            && range.is_some_and(|(offset, len)| {
                fallocate(
                    &self.fd,
                    FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                    offset,
                    len,
                )
                .is_ok()
            });
        let words = self.words();
        if punched {
            for w in &words[start..first_page] {
                w.store(0, Ordering::Relaxed);
            }
            for w in &words[last_page..end] {
                w.store(0, Ordering::Relaxed);
            }
        } else {
            for w in &words[start..end] {
                w.store(0, Ordering::Relaxed);
            }
        }
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`words` are exactly what mmap returned; no reference into the mapping
        // outlives `self` (slices borrow `self`, `Cells` hold an `Arc<SharedMap>`).
        let _ = unsafe { munmap(self.ptr, self.words * WORD) };
    }
}

/// A run of atomic words, either this process's own heap or a window of a [`SharedMap`]: what
/// a worker publishes its counters into, whichever process reads them.
pub struct Cells(CellsInner);

enum CellsInner {
    Heap(Box<[AtomicU64]>),
    Mapped {
        map: Arc<SharedMap>,
        start: usize,
        len: usize,
    },
}

impl Cells {
    /// `len` zeroed words on the heap.
    pub fn heap(len: usize) -> Cells {
        Cells(CellsInner::Heap(
            (0..len).map(|_| AtomicU64::new(0)).collect(),
        ))
    }

    /// Words `start..start + len` of `map`; `None` if they are not all inside it.
    pub fn mapped(map: Arc<SharedMap>, start: usize, len: usize) -> Option<Cells> {
        (start.checked_add(len)? <= map.words).then_some(Cells(CellsInner::Mapped {
            map,
            start,
            len,
        }))
    }
}

impl Deref for Cells {
    type Target = [AtomicU64];

    fn deref(&self) -> &[AtomicU64] {
        match &self.0 {
            CellsInner::Heap(b) => b,
            CellsInner::Mapped { map, start, len } => &map.words()[*start..*start + *len],
        }
    }
}

impl std::fmt::Debug for Cells {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            CellsInner::Heap(b) => write!(f, "Cells(heap, {} words)", b.len()),
            CellsInner::Mapped { start, len, .. } => {
                write!(f, "Cells(shared, words {start}..{})", start + len)
            }
        }
    }
}

/// A sealed, read-only-by-contract memfd holding `bytes` (a configuration text handed to a
/// worker process: every worker parses exactly the bytes the supervisor validated).
pub fn sealed_bytes(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    let fd = memfd_create(name, MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING)?;
    let file = std::fs::File::from(fd);
    file.write_all_at(bytes, 0)?;
    let fd = OwnedFd::from(file);
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(fd)
}

/// Reads a whole memfd made by [`sealed_bytes`] (from offset 0, whatever the shared offset).
pub fn read_all(fd: OwnedFd) -> io::Result<Vec<u8>> {
    let file = std::fs::File::from(fd);
    let len = file.metadata()?.len() as usize;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_mappings_of_one_memfd_see_each_other() {
        let a = Arc::new(SharedMap::create("wsplice-test", 3000).expect("create"));
        let dup = a.fd().try_clone_to_owned().expect("dup");
        let b = SharedMap::attach(dup).expect("attach");
        assert_eq!(b.words().len(), 3000);
        a.words()[2999].store(7, Ordering::Relaxed);
        assert_eq!(b.words()[2999].load(Ordering::Relaxed), 7);
        let cells = Cells::mapped(a.clone(), 10, 5).expect("inside");
        cells[4].store(9, Ordering::Relaxed);
        assert_eq!(b.words()[14].load(Ordering::Relaxed), 9);
        assert!(Cells::mapped(a.clone(), 2999, 2).is_none());
        for w in b.words() {
            w.store(1, Ordering::Relaxed);
        }
        a.zero(3, 2990);
        assert_eq!(b.words()[2].load(Ordering::Relaxed), 1);
        assert!(b.words()[3..2993]
            .iter()
            .all(|w| w.load(Ordering::Relaxed) == 0));
        assert_eq!(b.words()[2993].load(Ordering::Relaxed), 1);
    }

    #[test]
    fn sealed_bytes_read_back_and_refuse_writes() {
        let fd = sealed_bytes("wsplice-test-text", b"listen = []\n").expect("memfd");
        let dup = fd.try_clone().expect("dup");
        assert!(std::fs::File::from(dup).write_all_at(b"x", 0).is_err());
        assert_eq!(read_all(fd).expect("read"), b"listen = []\n");
    }
}
