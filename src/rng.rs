//! The run's seeded random streams: one seed, independent streams per purpose, so that e.g.
//! changing the number of evaluation windows never changes the training batches.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Independent streams of the run's seeded RNG, one per purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RngStream {
    /// The training batches' window starts.
    Batches = 0,
    /// The weights' initialisation.
    Init = 1,
    /// Sampled text (the end-of-training sample, rl's rollouts).
    Sample = 2,
}

/// A seeded RNG on one stream.
pub fn rng(seed: u64, stream: RngStream) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream as u64);
    rng
}
