//! `Model.inspect`: the library's reading of a text, laid out as NumPy arrays indexed by
//! (layer, head, query, key).

use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use thermoformer::data::tokenizer::Tok;
use thermoformer::physics::inspect::{self, Selection};
use thermoformer::physics::phase;
use thermoformer::physics::response::{self, EnergySample};
use thermoformer::physics::thermo;
use thermoformer::Gpt;

use crate::value_error;

/// `phase=None | False | True | (low, high, points)` as a temperature grid (True: `inspect
/// --phase`'s default grid, 0.01 to 100 in 81 points).
pub(crate) fn phase_grid(phase: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Vec<f64>>> {
    let Some(p) = phase else { return Ok(None) };
    let (lo, hi, n) = if let Ok(on) = p.extract::<bool>() {
        if !on {
            return Ok(None);
        }
        (0.01, 100.0, 81)
    } else {
        p.extract::<(f64, f64, usize)>().map_err(|_| value_error("phase must be True or a grid (low, high, points)"))?
    };
    phase::log_grid(lo, hi, n).map(Some).map_err(|e| value_error(format!("phase: {e}")))
}

/// A dense array: its shape and its values in row-major order.
struct Dense {
    shape: Vec<usize>,
    values: Vec<f64>,
}

impl Dense {
    fn filled(shape: &[usize], value: f64) -> Self {
        Self { shape: shape.to_vec(), values: vec![value; shape.iter().product()] }
    }

    fn set(&mut self, index: &[usize], value: f64) {
        let flat = index.iter().zip(&self.shape).fold(0, |acc, (i, n)| acc * n + i);
        self.values[flat] = value;
    }
}

/// What `inspect` returns, gathered with the GIL released and turned into arrays after.
pub(crate) struct Inspection {
    tokens: Vec<String>,
    arrays: Vec<(&'static str, Dense)>,
    text_energy: Option<f64>,
}

impl Inspection {
    /// Read `text` through every head of `model`; with `response`, the response functions of
    /// the selected heads; with `grid`, the phase diagram over it.
    /// `between` runs before each head's ablations (a signal check).
    pub(crate) fn read(
        model: &Gpt,
        tok: &Tok,
        text: &str,
        response: Option<&Selection>,
        grid: Option<&[f64]>,
        between: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<Self> {
        let ids = tok.encode(text)?;
        let (report, _, stats) = inspect::inspect_pass(model, tok, &ids)?;
        let (l_n, h_n, t_n) = (report.alpha.len(), report.alpha.first().map_or(0, Vec::len), report.tokens.len());
        let mut arrays = Vec::new();

        // Every query's row of weights is T long; its energies stop at the query (keys after it
        // are hidden), and hidden keys have infinite energy.
        let alpha = report.alpha.iter().flatten().flatten().flatten().copied().collect();
        let energy = report
            .energies
            .iter()
            .flatten()
            .flatten()
            .flat_map(|row| row.iter().map(|&e| if e.is_finite() { e } else { f64::INFINITY }).chain(std::iter::repeat_n(f64::INFINITY, t_n - row.len())))
            .collect();
        arrays.push(("alpha", Dense { shape: vec![l_n, h_n, t_n, t_n], values: alpha }));
        arrays.push(("energy", Dense { shape: vec![l_n, h_n, t_n, t_n], values: energy }));

        let per_row = ["ln_z", "row_entropy", "row_mean_energy", "row_heat_capacity"];
        let mut rows: Vec<Dense> = per_row.iter().map(|_| Dense::filled(&[l_n, h_n, t_n], f64::NAN)).collect();
        for (l, s) in stats.iter().enumerate() {
            for (h, head) in thermo::head_rows(s)?.iter().enumerate() {
                for r in &head.rows {
                    let figures = [r.stats.ln_z, r.stats.entropy, r.stats.mean_energy, r.stats.heat_capacity];
                    for (dense, value) in rows.iter_mut().zip(figures) {
                        dense.set(&[l, h, r.query], value);
                    }
                }
            }
        }
        arrays.extend(per_row.into_iter().zip(rows));

        type Field = fn(&thermo::HeadSummary) -> f64;
        let summary: [(&'static str, Field); 11] = [
            ("temperature", |s| s.temperature),
            ("entropy", |s| s.entropy),
            ("normalized_entropy", |s| s.normalized_entropy),
            ("effective_keys", |s| s.effective_keys),
            ("mean_ln_z", |s| s.ln_z),
            ("mean_energy", |s| s.mean_energy),
            ("heat_capacity", |s| s.heat_capacity),
            ("identity_residual", |s| s.identity_residual),
            ("sink", |s| s.sink),
            ("entropy_slope", |s| s.entropy_slope),
            ("entropy_intercept", |s| s.entropy_intercept),
        ];
        for (name, field) in summary {
            let mut d = Dense::filled(&[l_n, h_n], f64::NAN);
            for s in &report.heads {
                d.set(&[s.layer, s.head], field(s));
            }
            arrays.push((name, d));
        }

        let mut text_energy = None;
        if let Some(selection) = response {
            let sample = EnergySample::text(model, tok.bos(), &ids)?;
            let r = response::response_with(model, &sample, selection, false, between)?;
            text_energy = Some(r.energy);
            type Measured = fn(&response::HeadResponse) -> f64;
            let fields: [(&'static str, Measured); 3] =
                [("susceptibility", |h| h.susceptibility), ("ablated_hot", |h| h.ablated_hot), ("ablated_cold", |h| h.ablated_cold)];
            for (name, field) in fields {
                let mut d = Dense::filled(&[l_n, h_n], f64::NAN);
                for h in &r.heads {
                    d.set(&[h.layer, h.head], field(h));
                }
                arrays.push((name, d));
            }
        }

        if let Some(grid) = grid {
            let p = phase::phase_diagram(&stats, grid)?;
            let g = p.temperatures.len();
            arrays.push(("phase_temperatures", Dense { shape: vec![g], values: p.temperatures.clone() }));
            let (mut t_star, mut c_star, mut inside) = (Dense::filled(&[l_n, h_n], f64::NAN), Dense::filled(&[l_n, h_n], f64::NAN), Dense::filled(&[l_n, h_n], 0.0));
            let mut curves: Vec<Dense> = (0..3).map(|_| Dense::filled(&[l_n, h_n, g], f64::NAN)).collect();
            for h in &p.heads {
                t_star.set(&[h.layer, h.head], h.t_star);
                c_star.set(&[h.layer, h.head], h.c_star);
                inside.set(&[h.layer, h.head], if h.peak_in_grid { 1.0 } else { 0.0 });
                for (dense, curve) in curves.iter_mut().zip([&h.heat_capacity, &h.entropy, &h.sink]) {
                    for (i, &v) in curve.iter().enumerate() {
                        dense.set(&[h.layer, h.head, i], v);
                    }
                }
            }
            arrays.push(("t_star", t_star));
            arrays.push(("c_star", c_star));
            arrays.push(("peak_in_grid", inside));
            arrays.extend(["phase_heat_capacity", "phase_entropy", "phase_sink"].into_iter().zip(curves));
        }
        Ok(Self { tokens: report.tokens, arrays, text_energy })
    }

    /// The dict `inspect` returns ("peak_in_grid" as booleans, the rest float64).
    pub(crate) fn into_dict(self, py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
        let out = PyDict::new(py);
        out.set_item("tokens", self.tokens)?;
        for (name, d) in self.arrays {
            let array = PyArray1::from_vec(py, d.values).reshape(d.shape)?;
            if name == "peak_in_grid" {
                out.set_item(name, array.call_method1("astype", ("bool",))?)?;
            } else {
                out.set_item(name, array)?;
            }
        }
        if let Some(e) = self.text_energy {
            out.set_item("text_energy", e)?;
        }
        Ok(out)
    }
}
