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

/// One hint per 64-byte line of the `bytes` at `p`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn lines<const HINT: i32>(p: *const i8, bytes: usize) {
    for line in (0..bytes).step_by(64) {
        // SAFETY: a prefetch is a hint (above).
        unsafe { std::arch::x86_64::_mm_prefetch::<HINT>(p.wrapping_add(line)) };
    }
}
