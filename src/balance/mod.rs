//! TEMPORARY STUB — replaced by the real module.
#[derive(Debug)]
pub struct Ring { n: usize }
impl Ring {
    pub fn new(servers: &[(&str, u32)]) -> Ring { Ring { n: servers.len() } }
    pub fn server_count(&self) -> usize { self.n }
    pub fn walk(&self, key: u64) -> impl Iterator<Item = usize> + '_ { let n = self.n.max(1); (0..self.n).map(move |i| (i + key as usize) % n) }
}
pub fn placement_hash(key: &[u8]) -> u64 { xxhash_rust::xxh3::xxh3_64_with_seed(key, 7) }
pub fn pick_hash_bounded(ring: &Ring, key: u64, _weights: &[u32], _factor: f64, eligible: impl Fn(usize) -> bool, _load: impl Fn(usize) -> u64) -> Option<usize> { ring.walk(key).find(|i| eligible(*i)) }
pub fn pick_least(ring: &Ring, key: u64, _weights: &[u32], eligible: impl Fn(usize) -> bool, load: impl Fn(usize) -> u64) -> Option<usize> { ring.walk(key).filter(|i| eligible(*i)).min_by_key(|i| load(*i)) }
