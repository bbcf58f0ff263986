//! The phase diagram of every head: its heat capacity against its own temperature.
//!
//! Each query row of head h is a canonical ensemble over the keys it sees, with energy levels
//! E_ij = -s_ij read from a pass at the trained temperatures. Holding those levels fixed (the
//! head's own scores do not depend on its temperature) and setting the head's temperature to T,
//!
//! ```text
//! C_h(T) = mean over rows of beta_i^2 Var_alpha(T)(E),   beta_i = (1 + s ln n_i) / T
//! ```
//!
//! (s the length scaling, 0 unless set). C_h peaks at T*_h, where the head's weights change
//! fastest with temperature: a two-level row with spacing Delta peaks at T = Delta / 2.3994. A
//! head whose T*_h sits far from its trained T_h is far from its critical point: small changes
//! of temperature hardly move it. Along the same grid the attention mass on the start token (the
//! sink) and the entropy are reported.

use anyhow::{bail, Result};
use candle_core::DType;
use rayon::prelude::*;
use serde::Serialize;

use crate::model::AttnStats;
use crate::physics::thermo::{self, RowStats};

/// Rows per head the diagram averages at most; evenly spaced over the sample when it has more.
pub const MAX_ROWS: usize = 1024;

/// The most points a temperature grid may have.
pub const MAX_GRID_POINTS: usize = 10_000;

/// `n` temperatures evenly spaced in ln T from `lo` to `hi`.
pub fn log_grid(lo: f64, hi: f64, n: usize) -> Result<Vec<f64>> {
    if !(lo > 0.0 && hi > lo && lo.is_finite() && hi.is_finite() && (3..=MAX_GRID_POINTS).contains(&n)) {
        bail!("a temperature grid needs 0 < low < high, both finite, and 3 to {MAX_GRID_POINTS} points; got {lo}, {hi}, {n}");
    }
    let step = (hi / lo).ln() / (n - 1) as f64;
    Ok((0..n).map(|i| if i + 1 == n { hi } else { lo * (step * i as f64).exp() }).collect())
}

/// One head's curves over the grid.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct HeadPhase {
    pub layer: usize,
    pub head: usize,
    /// T_h as the levels were read.
    pub temperature: f64,
    /// T*_h: where C_h(T) peaks (refined by a parabola in ln T through the three grid points
    /// around the largest).
    pub t_star: f64,
    /// C_h(T*_h).
    pub c_star: f64,
    /// Whether the peak lies inside the grid (false: the largest C is at an end, and T*_h is that
    /// end).
    pub peak_in_grid: bool,
    /// C_h at each grid temperature.
    pub heat_capacity: Vec<f64>,
    /// Mean entropy H at each grid temperature, nats.
    pub entropy: Vec<f64>,
    /// Mean weight on the start token over the queries after it, at each grid temperature.
    pub sink: Vec<f64>,
}

/// Every head's curves.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PhaseDiagram {
    pub temperatures: Vec<f64>,
    /// Query rows averaged per head.
    pub rows: usize,
    pub heads: Vec<HeadPhase>,
}

/// One row's levels: the finite energies the query sees, whether the start is among them, and
/// the row's length factor.
struct Levels {
    energies: Vec<f64>,
    sees_start: bool,
    after_start: bool,
    scale: f64,
}

/// Gathers every head's levels over one or more passes, keeping every `stride`-th row so that at
/// most [`MAX_ROWS`] rows per head are held.
pub struct PhaseBuilder {
    stride: usize,
    /// Rows seen so far per head (the same for every head).
    seen: usize,
    /// `[layer][head]` levels, and each layer's temperatures.
    levels: Vec<Vec<Vec<Levels>>>,
    temps: Vec<Vec<f64>>,
}

impl PhaseBuilder {
    /// For passes that hold `total_rows` query rows per head in all.
    pub fn new(total_rows: usize) -> Self {
        Self { stride: total_rows.div_ceil(MAX_ROWS).max(1), seen: 0, levels: Vec::new(), temps: Vec::new() }
    }

