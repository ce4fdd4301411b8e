//! Ground floor: giving memory back after a burst.
//!
//! A sidecar runs in every pod that sends mail, so what it keeps after a burst is multiplied by
//! the number of pods. A `HashMap` keeps the capacity of its largest size for good; the maps
//! that index queued mail grow with a burst and would hold megabytes of empty buckets for the
//! rest of the pod's life.

use std::{collections::HashMap, hash::Hash};

/// Below this many bytes of slots a map is not worth shrinking. Counted in bytes, not slots: the
/// queue's entries are a few hundred bytes each, so a floor of 1,024 slots kept 384 KiB for each
/// empty index after a burst.
const FLOOR_BYTES: usize = 16 * 1024;

/// Shrinks `map` to twice its length once it uses less than a quarter of its capacity and its
/// slots take more than [`FLOOR_BYTES`]. The gap between the two keeps a map whose size swings
/// around one value from reallocating each time; as a map drains it is shrunk a logarithmic
/// number of times.
pub fn shrink_sparse<K: Eq + Hash, V>(map: &mut HashMap<K, V>) {
    let slot = std::mem::size_of::<(K, V)>().max(1);
    if map.capacity() * slot > FLOOR_BYTES && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
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
        let bytes = map.capacity() * std::mem::size_of::<(u64, [u8; 64])>();
        assert!(
            bytes <= FLOOR_BYTES,
            "kept {} slots ({bytes} bytes) for 10 entries",
            map.capacity()
        );
        assert_eq!(map.len(), 10);
        // Entries as large as the queue's: emptied, the map keeps no more than the floor.
        let mut wide: HashMap<u64, [u8; 344]> = (0..5_000).map(|i| (i, [0; 344])).collect();
        wide.retain(|k, _| *k < 3);
        shrink_sparse(&mut wide);
        assert!(
            wide.capacity() * std::mem::size_of::<(u64, [u8; 344])>() <= FLOOR_BYTES,
            "kept {} wide slots",
            wide.capacity()
        );
        let mut small: HashMap<u64, u8> = (0..500).map(|i| (i, 0)).collect();
        let cap = small.capacity();
        small.clear();
        shrink_sparse(&mut small);
        assert_eq!(small.capacity(), cap, "small maps are left alone");
    }
}
