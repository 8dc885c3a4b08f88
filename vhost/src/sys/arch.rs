//! CPU-specific hints for the datapath: cache prefetches.

/// Whether this CPU has PREFETCHW (CPUID 0x8000_0001 ECX bit 8, "3DNowPrefetch").
#[cfg(target_arch = "x86_64")]
fn has_prefetchw() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        use std::arch::x86_64::__cpuid;
        __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0
    })
}

/// Asks the CPU to bring the cache line at `p` close, for writing: a guest's receive buffer
/// is usually in the guest's CPU cache (its driver just read the last frame there), and
/// fetching all of a burst's buffers at once overlaps those misses instead of paying them
/// one frame at a time.
#[inline]
pub fn prefetch_write(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_prefetchw() {
            // SAFETY: a prefetch is only a hint: it reads and writes nothing architecturally
            // and never faults, whatever the address; the CPU supports the instruction.
            unsafe { std::arch::asm!("prefetchw [{}]", in(reg) p, options(nostack, preserves_flags, readonly)) }
        } else {
            // SAFETY: as above; SSE (and so PREFETCHT0) is part of the x86_64 baseline.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast()) }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Asks the CPU to bring the cache line at `p` close, for reading.
#[inline]
pub fn prefetch_read(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults, whatever the address; SSE (and so
    // PREFETCHT0) is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
