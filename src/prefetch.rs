//! Cache hints: ask the CPU to start loading memory the request will touch soon, so the miss
//! overlaps other work instead of stalling it. A hint never faults and changes nothing
//! observable, whatever the address.

/// Starts loading the `bytes` at `p` for reading.
pub fn read<T>(p: *const T, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    lines::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast(), bytes);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

/// Starts loading the `bytes` at `p` to be written, so the stores find their lines in the
/// cache and a later atomic does not wait for them to arrive. `prefetchw` when built for a CPU
/// that has it (`-C target-feature=+prfchw`), `prefetcht0` otherwise.
pub fn write<T>(p: *const T, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    lines::<{ std::arch::x86_64::_MM_HINT_ET0 }>(p.cast(), bytes);
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

/// One hint per 64-byte line that the `bytes` at `p` touch: an unaligned range of n lines
/// worth of bytes spans n + 1 of them.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lines<const HINT: i32>(p: *const i8, bytes: usize) {
    let first = p.wrapping_sub(p as usize % 64);
    let span = (p as usize % 64 + bytes).div_ceil(64);
    for line in 0..span {
        // SAFETY: a prefetch is a hint (above).
        unsafe { std::arch::x86_64::_mm_prefetch::<HINT>(first.wrapping_add(line * 64)) };
    }
}
