//! `thermoformer serve`: a local web explorer over one run directory.
//!
//! The page (`page/`, embedded in the binary) sends the text and the temperatures to the JSON API
//! ([`api`]) and draws what comes back. Routes:
//!
//! | route | what |
//! |---|---|
//! | `GET /` , `/app.js`, `/app.css` | the page |
//! | `GET /api/info` | the model's shape and trained temperatures |
//! | `GET /api/openapi.json` | the OpenAPI 3 document of every route, generated from the handlers' types |
//! | `POST /api/score` | energies, top-5 candidates, head statistics, attention maps |
//! | `POST /api/generate` | sampled tokens, streamed as JSON lines |
//! | `POST /api/sweep` | energy and entropy against every head's temperature |
//! | `POST /api/response` | every head's susceptibility and thermal ablations on a text |
//! | `POST /api/phase` | every head's C(T), entropy and sink along a temperature grid |
//!
//! Anything else is a 404. Errors are JSON `{"error": message}` with a 4xx (5xx only when the
//! model itself fails). Bodies are capped at [`MAX_BODY`]. Every response carries a
//! Content-Security-Policy that allows nothing from outside the server. Requests share the
//! loaded model read-only; each one that sets temperatures works on a copy whose weights are
//! shared. The model work runs on tokio's blocking pool, so the server keeps answering while it runs.

pub mod api;
pub mod export;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;

use crate::checkpoint::Loaded;
use api::ApiError;

/// The largest request body accepted.
pub const MAX_BODY: usize = 64 << 10;

/// What every response says the page may load: only what this server sends.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const INDEX: &str = include_str!("page/index.html");
const APP_JS: &str = include_str!("page/app.js");
const APP_CSS: &str = include_str!("page/app.css");

/// The OpenAPI document of the API, from the handlers' own annotations and types.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "thermoformer serve", description = "The explorer's JSON API over one run directory (docs/serve.md)."),
    paths(info, score, generate, sweep, response, phase),
    components(schemas(api::Sampled))
)]
pub struct ApiDoc;

/// The loaded run, shared by every request.
pub struct App {
    pub loaded: Loaded,
    /// The run directory as given, for the page's title.
    pub name: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(serde_json::json!({ "error": self.message }))).into_response()
    }
}

/// The router over `app`: the page, the API, JSON 404s and the headers on everything.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(|| async { page(INDEX, "text/html; charset=utf-8") }))
        .route("/app.js", get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }))
        .route("/app.css", get(|| async { page(APP_CSS, "text/css; charset=utf-8") }))
        .route("/api/info", get(info))
        .route("/api/openapi.json", get(|| async { axum::Json(<ApiDoc as utoipa::OpenApi>::openapi()) }))
        .route("/api/score", post(score))
        .route("/api/generate", post(generate))
        .route("/api/sweep", post(sweep))
        .route("/api/response", post(response))
        .route("/api/phase", post(phase))
        .fallback(|uri: Uri| async move { ApiError { status: 404, message: format!("no such path: {}", uri.path()) } })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::map_response(|mut r: Response| async move {
            let h = r.headers_mut();
            h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
            h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }))
        .with_state(app)
}

fn page(body: &'static str, kind: &'static str) -> Response {
    ([(header::CONTENT_TYPE, kind)], body).into_response()
}

/// The body as `T`, an object with only the keys in `keys`: a body over the cap is a 413, an
/// unknown key or anything that is not that JSON a 400, each with a message. (The keys are
/// checked here because serde's `deny_unknown_fields` does not work with the flattened
/// temperatures.)
fn parse<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>, keys: &[&str]) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| ApiError { status: e.status().as_u16(), message: format!("{} (the limit is {MAX_BODY} bytes)", e.body_text()) })?;
    let not_ours = |e: serde_json::Error| ApiError::bad_request(format!("the request is not the JSON this endpoint takes: {e}"));
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(not_ours)?;
    if let Some(unknown) = value.as_object().and_then(|o| o.keys().find(|k| !keys.contains(&k.as_str()))) {
        return Err(ApiError::bad_request(format!("unknown field {unknown:?}: this endpoint takes {}", keys.join(", "))));
    }
    serde_json::from_value(value).map_err(not_ours)
}

/// Run `f` on the blocking pool (model work must not stall the server's threads).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ApiError> + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ApiError { status: 500, message: format!("the request's work failed: {e}") })?
}

/// The model's shape and trained temperatures.
#[utoipa::path(get, path = "/api/info", responses((status = 200, body = api::Info), (status = 500, body = api::ErrorBody)))]
async fn info(State(app): State<Arc<App>>) -> Result<axum::Json<api::Info>, ApiError> {
    blocking(move || Ok(api::info(&app.loaded.model, &app.loaded.tokenizer, &app.loaded.config, &app.name)?)).await.map(axum::Json)
}

/// Energies, top-5 candidates, head statistics and attention maps of a text.
#[utoipa::path(post, path = "/api/score", request_body = api::ScoreRequest, responses(
        (status = 200, body = api::ScoreResponse),
        (status = 400, description = "a malformed request, an unknown field or a value out of range", body = api::ErrorBody),
        (status = 413, description = "a body over 64 KiB", body = api::ErrorBody),
        (status = 422, description = "text the model cannot take: outside its vocabulary, or longer than its context", body = api::ErrorBody),
        (status = 500, description = "the model itself failed", body = api::ErrorBody)))]
