//! The few places the program reaches memory the compiler cannot check: header fields in the
//! frame, hash-map values, this CPU's per-CPU slots, and the kernel helpers it calls. Each
//! carries its safety argument once, here; the rest of the program is safe code.

use crate::parse::ParseError;
use aya_ebpf::{
    helpers::{bpf_ktime_get_coarse_ns, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use core::borrow::Borrow;

/// Reads a field of a header that [`crate::parse::ptr_at`] returned: `get!(ip.tot_len)`.
///
/// Safety of every use: `ptr_at` proved that the whole header lies inside the frame (the
/// verifier proves it again), and no helper that moves the frame ([`adjust_head`],
/// [`adjust_tail`]) ran between taking the pointer and using it: callers take pointers anew
/// after one. Headers may sit at unaligned offsets; BPF loads and stores allow that.
macro_rules! get {
    ($ptr:ident . $($field:tt).+) => {
        // SAFETY: see the documentation of `get!` in access.rs.
        unsafe { (*$ptr).$($field).+ }
    };
}

/// Writes a field (`set!(eth.src = mac)`) or a whole header (`set!(ip = header)`) through a
/// pointer [`crate::parse::ptr_at`] returned; safe for the reasons [`get!`] gives.
macro_rules! set {
    ($ptr:ident . $($field:tt).+ = $value:expr) => {
        // SAFETY: see the documentation of `get!` in access.rs.
        unsafe { (*$ptr).$($field).+ = $value }
    };
    ($ptr:ident = $value:expr) => {
        // SAFETY: see the documentation of `get!` in access.rs.
        unsafe { *$ptr = $value }
    };
}

/// Looks `key` up in a hash map and copies the value out.
#[inline(always)]
pub fn lookup<K, V: Copy>(map: &HashMap<K, V>, key: impl Borrow<K>) -> Option<V> {
    // SAFETY: the value is copied at once, so no reference to it outlives an update or delete
    // the control plane may make concurrently.
    unsafe { map.get(key) }.copied()
}

/// [`lookup`] in an LRU hash map (the connection tables).
#[inline(always)]
pub fn lookup_lru<K, V: Copy>(map: &LruHashMap<K, V>, key: impl Borrow<K>) -> Option<V> {
    // SAFETY: as in `lookup`: the value is copied at once.
    unsafe { map.get(key) }.copied()
}

/// This CPU's slot `index` of a per-CPU array, to read and update in place.
#[inline(always)]
pub fn per_cpu<T>(map: &PerCpuArray<T>, index: u32) -> Option<&mut T> {
    let slot = map.get_ptr_mut(index)?;
    // SAFETY: the slot belongs to this CPU and an XDP program runs to completion without
    // migrating or being preempted by another XDP run on it, so no other reference to the slot
    // exists while this one is used; the kernel keeps the map alive while the program is.
    Some(unsafe { &mut *slot })
}

/// Moves the start of the frame by `delta` bytes (negative: grows the head).
#[inline(always)]
pub fn adjust_head(ctx: &XdpContext, delta: i32) -> Result<(), ParseError> {
    // SAFETY: the helper takes the program's own context and checks `delta` against the
    // headroom and the frame length itself; it fails without changing the frame.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, delta) } != 0 {
        return Err(ParseError::HelperFailed);
    }
    Ok(())
}

/// Moves the end of the frame by `delta` bytes (positive: grows the tail).
#[inline(always)]
pub fn adjust_tail(ctx: &XdpContext, delta: i32) -> Result<(), ParseError> {
    // SAFETY: as for `adjust_head`: the helper checks `delta` itself.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return Err(ParseError::HelperFailed);
    }
    Ok(())
}

/// The coarse monotonic clock, ns (one jiffy of resolution, a fraction of the cost).
#[inline(always)]
pub fn coarse_now_ns() -> u64 {
    // SAFETY: the helper takes no arguments and only reads the clock.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Reads N 16-bit words of the frame at a pointer [`crate::parse::ptr_at`] returned. Volatile
/// word accesses keep the compiler from turning a copy into a memmove call the verifier cannot
/// follow.
#[inline(always)]
pub fn read_words<const N: usize>(src: *const [u16; N]) -> [u16; N] {
    let src = src as *const u16;
    let mut words = [0u16; N];
    let mut i = 0;
    while i < N {
        // SAFETY: `ptr_at` checked that all N words lie inside the frame (see `get!`).
        words[i] = unsafe { core::ptr::read_volatile(src.add(i)) };
        i += 1;
    }
    words
}

/// Writes N 16-bit words to the frame (see [`read_words`]).
#[inline(always)]
pub fn write_words<const N: usize>(dst: *mut [u16; N], words: &[u16; N]) {
    let dst = dst as *mut u16;
    let mut i = 0;
    while i < N {
        // SAFETY: `ptr_at` checked that all N words lie inside the frame (see `get!`).
        unsafe { core::ptr::write_volatile(dst.add(i), words[i]) };
        i += 1;
    }
}
