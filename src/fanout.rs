//! Work split over a few threads that degrades to the calling thread.
//!
//! Listing and `check` are system-call bound and run on all cores. A socket-mode server runs many
//! sessions in one process, and a thread limit (`ulimit -u`, a cgroup's `pids.max`) can refuse a
//! new thread at any time; `std::thread::scope`'s `spawn` panics then, ending the session. Here a
//! part whose thread cannot be started is worked on the calling thread instead: slower, never
//! failed.

/// The most threads a split uses (the machine's parallelism, at most 8).
pub fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).clamp(1, 8)
}

/// Splits `items` into at most `threads` parts and runs `work` on each, each part on a thread of
/// its own where one can be started, on this thread where not; results in the parts' order. A
/// part whose thread panicked gives `panicked()`.
pub fn split<I: Sync, R: Send>(items: &[I], threads: usize, work: impl Fn(&[I]) -> R + Sync, panicked: impl Fn() -> R) -> Vec<R> {
    split_with(items, threads, work, panicked, std::thread::Builder::new)
}

/// [`split`] with the threads built by `builder` (tests: one that cannot start any).
fn split_with<I: Sync, R: Send>(
    items: &[I],
    threads: usize,
    work: impl Fn(&[I]) -> R + Sync,
    panicked: impl Fn() -> R,
    builder: impl Fn() -> std::thread::Builder,
) -> Vec<R> {
    if threads <= 1 || items.len() < 2 {
        return vec![work(items)];
    }
    let per = items.len().div_ceil(threads);
    let work = &work;
    std::thread::scope(|sc| {
        let started: Vec<Result<std::thread::ScopedJoinHandle<'_, R>, &[I]>> =
            items.chunks(per).map(|part| builder().spawn_scoped(sc, move || work(part)).map_err(|_| part)).collect();
        started
            .into_iter()
            .map(|s| match s {
                Ok(handle) => handle.join().unwrap_or_else(|_| panicked()),
                Err(part) => work(part),
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums(parts: &[u64]) -> (u64, usize) {
        (parts.iter().sum(), parts.len())
    }

    /// Every item is worked exactly once, in order of parts, with threads or without.
    #[test]
    fn every_part_is_worked_once_in_order() {
        let items: Vec<u64> = (1..=1000).collect();
        for threads in [1, 2, 3, 8] {
            let parts = split(&items, threads, sums, || (0, 0));
            assert_eq!(parts.iter().map(|p| p.0).sum::<u64>(), 500_500);
            assert_eq!(parts.iter().map(|p| p.1).sum::<usize>(), 1000);
            assert_eq!(parts.len(), threads.min(1000));
        }
    }

    /// When no thread can be started (here: a stack no machine has), the parts are worked on
    /// the calling thread, with the same results, instead of a panic.
    #[test]
    fn parts_whose_thread_cannot_start_are_worked_here() {
        let items: Vec<u64> = (1..=1000).collect();
        let impossible = || std::thread::Builder::new().stack_size(usize::MAX / 2);
        assert!(impossible().spawn(|| ()).is_err(), "this machine started a thread with a {} byte stack", usize::MAX / 2);
        let here = std::thread::current().id();
        let parts = split_with(&items, 4, |part| (sums(part), std::thread::current().id()), || ((0, 0), here), impossible);
        assert_eq!(parts.len(), 4);
        assert!(parts.iter().all(|(_, id)| *id == here));
        assert_eq!(parts.iter().map(|((s, _), _)| s).sum::<u64>(), 500_500);
    }

    /// A part whose thread panicked gives `panicked()`; the others their results.
    #[test]
    fn a_panicking_part_gives_its_stand_in() {
        let items: Vec<u64> = (1..=4).collect();
        let parts = split(&items, 4, |part| if part == [3] { panic!("part 3") } else { Some(part[0]) }, || None);
        assert_eq!(parts, [Some(1), Some(2), None, Some(4)]);
    }
}