    /// Add one pass's statistics (one per layer).
    pub fn add(&mut self, stats: &[AttnStats]) -> Result<()> {
        let mut rows_here = 0;
        for (layer, s) in stats.iter().enumerate() {
            let (b, h, t, _) = s.energy.dims4()?;
            rows_here = b * t;
            if self.levels.len() <= layer {
                self.levels.push((0..h).map(|_| Vec::new()).collect());
                self.temps.push(s.beta.to_dtype(DType::F64)?.to_vec1::<f64>()?.into_iter().map(|b| 1.0 / b).collect());
            }
            let energy = s.energy.to_dtype(DType::F64)?.permute((1, 0, 2, 3))?.reshape((h, b * t, t))?.to_vec3::<f64>()?;
            for (head, rows) in energy.into_iter().enumerate() {
                for (r, e) in rows.into_iter().enumerate().filter(|(r, _)| (self.seen + r).is_multiple_of(self.stride)) {
                    let i = r % t;
                    let energies: Vec<f64> = e[..=i].iter().copied().filter(|x| x.is_finite()).collect();
                    let scale = s.row_scale.get(i).copied().unwrap_or(1.0);
                    self.levels[layer][head].push(Levels { energies, sees_start: e[0].is_finite(), after_start: i > 0, scale });
                }
            }
        }
        self.seen += rows_here;
        Ok(())
    }

    /// Every head's curves on `grid`.
    pub fn finish(self, grid: &[f64]) -> PhaseDiagram {
        let rows = self.levels.first().and_then(|l| l.first()).map_or(0, Vec::len);
        let mut heads = Vec::new();
        for (layer, (levels, temps)) in self.levels.iter().zip(&self.temps).enumerate() {
            let curves: Vec<HeadPhase> =
                levels.par_iter().enumerate().map(|(head, rows)| head_curves(layer, head, temps[head], rows, grid)).collect();
            heads.extend(curves);
        }
        PhaseDiagram { temperatures: grid.to_vec(), rows, heads }
    }
}

/// Every head's C(T), H(T) and sink(T) on `grid`, from the levels in `stats` (one per layer, the
/// pass at the trained temperatures).
pub fn phase_diagram(stats: &[AttnStats], grid: &[f64]) -> Result<PhaseDiagram> {
    let total = match stats.first() {
        Some(s) => s.energy.dim(0)? * s.energy.dim(2)?,
        None => 0,
    };
    let mut builder = PhaseBuilder::new(total);
    builder.add(stats)?;
    Ok(builder.finish(grid))
}

fn head_curves(layer: usize, head: usize, temperature: f64, rows: &[Levels], grid: &[f64]) -> HeadPhase {
    let n = rows.len().max(1) as f64;
    let after = rows.iter().filter(|r| r.after_start).count().max(1) as f64;
    let mut heat_capacity = Vec::with_capacity(grid.len());
    let mut entropy = Vec::with_capacity(grid.len());
    let mut sink = Vec::with_capacity(grid.len());
    for &t in grid {
        let (mut c, mut h, mut s) = (0.0, 0.0, 0.0);
        for r in rows {
            let beta = r.scale / t;
            let (p, ln_z) = thermo::boltzmann(&r.energies, beta);
            let stats = RowStats::from_weights(&p, &r.energies, beta, ln_z);
            c += stats.heat_capacity;
            h += stats.entropy;
            if r.after_start && r.sees_start {
                s += p[0];
            }
        }
        heat_capacity.push(c / n);
        entropy.push(h / n);
        sink.push(s / after);
    }
    let (t_star, c_star, peak_in_grid) = peak(grid, &heat_capacity);
    HeadPhase { layer, head, temperature, t_star, c_star, peak_in_grid, heat_capacity, entropy, sink }
}

/// The peak of `c` over `grid`: the largest point, refined by the parabola in ln T through it
/// and its neighbours (the vertex, kept between the neighbours), and whether it is inside.
pub fn peak(grid: &[f64], c: &[f64]) -> (f64, f64, bool) {
    let k = (0..c.len()).fold(0, |best, i| if c[i] > c[best] { i } else { best });
    if k == 0 || k + 1 == c.len() {
        return (grid[k], c[k], false);
    }
    let (x0, x1, x2) = (grid[k - 1].ln(), grid[k].ln(), grid[k + 1].ln());
    let (y0, y1, y2) = (c[k - 1], c[k], c[k + 1]);
    // Vertex of the parabola through three points (equal spacing not assumed).
    let num = (x1 - x0).powi(2) * (y1 - y2) - (x1 - x2).powi(2) * (y1 - y0);
    let den = (x1 - x0) * (y1 - y2) - (x1 - x2) * (y1 - y0);
    if den == 0.0 {
        return (grid[k], c[k], true);
    }
    let x = (x1 - 0.5 * num / den).clamp(x0, x2);
    // The parabola's value at its vertex.
    let l0 = (x - x1) * (x - x2) / ((x0 - x1) * (x0 - x2));
    let l1 = (x - x0) * (x - x2) / ((x1 - x0) * (x1 - x2));
    let l2 = (x - x0) * (x - x1) / ((x2 - x0) * (x2 - x1));
    (x.exp(), (y0 * l0 + y1 * l1 + y2 * l2).max(y1), true)
}
