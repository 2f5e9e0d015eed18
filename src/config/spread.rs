//! Work over a large config's channels on every core.
//!
//! # Why
//!
//! Reading and checking a config of 100,000 groups (about 6,700 channel
//! entries, each parsed alone and each channel's key and secret files
//! read) took about 40 % of `linetokd status` on one core, while the
//! others waited. Each entry is independent of the others, so the entries
//! are cut into one run per core and the results put back in order: what
//! comes out, problems included, is what one thread walking them in order
//! makes.

use std::panic::resume_unwind;
use std::thread;

/// Fewer items than this per thread are not worth a thread.
const MIN_PER_THREAD: usize = 256;

/// `f` applied to each of `items` (with its index), in order, on up to as
/// many threads as the machine has cores. Each thread starts its own
/// state with `init` and hands it back with its results, so the caller
/// merges the states in item order. A panic in `f` is the caller's.
pub(super) fn in_order<I, T, S>(
    items: &[I],
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, usize, &I) -> T + Sync,
) -> Vec<(Vec<T>, S)>
where
    I: Sync,
    T: Send,
    S: Send,
{
    let cores = thread::available_parallelism().map_or(1, usize::from);
    let threads = cores.min(items.len() / MIN_PER_THREAD).max(1);
    let run = |start: usize, part: &[I]| {
        let mut state = init();
        let out = part
            .iter()
            .enumerate()
            .map(|(j, item)| f(&mut state, start + j, item))
            .collect();
        (out, state)
    };
    if threads == 1 {
        return vec![run(0, items)];
    }
    let chunk = items.len().div_ceil(threads);
    thread::scope(|s| {
        let run = &run;
        let handles: Vec<_> = items
            .chunks(chunk)
            .enumerate()
            .map(|(k, part)| s.spawn(move || run(k * chunk, part)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|panic| resume_unwind(panic)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_and_states_come_back_in_item_order() {
        for n in [0, 1, 255, 256, 1_000, 10_007] {
            let items: Vec<usize> = (0..n).collect();
            let parts = in_order(&items, Vec::new, |seen: &mut Vec<usize>, i, item| {
                assert_eq!(i, *item);
                seen.push(i);
                item * 2
            });
            let out: Vec<usize> = parts.iter().flat_map(|(out, _)| out.clone()).collect();
            let seen: Vec<usize> = parts.into_iter().flat_map(|(_, seen)| seen).collect();
            assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
            assert_eq!(seen, items);
        }
    }
}
