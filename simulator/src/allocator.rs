//! The allocator of OneCard's programs: mimalloc, with freed memory kept.
//!
//! Both `onecard` and `onecard-sim` declare `mimalloc::MiMalloc` as their global allocator
//! (allocation is a large share of the engine's CPU: glibc's malloc made a lifecycle cost 140 µs
//! of CPU instead of 82, BENCHMARKS.md) and call [`tune`] first thing in `main`.
//!
//! mimalloc gives freed pages back to the kernel after `purge_delay` (1 s in v3). The engine
//! frees on other threads than it allocates (entries, view writes and answers cross from the
//! actors to the log writer and back), so pages were purged and faulted in again all the time:
//! keeping them (`purge_delay = -1`) cut the CPU per lifecycle from 82 to 72 µs at 100,000
//! consumers, for about 60 MB more resident memory.

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (include/mimalloc.h), which
/// libmimalloc-sys 0.1.49 does not name.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Applies OneCard's mimalloc options. Call it at the start of `main`, before the threads.
/// An operator's `MIMALLOC_PURGE_DELAY` in the environment wins.
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: mi_option_set only stores an option value; any option and value are accepted.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// Gives the memory freed so far back to the kernel, and purges promptly from now on: for the
/// end of a run, once the engine has closed, so that the checks' replay of the whole journal
/// does not come on top of the pages the engine kept for reuse.
pub fn release_freed() {
    // SAFETY: setting an option only stores its value; mi_collect may be called at any time
    // from any thread.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        libmimalloc_sys::mi_collect(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option number is mimalloc's purge delay: its v3 default is 1000 ms (unless the
    /// environment sets it), and `tune` turns purging off.
    #[test]
    fn the_option_tuned_is_mimallocs_purge_delay() {
        // SAFETY: reading and setting options has no preconditions.
        let before = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(before, 1000, "mimalloc v3's default purge delay");
        }
        tune();
        let after = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(after, -1);
        }
    }
}
