//! The model's named tensors: created (seeded initialisation) or taken from a checkpoint, as
//! trainable `Var`s for training or as plain tensors for forward-only use.
//!
//! The model is always built through `Gpt::new(cfg, init_std, kernels, vb)`; what differs is the `VarBuilder`
//! backend behind it, `Collector`, which decides where each tensor comes from and records it.
//! So the checkpoint's tensor names are exactly the struct paths (`blocks.0.attn.qkv.weight`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::config::ModelConfig;
use crate::model::Gpt;

/// Where a [`Collector`] takes tensors from.
enum Source {
    /// Fresh initialisation from the `Init` hints, with a seeded RNG (candle's CPU RNG cannot be seeded).
    Init(Box<Mutex<ChaCha8Rng>>),
    /// Named tensors, e.g. from `model.safetensors`.
    Tensors(HashMap<String, Tensor>),
}

/// Every tensor handed out: name, value, and the `Var` behind it when trainable.
type Made = Arc<Mutex<Vec<(String, Tensor, Option<Var>)>>>;

/// A `VarBuilder` backend that hands out tensors and records every one it handed out in `made`.
struct Collector {
    source: Source,
    /// Which names become trainable `Var`s (the rest are constants).
    trainable: Box<dyn Fn(&str) -> bool + Send + Sync>,
    made: Made,
}

impl Collector {
    fn init_tensor(rng: &Mutex<ChaCha8Rng>, shape: &Shape, init: Init, dev: &Device) -> candle_core::Result<Tensor> {
        let n = shape.elem_count();
        let data: Vec<f32> = match init {
            Init::Const(c) => vec![c as f32; n],
            Init::Randn { mean, stdev } => {
                let mut rng = rng.lock().expect("init rng poisoned");
                (0..n)
                    .map(|_| {
                        let z: f64 = StandardNormal.sample(&mut *rng);
                        (mean + stdev * z) as f32
                    })
                    .collect()
            }
            other => candle_core::bail!("unsupported initialisation {other:?}"),
        };
        Tensor::from_vec(data, shape.clone(), dev)
    }
}

impl candle_nn::var_builder::SimpleBackend for Collector {
    fn get(&self, shape: Shape, name: &str, init: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let tensor = match &self.source {
            Source::Init(rng) => Self::init_tensor(rng, &shape, init, dev)?,
            Source::Tensors(map) => {
                let t = map.get(name).ok_or_else(|| candle_core::Error::Msg(format!("tensor {name} is missing")))?;
                if t.shape() != &shape {
                    candle_core::bail!("tensor {name} has shape {:?}, the model config needs {:?}", t.dims(), shape.dims())
                }
                t.to_device(dev)?
            }
        }
        .to_dtype(dtype)?;
        let var = if (self.trainable)(name) { Some(Var::from_tensor(&tensor)?) } else { None };
        let handed = var.as_ref().map_or_else(|| tensor.clone(), |v| v.as_tensor().clone());
        self.made.lock().expect("collector poisoned").push((name.to_string(), handed.clone(), var));
        Ok(handed)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("tensor {name} requested without a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        match &self.source {
            Source::Init(_) => true,
            Source::Tensors(map) => map.contains_key(name),
        }
    }
}

/// A named trainable tensor.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub var: Var,
}

/// Every tensor of a model, sorted by name: trainable ones as `Var`s, constants as tensors.
#[derive(Debug, Clone)]
pub struct Params {
    trainable: Vec<Param>,
    constants: Vec<(String, Tensor)>,
}

/// Whether a tensor is trained: every tensor, except the attention temperatures unless asked.
fn is_trainable(cfg: &ModelConfig) -> impl Fn(&str) -> bool + Send + Sync + 'static {
    let learn_t = cfg.learn_temperature;
    move |name: &str| learn_t || !name.ends_with("log_beta")
}

