//! Reading a trained model as statistical physics: the language model as a Boltzmann
//! distribution over sequences ([`score`] its energies, [`generate`] sampling from it at
//! temperature T, [`calibrate`] the output temperature that fits held-out text), attention heads
//! as canonical ensembles ([`thermo`], read on real text by [`inspect`]), and the samplers and
//! estimators that share attention's Boltzmann form ([`langevin`], [`nadaraya_watson`]). Every
//! module here is forward-only: it takes a [`crate::Gpt`] (or an energy) and never trains it.

pub mod calibrate;
pub mod generate;
pub mod inspect;
pub mod langevin;
pub mod nadaraya_watson;
pub mod phase;
pub mod response;
pub mod score;
pub mod thermo;