async fn score(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Result<axum::Json<api::ScoreResponse>, ApiError> {
    let req: api::ScoreRequest = parse(body, &["text", "temperatures", "attn_temperature", "layers", "no_attention"])?;
    blocking(move || api::score(&app.loaded.model, &app.loaded.tokenizer, &req)).await.map(axum::Json)
}

/// Energy and entropy on the text with every head at each temperature.
#[utoipa::path(post, path = "/api/sweep", request_body = api::SweepRequest, responses(
        (status = 200, body = Vec<crate::physics::inspect::SweepPoint>),
        (status = 400, description = "a malformed request, an unknown field or a value out of range", body = api::ErrorBody),
        (status = 413, description = "a body over 64 KiB", body = api::ErrorBody),
        (status = 422, description = "text the model cannot take: outside its vocabulary, or longer than its context", body = api::ErrorBody),
        (status = 500, description = "the model itself failed", body = api::ErrorBody)))]
async fn sweep(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Result<axum::Json<Vec<crate::physics::inspect::SweepPoint>>, ApiError> {
    let req: api::SweepRequest = parse(body, &["text", "temperatures"])?;
    blocking(move || api::sweep(&app.loaded.model, &app.loaded.tokenizer, &req)).await.map(axum::Json)
}

/// Every head's susceptibility and thermal ablations on a text.
#[utoipa::path(post, path = "/api/response", request_body = api::ResponseRequest, responses(
        (status = 200, body = crate::physics::response::Response),
        (status = 400, description = "a malformed request, an unknown field or a value out of range", body = api::ErrorBody),
        (status = 413, description = "a body over 64 KiB", body = api::ErrorBody),
        (status = 422, description = "text the model cannot take: outside its vocabulary, or longer than its context", body = api::ErrorBody),
        (status = 500, description = "the model itself failed", body = api::ErrorBody)))]
async fn response(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Result<axum::Json<crate::physics::response::Response>, ApiError> {
    let req: api::ResponseRequest = parse(body, &["text", "temperatures", "attn_temperature", "layers", "heads"])?;
    blocking(move || api::response(&app.loaded.model, &app.loaded.tokenizer, &req)).await.map(axum::Json)
}

/// Every head's heat capacity, entropy and sink along a temperature grid.
#[utoipa::path(post, path = "/api/phase", request_body = api::PhaseRequest, responses(
        (status = 200, body = crate::physics::phase::PhaseDiagram),
        (status = 400, description = "a malformed request, an unknown field or a value out of range", body = api::ErrorBody),
        (status = 413, description = "a body over 64 KiB", body = api::ErrorBody),
        (status = 422, description = "text the model cannot take: outside its vocabulary, or longer than its context", body = api::ErrorBody),
        (status = 500, description = "the model itself failed", body = api::ErrorBody)))]
async fn phase(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Result<axum::Json<crate::physics::phase::PhaseDiagram>, ApiError> {
    let req: api::PhaseRequest = parse(body, &["text", "temperatures", "attn_temperature", "grid"])?;
    blocking(move || api::phase(&app.loaded.model, &app.loaded.tokenizer, &req)).await.map(axum::Json)
}

/// Sampled tokens as JSON lines (`application/x-ndjson`), each sent as soon as it is drawn, then
/// `{"done": true, ...}`; a failure after the first token ends the stream with `{"error": ...}`.
#[utoipa::path(post, path = "/api/generate", request_body = api::GenerateRequest, responses(
        (status = 200, description = "one JSON object per line: each sampled token (`Sampled`), then `{\"done\": true, \"tokens\", \"energy\", \"text\"}` (or `{\"error\"}` if sampling failed after the first token)", content_type = "application/x-ndjson", body = String),
        (status = 400, description = "a malformed request, an unknown field or a value out of range", body = api::ErrorBody),
        (status = 413, description = "a body over 64 KiB", body = api::ErrorBody),
        (status = 422, description = "text the model cannot take: outside its vocabulary, or longer than its context", body = api::ErrorBody),
        (status = 500, description = "the model itself failed", body = api::ErrorBody)))]
async fn generate(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let req: api::GenerateRequest = parse(body, &["prompt", "tokens", "temperature", "top_k", "top_p", "seed", "temperatures", "attn_temperature"])?;
    let app2 = app.clone();
    let req2 = req.clone();
    let (model, prompt, opts) = blocking(move || api::prepare_generation(&app2.loaded.model, &app2.loaded.tokenizer, &req2)).await?;
    let (send, receive) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    tokio::task::spawn_blocking(move || {
        let line = |v: serde_json::Value| Ok(Bytes::from(format!("{v}\n")));
        let (mut ids, mut energy) = (Vec::new(), 0.0);
        let result = api::generate(&model, &app.loaded.tokenizer, &prompt, opts, &req, |s| {
            ids.push(s.id);
            energy += s.energy;
            // A closed channel is a client gone: stop sampling.
            send.blocking_send(line(serde_json::to_value(&s)?)).map_err(|_| anyhow::anyhow!("the client went away"))
        });
        let last = match result {
            Ok(()) => serde_json::json!({ "done": true, "tokens": ids.len(), "energy": energy, "text": app.loaded.tokenizer.decode(&ids).unwrap_or_default() }),
            Err(e) => serde_json::json!({ "error": format!("{e:#}") }),
        };
        let _ = send.blocking_send(line(last));
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(receive);
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(stream)).into_response())
}

/// Serve `app` on `addr` until Ctrl-C (or SIGTERM), calling `ready` with the bound address (the
/// port is the system's choice when `addr` asks for 0).
pub fn serve(app: App, addr: SocketAddr, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("starting the server's runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        ready(listener.local_addr()?);
        axum::serve(listener, router(Arc::new(app))).with_graceful_shutdown(shutdown()).await.context("serving")?;
        Ok(())
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
