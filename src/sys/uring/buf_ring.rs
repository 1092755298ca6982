//! The ring of provided buffers that receives fill, shared by every connection of one worker.

use super::*;

/// A buffer's state. `kernel`: it is in the kernel's ring (with incremental consumption the
/// kernel may still fill its rest while the application holds the start). `holds`: arrivals in
/// it the application has not given back; `sends`: sends from it in flight; `at`: where the
/// kernel's next arrival in it starts.
#[derive(Debug, Clone, Copy, Default)]
struct State {
    kernel: bool,
    queued: bool,
    holds: u16,
    sends: u16,
    at: u32,
}

/// A ring of provided buffers (`IORING_REGISTER_PBUF_RING`): receives take a buffer only when
/// bytes arrive, so an idle connection's pending receive holds none. Shared by every
/// connection of one worker; its memory is allocated once and never freed (see the module
/// docs). Where the kernel has it (6.12), the ring is consumed incrementally
/// (`IOU_PBUF_RING_INC`): an arrival takes only the bytes it needs, and the next arrival (of
/// any connection) continues in the same buffer, so small messages do not take a buffer each.
pub struct BufRing {
    /// The ring of `count` buffer descriptors the kernel reads (page aligned).
    entries: *mut types::BufRingEntry,
    /// `count` buffers of `size` bytes.
    bufs: *mut u8,
    count: u16,
    size: u32,
    group: u16,
    incremental: bool,
    /// Our tail: descriptors published so far.
    tail: Cell<u16>,
    state: Box<[Cell<State>]>,
    /// Buffers the application is done with, published by [`BufRing::flush`].
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
        // Incremental consumption where the kernel has it (EINVAL before 6.12: plain buffers).
        let mut incremental = true;
        for flags in [types::IOU_PBUF_RING_INC as u16, 0] {
            // SAFETY: `entries` holds `count` descriptors, page aligned, valid forever (leaked).
            let r = unsafe {
                ring.ring.submitter().register_buf_ring_with_flags(
                    entries as u64,
                    count,
                    group,
                    flags,
                )
            };
            match r {
                Ok(()) => break,
                Err(e) if flags != 0 && e.raw_os_error() == Some(libc::EINVAL) => {
                    incremental = false
                }
                Err(e) => return Err(e),
            }
        }
        let kernel = State {
            kernel: true,
            ..State::default()
        };
        let b = BufRing {
            entries,
            bufs,
            count,
            size,
            group,
            incremental,
            tail: Cell::new(0),
            state: (0..count).map(|_| Cell::new(kernel)).collect(),
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

    /// True when the kernel consumes the ring incrementally (`IOU_PBUF_RING_INC`).
    pub fn incremental(&self) -> bool {
        self.incremental
    }

    /// A completion reported `n` bytes in buffer `id`; `more`: the kernel keeps filling the
    /// buffer (`IORING_CQE_F_BUF_MORE`). Returns where the bytes start; the application holds
    /// them until [`BufRing::give_back`]. None for a buffer the kernel did not own (a bug: it
    /// is left alone).
    pub fn arrived(&self, id: u16, n: u32, more: bool) -> Option<u32> {
        let cell = self.state.get(id as usize)?;
        let mut s = cell.get();
        if !s.kernel || s.holds == u16::MAX {
            return None;
        }
        let at = s.at;
        s.at = s.at.saturating_add(n).min(self.size);
        s.holds += 1;
        s.kernel = more && self.incremental;
        cell.set(s);
        Some(at)
    }

    /// `len` bytes at `at` of buffer `id`, which the application must hold.
    pub fn bytes(&self, id: u16, at: u32, len: usize) -> Option<&[u8]> {
        let s = self.state.get(id as usize)?.get();
        let end = (at as usize).checked_add(len)?;
        if s.holds == 0 || end > s.at as usize {
            return None;
        }
        // SAFETY: bytes `at..end` of buffer `id` were filled by an arrival the application
        // holds: the kernel writes only past `s.at` (incremental) or not at all until the
        // buffer is published again, which `flush` does only once nothing holds it.
        Some(unsafe {
            std::slice::from_raw_parts(
                self.bufs
                    .add(id as usize * self.size as usize + at as usize),
                len,
            )
        })
    }

    /// Starts a send from buffer `id`: the address of `len` bytes at `from`.
    pub(super) fn begin_send(&self, id: u16, from: u32, len: u32) -> Option<*const u8> {
        let cell = self.state.get(id as usize)?;
        let mut s = cell.get();
        if s.holds == 0 || s.sends == u16::MAX || from.checked_add(len)? > s.at {
            return None;
        }
        s.sends += 1;
        cell.set(s);
        // SAFETY: `id` < `count` and `from + len` ≤ `at` ≤ `size`: inside the allocation.
        Some(unsafe {
            self.bufs
                .add(id as usize * self.size as usize + from as usize)
        })
    }

    /// A send from buffer `id` completed.
    pub fn end_send(&self, id: u16) {
        self.release(id, |s| &mut s.sends);
    }

    /// The application is done with one arrival in buffer `id`: the buffer goes back to the
    /// kernel at the next [`BufRing::flush`] once nothing holds it, no send from it is in
    /// flight and the kernel is done filling it.
    pub fn give_back(&self, id: u16) {
        self.release(id, |s| &mut s.holds);
    }

    /// One use of buffer `id` counted in `count` (a hold or a send) is over; a count already
    /// at zero (a stray or repeated release) stays there.
    fn release(&self, id: u16, count: impl FnOnce(&mut State) -> &mut u16) {
        let Some(cell) = self.state.get(id as usize) else {
            return;
        };
        let mut s = cell.get();
        let n = count(&mut s);
        if *n == 0 {
            return;
        }
        *n -= 1;
        cell.set(s);
        self.maybe_return(id);
    }

    fn maybe_return(&self, id: u16) {
        let Some(cell) = self.state.get(id as usize) else {
            return;
        };
        let mut s = cell.get();
        if !s.kernel && !s.queued && s.holds == 0 && s.sends == 0 {
            s.queued = true;
            cell.set(s);
            self.returned.borrow_mut().push(id);
        }
    }

    /// Gives the buffers the application is done with to the kernel; returns how many.
    /// Call between completions, never while a slice from [`BufRing::bytes`] lives.
    pub fn flush(&self) -> usize {
        let mut returned = self.returned.borrow_mut();
        if returned.is_empty() {
            return 0;
        }
        let mut n = 0;
        for id in returned.drain(..) {
            let Some(cell) = self.state.get(id as usize) else {
                continue;
            };
            let s = cell.get();
            if s.queued && !s.kernel && s.holds == 0 && s.sends == 0 {
                cell.set(State {
                    kernel: true,
                    ..State::default()
                });
                self.publish(id);
                n += 1;
            }
        }
        self.commit();
        n
    }

    /// Buffers the application uses now (out of the kernel's ring, holding arrivals, or being
    /// sent from).
    pub fn in_use(&self) -> usize {
        self.state
            .iter()
            .filter(|s| {
                let s = s.get();
                !s.kernel || s.holds > 0 || s.sends > 0
            })
            .count()
    }
}
