//! Every parser of untrusted input, as one function of bytes ([`feed`]): what the fuzz targets
//! under `fuzz/` run, and what the ordinary test suite feeds the regression inputs of
//! `tests/fixtures/fuzz/` to. For any input each must return, an error being a fine answer:
//! never panic, hang, or allocate past a small multiple of the input.

use std::io::Cursor;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::Result;
use candle_core::Device;

use crate::checkpoint::{self, Loaded};
use crate::config::{RunConfig, Start, TrainConfig, FORMAT_VERSION};
use crate::data::tokenizer::Tok;
use crate::import::{guard, nanogpt};
use crate::model::params::Params;
use crate::ModelConfig;

/// A parser of untrusted input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A run directory's config.json.
    RunConfig,
    /// A run directory's (or a Hugging Face folder's) safetensors weights.
    Safetensors,
    /// A torch zip pickle: nanoGPT's ckpt.pt, pytorch_model.bin.
    TorchZip,
    /// nanoGPT's meta.pkl.
    MetaPickle,
    /// tokenizer.json, loaded and then used to encode and decode.
    Tokenizer,
    /// A token file's header.
    TokenHeader,
    /// A JSON Lines corpus.
    JsonLines,
    /// A request to the server: the first byte picks the endpoint, the rest is the body.
    ApiBody,
}

impl Target {
    pub const ALL: [Target; 8] =
        [Target::RunConfig, Target::Safetensors, Target::TorchZip, Target::MetaPickle, Target::Tokenizer, Target::TokenHeader, Target::JsonLines, Target::ApiBody];

    /// The name of its fuzz target and of its folder of regression inputs.
    pub fn name(self) -> &'static str {
        match self {
            Target::RunConfig => "run_config",
            Target::Safetensors => "safetensors",
            Target::TorchZip => "torch_zip",
            Target::MetaPickle => "meta_pickle",
            Target::Tokenizer => "tokenizer",
            Target::TokenHeader => "token_header",
            Target::JsonLines => "json_lines",
            Target::ApiBody => "api_body",
        }
    }
}

/// Feed `data` to `target`'s parser. Ok or Err are both answers; a panic, or a server answer
/// of 5xx, is a finding (the latter panics here so that the fuzzer records it).
pub fn feed(target: Target, data: &[u8]) -> Result<()> {
    match target {
        Target::RunConfig => checkpoint::parse_config(data, Path::new("config.json")).map(drop),
        Target::Safetensors => checkpoint::read_safetensors(Cursor::new(data), data.len() as u64, Path::new("model.safetensors"), &Device::Cpu).map(drop),
        Target::TorchZip => torch_zip(data),
        Target::MetaPickle => nanogpt::char_vocabulary(data, "meta.pkl", &Start::Text("\n".into())).map(drop),
        Target::Tokenizer => {
            // As a run directory reads it (its own start token), and as an import does (a start
            // given from outside).
            let json = std::str::from_utf8(data)?;
            let loaded = [Tok::from_json(json), Tok::from_json_with_start(json, &Start::Text("\n".into()))];
            let mut answer = Ok(());
            for tok in loaded {
                match tok {
                    Ok(tok) => {
                        for text in ["ROMEO: I will not.\n", "h\u{e9}llo \u{2713} \u{1f600}", ""] {
                            if let Ok(ids) = tok.encode(text) {
                                tok.decode(&ids)?;
                            }
                        }
                    }
                    Err(e) => answer = Err(e),
                }
            }
            answer
        }
        Target::TokenHeader => crate::data::tokens::parse_header(data).map(drop).map_err(|e| anyhow::anyhow!(e)),
        Target::JsonLines => crate::data::corpus::json_lines(Cursor::new(data), Path::new("corpus.jsonl"), "text", &mut |_, _, _| Ok(())),
        Target::ApiBody => api_body(data),
    }
}

/// The torch zip as nanoGPT's importer and the Hugging Face `.bin` reader take it: the guard's
/// checks, then the tensors read by candle (only where the checks pass, as the importers do).
fn torch_zip(data: &[u8]) -> Result<()> {
    // candle and the zip reader open files: the bytes go to a file of this thread's own.
    let path = std::env::temp_dir().join(format!("thermoformer-fuzz-{}-{:?}.pt", std::process::id(), std::thread::current().id()));
    std::fs::write(&path, data)?;
    let result = (|| {
        guard::check_torch_zip(&path)?;
        for key in [Some("model"), None] {
            guard::check_tensor_ranges(&path, key)?;
            candle_core::pickle::read_all_with_key(&path, key)?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    result
}

/// A tiny model, served from memory.
fn app() -> &'static (tokio::runtime::Runtime, axum::Router) {
    static APP: OnceLock<(tokio::runtime::Runtime, axum::Router)> = OnceLock::new();
    APP.get_or_init(|| {
        let tokenizer = Tok::train_char("First Citizen: Before we proceed any further, hear me speak.\n").expect("a char tokenizer");
        let model = ModelConfig { context: 16, n_layer: 2, n_head: 2, d_model: 16, ..ModelConfig::nano_cpu(tokenizer.vocab_size()) };
        let (_, gpt) = Params::init(&model, 0.3, 1, &Device::Cpu).expect("a tiny model");
        let config = RunConfig { format_version: FORMAT_VERSION, model, train: TrainConfig::default(), imported_from: None };
        let loaded = Loaded { config, tokenizer, model: gpt, state: None };
        let app = crate::serve::App { loaded, name: "fuzz".into() };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        (runtime, crate::serve::router(std::sync::Arc::new(app)))
    })
}

/// Endpoints a request body may go to.
const ENDPOINTS: [&str; 5] = ["/api/score", "/api/generate", "/api/sweep", "/api/response", "/api/phase"];

fn api_body(data: &[u8]) -> Result<()> {
    use tower::ServiceExt;
    let Some((&pick, body)) = data.split_first() else { return Ok(()) };
    let path = ENDPOINTS[pick as usize % ENDPOINTS.len()];
    let (runtime, router) = app();
    let request = axum::http::Request::post(path).header("content-type", "application/json").body(axum::body::Body::from(body.to_vec()))?;
    let response = runtime.block_on(async {
        let response = router.clone().oneshot(request).await.expect("the router answers");
        let status = response.status();
        // Read the whole body: generation streams it.
        let bytes = axum::body::to_bytes(response.into_body(), 64 << 20).await;
        (status, bytes)
    });
    let (status, bytes) = response;
    assert!(!status.is_server_error(), "{path} answered {status} to {:?}: {:?}", String::from_utf8_lossy(body), bytes.map(|b| String::from_utf8_lossy(&b).into_owned()));
    Ok(())
}
