//! glibc's malloc for a process whose sessions come and go by the thousand.
//!
//! glibc keeps, per thread, a cache of freed small blocks (the tcache: up to 7 blocks of
//! each of its 64 sizes up to 1 KiB), and `malloc_trim` never empties it: to the allocator
//! those blocks are in use. When thousands of sessions end, a worker thread's cache fills
//! with blocks from all over the heap they freed, each keeping its 4 KiB page resident.
//! Measured (issue 9; `scripts/perf-bench --cases mem`: 9850 sessions opened, a burst on
//! each, all closed): walking the two worker arenas after the close found 190 to 230
//! cached blocks in each (about 90 KB) spread over the whole 13 MB heap, and 290 to 370
//! pages held by nothing else: 1.2 to 1.5 MB, most of what never came back (RSS 1.11 to
//! 1.15× of before). With the cache off: 1.01 to 1.03×, and the same 2.66 KiB per idle
//! session.
//!
//! The cache can only be turned off by the `glibc.malloc.tcache_count` tunable, which glibc
//! reads from the environment when a program starts: `pgfront run` starts itself again
//! (same process id, arguments and descriptors) with it added to `GLIBC_TUNABLES`, unless
//! the operator set a `tcache_count` there already. The cost: the 14 small allocations of
//! a new connection take the arena's path (one arena per worker thread, uncontended)
//! instead of the cache's, about 0.5 µs per connection in all; the data path allocates
//! nothing per chunk.

use std::ffi::{OsStr, OsString};

/// The glibc tunable that sizes the per-thread cache.
pub const TCACHE_COUNT: &str = "glibc.malloc.tcache_count";

/// Set for the second start, so that pgfront never starts itself again in a loop (should a
/// glibc drop the tunable from the environment); removed as soon as it is seen.
const RESTARTED: &str = "PGFRONT_MALLOC_RESTARTED";

/// The `GLIBC_TUNABLES` to start again with, given the current one: the per-thread cache
/// off, other tunables kept. None when the operator already chose a `tcache_count` (it is
/// kept as set) or the value is not text.
pub fn tunables_without_tcache(current: Option<&OsStr>) -> Option<OsString> {
    let off = format!("{TCACHE_COUNT}=0");
    let Some(current) = current.filter(|c| !c.is_empty()) else {
        return Some(off.into());
    };
    let current = current.to_str()?;
    let named = |t: &str| t.split_once('=').map_or(t, |(name, _)| name) == TCACHE_COUNT;
    if current.split(':').any(named) {
        return None;
    }
    Some(format!("{current}:{off}").into())
}

/// Starts this program again with glibc's per-thread cache off (see the module). Returns
/// only if it did not: the cache is off already or the operator chose its size, this is
/// the second start, a set-user-id start (glibc ignores the tunable then), not glibc; or
/// the error of the exec. Call it first thing, before any thread or socket exists.
pub fn restart_without_tcache() -> Option<std::io::Error> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os(RESTARTED).is_some() {
            // Single-threaded still: nothing reads the environment concurrently.
            std::env::remove_var(RESTARTED);
            return None;
        }
        // SAFETY: getauxval only reads the auxiliary vector the kernel gave the process.
        if unsafe { libc::getauxval(libc::AT_SECURE) } != 0 {
            return None;
        }
        let tunables = tunables_without_tcache(std::env::var_os("GLIBC_TUNABLES").as_deref())?;
        let mut args = std::env::args_os();
        let argv0 = args.next()?;
        // The program's file by its path (exec'ing /proc/self/exe would name the process
        // "exe" for ps, pgrep and the journal); a file an upgrade deleted meanwhile fails.
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => return Some(e),
        };
        let error = std::process::Command::new(exe)
            .arg0(argv0)
            .args(args)
            .env("GLIBC_TUNABLES", tunables)
            .env(RESTARTED, "1")
            .exec();
        Some(error)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(current: Option<&str>) -> Option<String> {
        tunables_without_tcache(current.map(OsStr::new)).map(|v| v.into_string().unwrap())
    }

    #[test]
    fn the_cache_is_turned_off_and_other_tunables_kept() {
        assert_eq!(with(None).as_deref(), Some("glibc.malloc.tcache_count=0"));
        assert_eq!(with(Some("")).as_deref(), Some("glibc.malloc.tcache_count=0"));
        assert_eq!(
            with(Some("glibc.malloc.arena_max=2")).as_deref(),
            Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0")
        );
        assert_eq!(
            with(Some("glibc.malloc.tcache_count_x=1")).as_deref(),
            Some("glibc.malloc.tcache_count_x=1:glibc.malloc.tcache_count=0"),
            "only that exact name is the operator's choice"
        );
    }

    #[test]
    fn an_operators_own_cache_size_is_kept() {
        assert_eq!(with(Some("glibc.malloc.tcache_count=7")), None);
        assert_eq!(with(Some("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=3")), None);
    }
}