impl Params {
    fn build(
        cfg: &ModelConfig,
        init_std: Option<f64>,
        source: Source,
        trainable: Box<dyn Fn(&str) -> bool + Send + Sync>,
        dtype: DType,
        dev: &Device,
    ) -> Result<(Self, Gpt)> {
        let check_unused = match &source {
            Source::Tensors(map) => Some(map.keys().cloned().collect::<Vec<_>>()),
            Source::Init(_) => None,
        };
        let made = Arc::new(Mutex::new(Vec::new()));
        let backend: Box<dyn candle_nn::var_builder::SimpleBackend> =
            Box::new(Collector { source, trainable, made: made.clone() });
        let vb = VarBuilder::from_backend(backend, dtype, dev.clone());
        // The one place the implementation is chosen: the process default, which
        // `Gpt::set_kernels` can override on the built model.
        let model = Gpt::new(cfg, init_std, crate::kernels::Kernels::from_env(), vb)?;
        let mut made = std::mem::take(&mut *made.lock().expect("collector poisoned"));
        if let Some(names) = check_unused {
            let used: std::collections::HashSet<&str> = made.iter().map(|(n, _, _)| n.as_str()).collect();
            let mut extra: Vec<&String> = names.iter().filter(|n| !used.contains(n.as_str())).collect();
            extra.sort();
            if let Some(name) = extra.first() {
                bail!("unexpected tensor {name} (and {} more): the weights do not match the model config", extra.len() - 1);
            }
        }
        made.sort_by(|a, b| a.0.cmp(&b.0));
        let mut trainable_params = Vec::new();
        let mut constants = Vec::new();
        for (name, tensor, var) in made {
            match var {
                Some(var) => trainable_params.push(Param { name, var }),
                None => constants.push((name, tensor)),
            }
        }
        Ok((Self { trainable: trainable_params, constants }, model))
    }

    /// Fresh, seeded initialisation for training.
    pub fn init(cfg: &ModelConfig, init_std: f64, seed: u64, dev: &Device) -> Result<(Self, Gpt)> {
        let rng = crate::rng::rng(seed, crate::rng::RngStream::Init);
        Self::build(cfg, Some(init_std), Source::Init(Box::new(Mutex::new(rng))), Box::new(is_trainable(cfg)), DType::F32, dev)
    }

    /// Trainable parameters from saved tensors (resuming a run). Missing, extra or misshapen
    /// tensors are errors.
    pub fn from_tensors(cfg: &ModelConfig, tensors: HashMap<String, Tensor>, dev: &Device) -> Result<(Self, Gpt)> {
        Self::from_tensors_as(cfg, tensors, DType::F32, dev)
    }

    /// [`Params::from_tensors`] in another dtype (F64 for gradient checks).
    pub fn from_tensors_as(cfg: &ModelConfig, tensors: HashMap<String, Tensor>, dtype: DType, dev: &Device) -> Result<(Self, Gpt)> {
        Self::build(cfg, None, Source::Tensors(tensors), Box::new(is_trainable(cfg)), dtype, dev)
    }

    /// A forward-only model (plain tensors, no autodiff graph) from saved tensors.
    pub fn model_from_tensors(cfg: &ModelConfig, tensors: HashMap<String, Tensor>, dev: &Device) -> Result<Gpt> {
        Ok(Self::build(cfg, None, Source::Tensors(tensors), Box::new(|_: &str| false), DType::F32, dev)?.1)
    }

    /// The trainable parameters, sorted by name.
    pub fn trainable(&self) -> &[Param] {
        &self.trainable
    }

    /// Every tensor by name, detached from the autodiff graph (what `model.safetensors` holds).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        let mut map: HashMap<String, Tensor> =
            self.trainable.iter().map(|p| (p.name.clone(), p.var.as_tensor().detach())).collect();
        map.extend(self.constants.iter().map(|(n, t)| (n.clone(), t.detach())));
        map
    }

    /// The model over the current values, as plain tensors: evaluation on it builds no graph.
    /// It shares storage with the parameters, so it follows later in-place optimizer updates; copy
    /// the tensors ([`Params::tensors`], `Tensor::copy`) for a frozen snapshot.
    pub fn detached_model(&self, cfg: &ModelConfig) -> Result<Gpt> {
        let dev = self.trainable.first().map(|p| p.var.device().clone()).unwrap_or(Device::Cpu);
        Self::model_from_tensors(cfg, self.tensors(), &dev)
    }

    /// Total number of scalars in the model.
    pub fn count(&self) -> usize {
        self.trainable.iter().map(|p| p.var.elem_count()).sum::<usize>()
            + self.constants.iter().map(|(_, t)| t.elem_count()).sum::<usize>()
    }
}
