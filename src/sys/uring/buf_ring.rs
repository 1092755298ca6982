//! The ring of provided buffers that receives fill, shared by every connection of one worker.

use super::*;

/// A buffer's state, in one `Cell<u16>`: the kernel owns it, or the application does (with
/// the count of sends in flight from it and whether it goes back once they are done).
const KERNEL: u16 = 0x8000;
const RETURNING: u16 = 0x4000;
const SENDS: u16 = 0x3fff;

/// A ring of provided buffers (`IORING_REGISTER_PBUF_RING`): receives take a buffer only when
/// bytes arrive, so an idle connection's pending receive holds none. Shared by every
/// connection of one worker; its memory is allocated once and never freed (see the module
/// docs).
pub struct BufRing {
    /// The ring of `count` buffer descriptors the kernel reads (page aligned).
    entries: *mut types::BufRingEntry,
    /// `count` buffers of `size` bytes.
    bufs: *mut u8,
    count: u16,
    size: u32,
    group: u16,
    /// Our tail: descriptors published so far.
    tail: Cell<u16>,
    state: Box<[Cell<u16>]>,
    /// Buffers given back during the current call, published by [`BufRing::flush`].
    returned: RefCell<Vec<u16>>,
    /// Receives that found no free buffer (ENOBUFS).
    pub exhausted: Cell<u64>,
}

impl BufRing {
    /// `count` (a power of two, at most 32768) buffers of `size` bytes, registered with
    /// `ring` as buffer group `group`.
    pub fn new(ring: &Ring, group: u16, count: u16, size: u32) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 32768 || size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the buffer count must be a power of two up to 32768, the size above 0",
            ));
        }
        let page = 4096;
        let ring_layout = Layout::from_size_align(
            count as usize * std::mem::size_of::<types::BufRingEntry>(),
            page,
        )
        .map_err(io::Error::other)?;
        let bufs_layout = Layout::from_size_align(count as usize * size as usize, page)
            .map_err(io::Error::other)?;
        // SAFETY: both layouts have a non-zero size (count ≥ 1, size ≥ 1). The memory is never
        // freed: the kernel may write into the buffers until the ring's teardown is over.
        let (entries, bufs) = unsafe {
            (
                alloc_zeroed(ring_layout).cast::<types::BufRingEntry>(),
                alloc_zeroed(bufs_layout),
            )
        };
        if entries.is_null() || bufs.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        // SAFETY: `entries` holds `count` descriptors, page aligned, valid forever (leaked).
        unsafe {
            ring.ring
                .submitter()
                .register_buf_ring_with_flags(entries as u64, count, group, 0)?;
        }
        let b = BufRing {
            entries,
            bufs,
            count,
            size,
            group,
            tail: Cell::new(0),
            state: (0..count).map(|_| Cell::new(KERNEL)).collect(),
            returned: RefCell::new(Vec::new()),
            exhausted: Cell::new(0),
        };
        for id in 0..count {
            b.publish(id);
        }
        b.commit();
        Ok(b)
    }

    pub fn group(&self) -> u16 {
        self.group
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    pub fn count(&self) -> u16 {
        self.count
    }

    /// Writes buffer `id`'s descriptor at the tail (published by [`BufRing::commit`]).
    fn publish(&self, id: u16) {
        let tail = self.tail.get();
        let slot = (tail & (self.count - 1)) as usize;
        // SAFETY: `slot` < `count`, inside the descriptor ring; the kernel reads descriptors
        // only up to the published tail, and this one is past it until `commit`.
        let e = unsafe { &mut *self.entries.add(slot) };
        // SAFETY: `id` < `count`: the offset stays inside the buffer allocation.
        e.set_addr(unsafe { self.bufs.add(id as usize * self.size as usize) } as u64);
        e.set_len(self.size);
        e.set_bid(id);
        self.tail.set(tail.wrapping_add(1));
    }

    /// Makes the descriptors written since the last commit visible to the kernel.
    fn commit(&self) {
        // SAFETY: the tail field overlays the first descriptor's reserved field, which the
        // kernel reads atomically; `entries` is valid and aligned for u16.
        let tail = unsafe { &*(types::BufRingEntry::tail(self.entries).cast::<AtomicU16>()) };
        tail.store(self.tail.get(), Ordering::Release);
    }

    /// A completion reported buffer `id` filled: it is the application's now. False for an id
    /// the kernel did not own (a bug: the buffer is left alone).
    pub fn taken(&self, id: u16) -> bool {
        match self.state.get(id as usize) {
            Some(s) if s.get() == KERNEL => {
                s.set(0);
                true
            }
            _ => false,
        }
    }

    /// The first `len` bytes of buffer `id`, which must be the application's.
    pub fn bytes(&self, id: u16, len: usize) -> Option<&[u8]> {
        let s = self.state.get(id as usize)?;
        if s.get() & KERNEL != 0 || len > self.size as usize {
            return None;
        }
        // SAFETY: buffer `id` is the application's: not in the kernel's ring, so the kernel
        // does not write it. It goes back only through `flush`, which the caller must not run
        // while this slice lives (`give_back` only queues it).
        Some(unsafe {
            std::slice::from_raw_parts(self.bufs.add(id as usize * self.size as usize), len)
        })
    }

    /// Starts a send from buffer `id`: the address of `len` bytes at `from`.
    pub(super) fn begin_send(&self, id: u16, from: u32, len: u32) -> Option<*const u8> {
        let s = self.state.get(id as usize)?;
        let v = s.get();
        if v & KERNEL != 0 || v & SENDS == SENDS || from.checked_add(len)? > self.size {
            return None;
        }
        s.set(v + 1);
        // SAFETY: `id` < `count` and `from + len` ≤ `size`: inside the allocation.
        Some(unsafe {
            self.bufs
                .add(id as usize * self.size as usize + from as usize)
        })
    }

    /// A send from buffer `id` completed.
    pub fn end_send(&self, id: u16) {
        let Some(s) = self.state.get(id as usize) else {
            return;
        };
        let v = s.get();
        if v & KERNEL != 0 || v & SENDS == 0 {
            return;
        }
        let v = v - 1;
        s.set(v);
        if v == RETURNING {
            self.returned.borrow_mut().push(id);
        }
    }

    /// The application is done with buffer `id`: it goes back to the kernel at the next
    /// [`BufRing::flush`], or once the sends from it are over.
    pub fn give_back(&self, id: u16) {
        let Some(s) = self.state.get(id as usize) else {
            return;
        };
        let v = s.get();
        if v & (KERNEL | RETURNING) != 0 {
            return;
        }
        if v & SENDS == 0 {
            s.set(RETURNING);
            self.returned.borrow_mut().push(id);
        } else {
            s.set(v | RETURNING);
        }
    }

    /// Gives the buffers given back since the last flush to the kernel; returns how many.
    /// Call between completions, never while a slice from [`BufRing::bytes`] lives.
    pub fn flush(&self) -> usize {
        let mut returned = self.returned.borrow_mut();
        if returned.is_empty() {
            return 0;
        }
        let mut n = 0;
        for id in returned.drain(..) {
            if let Some(s) = self.state.get(id as usize) {
                if s.get() == RETURNING {
                    s.set(KERNEL);
                    self.publish(id);
                    n += 1;
                }
            }
        }
        self.commit();
        n
    }

    /// Buffers the application holds now (taken and not yet back with the kernel).
    pub fn in_use(&self) -> usize {
        self.state.iter().filter(|s| s.get() & KERNEL == 0).count()
    }
}
