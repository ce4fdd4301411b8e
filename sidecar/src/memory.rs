//! Ground floor: giving memory back after a burst.
//!
//! A sidecar runs in every pod that sends mail, so what it keeps after a burst is multiplied by
//! the number of pods. A `HashMap` keeps the capacity of its largest size for good; the maps
//! that index queued mail grow with a burst and would hold megabytes of empty buckets for the
//! rest of the pod's life.

use std::{collections::HashMap, hash::Hash};

/// Below this many slots a map is not worth shrinking.
const FLOOR: usize = 1024;

/// Shrinks `map` to twice its length once it uses less than a quarter of its capacity. The gap
/// between the two keeps a map whose size swings around one value from reallocating each time.
pub fn shrink_sparse<K: Eq + Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > FLOOR && map.len() < map.capacity() / 4 {
        map.shrink_to((map.len() * 2).max(FLOOR / 2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_emptied_after_a_burst_gives_its_slots_back_and_a_busy_one_keeps_them() {
        let mut map: HashMap<u64, [u8; 64]> = (0..100_000).map(|i| (i, [0; 64])).collect();
        map.retain(|k, _| *k < 40_000);
        let busy = map.capacity();
        shrink_sparse(&mut map);
        assert_eq!(map.capacity(), busy, "still busy: {} of {busy}", map.len());
        map.retain(|k, _| *k < 10);
        shrink_sparse(&mut map);
        assert!(
            map.capacity() < 2 * FLOOR,
            "kept {} slots for 10 entries",
            map.capacity()
        );
        assert_eq!(map.len(), 10);
        let mut small: HashMap<u64, u8> = (0..500).map(|i| (i, 0)).collect();
        let cap = small.capacity();
        small.clear();
        shrink_sparse(&mut small);
        assert_eq!(small.capacity(), cap, "small maps are left alone");
    }
}
