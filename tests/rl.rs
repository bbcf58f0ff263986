//! Reinforcement learning: the one-step (bandit) case against its closed-form Boltzmann optimum,
//! automatic alpha reaching its target entropy, PPO's clipping and early stopping, and
//! `thermoformer rl` end to end.

mod common;

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use thermoformer::model::params::Params;
use thermoformer::rl::{self, Algo, Reward, RlConfig, Trainer};
use thermoformer::{Gpt, ModelConfig, Tok};

/// A reward that depends only on the first token: r_k.
struct Table(Vec<f64>);

impl Reward for Table {
    fn reward(&self, _: &str, ids: &[u32]) -> anyhow::Result<f64> {
        Ok(self.0[ids[0] as usize])
    }
}

fn setup() -> (Tok, ModelConfig, Params, Gpt) {
    let tok = Tok::train_char(&common::corpus_text(3000)).unwrap();
    let cfg = ModelConfig { n_layer: 1, ..ModelConfig::tiny(tok.vocab_size()) };
    // A non-uniform starting policy, so that the reference matters.
    let (params, model) = Params::init(&cfg, 0.5, 11, &Device::Cpu).unwrap();
    (tok, cfg, params, model)
}

/// The policy after BOS alone, BOS excluded and renormalised.
fn first_token_policy(model: &Gpt, bos: u32) -> Vec<f64> {
    let logits = model.forward(&Tensor::new(&[[bos]], &Device::Cpu).unwrap()).unwrap().i((0, 0)).unwrap();
    let mut z = logits.to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
    z[bos as usize] = f64::NEG_INFINITY;
    softmax(&z)
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn tv(p: &[f64], q: &[f64]) -> f64 {
    0.5 * p.iter().zip(q).map(|(a, b)| (a - b).abs()).sum::<f64>()
}

fn bandit(alpha: f64, beta: f64, target_entropy: Option<f64>, steps: usize, lr: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>, Trainer) {
    let (tok, cfg, params, model) = setup();
    let bos = tok.bos();
    let rewards: Vec<f64> = (0..cfg.vocab_size).map(|k| 1.0 + (k as f64 * 1.7).sin()).collect();
    let rl_cfg = RlConfig { algo: Algo::MaxEntPg, batch_size: 256, tokens: 1, lr, alpha, kl_coef: beta, target_entropy, alpha_lr: 0.02, seed: 5, ..RlConfig::default() };
    let mut trainer = Trainer::new(params, model, &cfg, bos, rl_cfg).unwrap();
    let reference = first_token_policy(trainer.reference(), bos);
    let reward = Table(rewards.clone());
    for _ in 0..steps {
        trainer.update(&[], &reward, &tok).unwrap();
    }
    let learned = first_token_policy(&trainer.params().detached_model(&cfg).unwrap(), bos);
    (learned, reference, rewards, trainer)
}

#[test]
fn the_bandit_converges_to_the_boltzmann_policy() {
    for (alpha, beta) in [(0.5, 0.5), (0.7, 0.0)] {
        let (learned, reference, r, _) = bandit(alpha, beta, None, 400, 2e-3);
        // pi*(k) proportional to pi_ref(k)^(beta/(alpha+beta)) exp(r_k/(alpha+beta)), over the non-BOS tokens.
        let bos = reference.iter().position(|&p| p == 0.0).unwrap();
        let z: Vec<f64> = (0..r.len())
            .map(|k| if k == bos { f64::NEG_INFINITY } else { beta / (alpha + beta) * reference[k].ln() + r[k] / (alpha + beta) })
            .collect();
        let optimum = softmax(&z);
        let d = tv(&learned, &optimum);
        println!("alpha {alpha}, beta {beta}: TV(learned, optimum) = {d:.4}, TV(reference, optimum) = {:.4}", tv(&reference, &optimum));
        // Measured: 0.0010 and 0.0031, from 0.43 and 0.81 at the start.
        assert!(d < 0.01, "alpha {alpha}, beta {beta}: TV {d}");
        assert!(tv(&reference, &optimum) > 0.1, "the test starts far from the optimum");
    }
}

#[test]
fn automatic_alpha_reaches_the_target_entropy() {
    let target = 1.5;
    let (learned, _, _, trainer) = bandit(1.0, 0.0, Some(target), 600, 1e-2);
    let h = -learned.iter().filter(|&&p| p > 0.0).map(|p| p * p.ln()).sum::<f64>();
    println!("entropy {h:.4} with alpha {:.4}", trainer.alpha());
    // Measured: 1.5153.
    assert!((h - target).abs() < 0.03, "entropy {h} against the target {target}");
}

#[test]
fn the_clipped_surrogate_has_no_gradient_outside_the_trust_region() {
    let eps = 0.2;
    // ln r for six samples: inside, above and below the region, with positive and negative A.
    let log_ratio = [0.05f32, 0.5, -0.5, 0.05, 0.5, -0.5];
    let adv = [1.0f32, 1.0, 1.0, -1.0, -1.0, -1.0];
    let old = Tensor::zeros((6, 1), DType::F32, &Device::Cpu).unwrap();
    let logp = Var::from_tensor(&Tensor::from_slice(&log_ratio, (6, 1), &Device::Cpu).unwrap()).unwrap();
    let a = Tensor::from_slice(&adv, (6, 1), &Device::Cpu).unwrap();
    let s = rl::ppo_surrogate(logp.as_tensor(), &old, &a, eps).unwrap();
    let g = s.backward().unwrap().get(logp.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    // Zero where the ratio has left the region in the direction the advantage rewards:
    // r > 1 + eps with A > 0 (sample 1) and r < 1 - eps with A < 0 (sample 5).
    assert_eq!((g[1], g[5]), (0.0, 0.0), "{g:?}");
    // Elsewhere the unclipped term is the minimum and carries r A / n.
    for i in [0, 2, 3, 4] {
        let want = (log_ratio[i].exp() * adv[i]) / 6.0;
        assert!((g[i] - want).abs() < 1e-6, "sample {i}: {} against {want}", g[i]);
    }
}

#[test]
fn target_kl_stops_the_ppo_epochs() {
    let (tok, cfg, params, model) = setup();
    let reward = Table((0..cfg.vocab_size).map(|k| (k % 3) as f64).collect());
    let ppo = RlConfig { algo: Algo::Ppo, batch_size: 32, tokens: 4, lr: 3e-2, epochs: 8, minibatches: 4, seed: 2, ..RlConfig::default() };
    let mut free = Trainer::new(params, model, &cfg, tok.bos(), ppo.clone()).unwrap();
    let s = free.update(&[], &reward, &tok).unwrap();
    assert_eq!(s.optimizer_steps, 32, "8 epochs x 4 minibatches without a target");
    assert!(s.clip_fraction.unwrap() > 0.0 && s.approx_kl.unwrap() > 0.0);

    let (_, _, params, model) = setup();
    let mut stopped = Trainer::new(params, model, &cfg, tok.bos(), RlConfig { target_kl: Some(1e-4), ..ppo }).unwrap();
    let s = stopped.update(&[], &reward, &tok).unwrap();
    assert!(s.optimizer_steps >= 1 && s.optimizer_steps < 32, "{} steps", s.optimizer_steps);
    assert!(s.approx_kl.unwrap() > 1e-4, "it stopped because approx_kl passed the target");
}


#[test]
fn rl_writes_an_ordinary_checkpoint_and_its_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = common::trained(tmp.path());
    let out = tmp.path().join("rl");
    let (ck, out) = (ck.to_str().unwrap(), out.to_str().unwrap());
    for algo in ["maxent-pg", "ppo"] {
        let o = common::run(&[
            "rl", "--checkpoint", ck, "--out", out, "--overwrite", "--reward", "regex:[aeiou]", "--algo", algo, "--steps", "3",
            "--batch-size", "4", "--tokens", "6", "--minibatches", "2", "--alpha", "0.1", "--target-entropy", "1.0", "--json", "--no-progress",
        ]);
        assert!(o.status.success(), "{algo}: {}", String::from_utf8_lossy(&o.stderr));
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert!(report["before"]["reward"].as_f64().is_some() && report["after"]["kl"].as_f64().is_some());
        // Validation CE before and after, measured alike: before is what training's last
        // evaluation gave the starting run; after (the policy's) goes to the new state.json.
        let read_state = |dir: &std::path::Path| -> serde_json::Value { serde_json::from_slice(&std::fs::read(dir.join("state.json")).unwrap()).unwrap() };
        let (before_ce, after_ce) = (report["val_ce_before"].as_f64().unwrap(), report["val_ce_after"].as_f64().unwrap());
        let trained_ce = read_state(std::path::Path::new(ck))["val_ce"].as_f64().unwrap();
        assert!((before_ce - trained_ce).abs() < 1e-5, "{before_ce} against training's {trained_ce}");
        assert_eq!(read_state(&tmp.path().join("rl"))["val_ce"].as_f64(), Some(after_ce));
        // After is the saved policy's own validation CE, measured again from its files here.
        let saved = thermoformer::checkpoint::load(&tmp.path().join("rl"), &Device::Cpu).unwrap();
        let text = std::fs::read_to_string(tmp.path().join("corpus.txt")).unwrap();
        let splits = thermoformer::data::Splits::of_text(&text, &saved.tokenizer, saved.config.train.val_fraction, saved.config.model.context, "corpus").unwrap();
        let batches = thermoformer::data::tiled_batches(splits.val(), None, 16, saved.config.model.context, saved.tokenizer.bos(), &Device::Cpu).unwrap();
        let measured = thermoformer::train::evaluate(&saved.model, &batches, 0.0).unwrap().ce;
        assert!((after_ce - measured).abs() < 1e-6, "{algo}: reported {after_ce}, the saved policy scores {measured}");
        assert!((after_ce - before_ce).abs() > 1e-5, "{algo}: the policy moved: {before_ce} -> {after_ce}");
        let lines: Vec<serde_json::Value> =
            std::fs::read_to_string(tmp.path().join("rl/rl_metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        for key in ["reward", "entropy", "kl", "alpha", "samples_per_sec"] {
            assert!(lines[2][key].as_f64().is_some(), "{algo}: {key} missing");
        }
        assert_eq!(lines[2]["clip_fraction"].is_null(), algo == "maxent-pg");
        assert_ne!(lines[0]["alpha"], lines[2]["alpha"], "alpha is tuned toward the target entropy");
        // The output is an ordinary run directory.
        let o = common::run(&["score", "--text", "First Citizen:", "--checkpoint", out, "--format", "jsonl"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // A corpus changed since training: the run goes on, without the validation figures.
    std::fs::write(tmp.path().join("corpus.txt"), common::corpus_text(4000).replace('e', "E")).unwrap();
    let o = common::run(&["rl", "--checkpoint", ck, "--out", out, "--overwrite", "--reward", "contains:a", "--steps", "1", "--tokens", "6", "--json", "--no-progress"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("has changed since the run was trained"));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(report["val_ce_before"].is_null() && report["val_ce_after"].is_null());
    let bad = |extra: &[&str]| {
        let mut a = vec!["rl", "--checkpoint", ck, "--out", out, "--overwrite", "--steps", "1", "--tokens", "6", "--no-progress"];
        a.extend_from_slice(extra);
        common::run(&a)
    };
    common::assert_clean_error(&bad(&["--reward", "karma:1"]), 2, "unknown kind");
    common::assert_clean_error(&bad(&["--reward", "regex:("]), 2, "--reward regex");
    common::assert_clean_error(&bad(&["--reward", "length:0"]), 2, "length:N");
    common::assert_clean_error(&bad(&["--reward", "contains:a", "--tokens", "40"]), 2, "context");
    common::assert_clean_error(&bad(&["--reward", "contains:a", "--clip", "1.5"]), 2, "--clip");
    let same = common::run(&["rl", "--checkpoint", ck, "--out", ck, "--reward", "contains:a", "--no-progress"]);
    common::assert_clean_error(&same, 2, "--out must differ");
    let exists = common::run(&["rl", "--checkpoint", ck, "--out", out, "--reward", "contains:a", "--steps", "1", "--tokens", "6", "--no-progress"]);
    common::assert_clean_error(&exists, 2, "--overwrite");
}

#[test]
fn rewards_score_what_their_spec_says() {
    let tok = Tok::train_char(&common::corpus_text(3000)).unwrap();
    let dev = Device::Cpu;
    let r = |spec: &str, text: &str| {
        let ids = tok.encode(text).unwrap();
        rl::parse_reward(spec, &tok, &dev).unwrap().reward(text, &ids).unwrap()
    };
    assert_eq!(r("regex:o.", "to go or not"), 4.0); // "o ", "o ", "or", "ot"
    assert_eq!((r("contains:love", "my love"), r("contains:love", "my dove")), (1.0, 0.0));
    // length:N scores the first line: 4 tokens against 8 is -0.5; 8 is 0.
    assert_eq!(r("length:8", "abcd\nefghil"), -0.5);
    assert_eq!(r("length:8", "abcdefgh\na"), 0.0);
    // energy:DIR is minus the energy per token that `score` gives under that checkpoint.
    let tmp = tempfile::tempdir().unwrap();
    let ck = common::trained(tmp.path());
    let spec = format!("energy:{}", ck.display());
    let text = "First Citizen:";
    let o = common::run(&["score", "--text", text, "--checkpoint", ck.to_str().unwrap(), "--format", "jsonl"]);
    let scored: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let want = -scored["energy_per_token"].as_f64().unwrap();
    assert!((r(&spec, text) - want).abs() < 1e-5, "{} against {want}", r(&spec, text));
    // A batch (as rollouts score it) gives each continuation its own reward, for every kind.
    let texts = ["First Citizen:", "to go or not", "my love\nabc", "Speak, speak."];
    let ids: Vec<Vec<u32>> = texts.iter().map(|t| tok.encode(t).unwrap()).collect();
    let batch: Vec<(&str, &[u32])> = texts.iter().zip(&ids).map(|(t, i)| (*t, i.as_slice())).collect();
    // Each value worked out by hand (char tokens: one per character), the energies by the
    // binary's own `score` of each text.
    let energies: Vec<f64> = texts
        .iter()
        .map(|t| {
            let o = common::run(&["score", "--text", t, "--checkpoint", ck.to_str().unwrap(), "--format", "jsonl"]);
            -serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["energy_per_token"].as_f64().unwrap()
        })
        .collect();
    let expected: [(&str, Vec<f64>); 4] = [
        ("regex:o.", vec![0.0, 4.0, 1.0, 0.0]),              // "ov" in "love"; '.' stops at the newline
        ("contains:love", vec![0.0, 0.0, 1.0, 0.0]),
        ("length:8", vec![-0.75, -0.5, -0.125, -0.625]),     // first lines of 14, 12, 7 and 13 tokens
        (spec.as_str(), energies.clone()),
    ];
    for (spec, want) in &expected {
        let batched = rl::parse_reward(spec, &tok, &dev).unwrap().rewards(&batch).unwrap();
        assert_eq!(batched.len(), texts.len());
        for ((text, got), want) in texts.iter().zip(&batched).zip(want) {
            assert!((got - want).abs() < 1e-5, "{spec}: {text:?} scores {got} in a batch, {want} expected");
        }
    }
    assert!(energies.windows(2).all(|w| (w[0] - w[1]).abs() > 1e-3), "each text has its own energy: {energies:?}");
}

#[test]
fn maxent_pg_refuses_a_batch_of_one() {
    // Its leave-one-out baseline gives a lone continuation zero advantage: every update would be
    // a silent no-op.
    let (tok, cfg, params, model) = setup();
    let one = RlConfig { algo: Algo::MaxEntPg, batch_size: 1, tokens: 2, ..RlConfig::default() };
    let err = one.validate(cfg.context, 0).unwrap_err().to_string();
    assert!(err.contains("--batch-size 2"), "{err}");
    assert!(Trainer::new(params, model, &cfg, tok.bos(), one).is_err(), "the library refuses it too");
    let ppo = RlConfig { algo: Algo::Ppo, batch_size: 1, minibatches: 1, tokens: 2, ..RlConfig::default() };
    assert!(ppo.validate(cfg.context, 0).is_ok(), "PPO's normalised advantages are another matter");
}

#[test]
fn ppo_takes_exactly_the_minibatches_asked_for() {
    assert_eq!(rl::even_split(5, 4), vec![2, 1, 1, 1]);
    assert_eq!(rl::even_split(32, 4), vec![8; 4]);
    assert_eq!(rl::even_split(7, 3).iter().sum::<usize>(), 7);
    let (tok, cfg, params, model) = setup();
    let reward = Table((0..cfg.vocab_size).map(|k| (k % 3) as f64).collect());
    // 5 continuations in 4 minibatches used to give ceil(5/4) = 2 per minibatch, so 3 of them.
    let ppo = RlConfig { algo: Algo::Ppo, batch_size: 5, tokens: 3, epochs: 2, minibatches: 4, seed: 2, ..RlConfig::default() };
    let mut trainer = Trainer::new(params, model, &cfg, tok.bos(), ppo).unwrap();
    assert_eq!(trainer.update(&[], &reward, &tok).unwrap().optimizer_steps, 2 * 4);
}

#[test]
fn evaluation_covers_every_prompt() {
    let (tok, cfg, params, model) = setup();
    let prompts: Vec<Vec<u32>> = ["First", "All:", "Citizen"].iter().map(|p| tok.encode(p).unwrap()).collect();
    let rl_cfg = RlConfig { batch_size: 4, tokens: 3, ..RlConfig::default() };
    let mut trainer = Trainer::new(params, model, &cfg, tok.bos(), rl_cfg).unwrap();
    // A reward that counts its calls: continuations score 0, 1, 2, ... in the order they are
    // drawn, so each prompt's mean tells which of them it got.
    struct Calls(std::sync::atomic::AtomicUsize);
    impl Reward for Calls {
        fn reward(&self, _: &str, _: &[u32]) -> anyhow::Result<f64> {
            Ok(self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as f64)
        }
    }
    let calls = Calls(Default::default());
    let e = trainer.evaluate(&prompts, &calls, &tok, 10).unwrap();
    let shares: Vec<usize> = e.per_prompt.iter().map(|p| p.continuations).collect();
    assert_eq!(shares, vec![4, 3, 3], "10 continuations over 3 prompts");
    assert_eq!(e.samples.len(), 10);
    // Rewards 0..=9 in order: the prompts' means are 1.5, 5 and 8, the overall mean 4.5.
    let means: Vec<f64> = e.per_prompt.iter().map(|p| p.reward).collect();
    assert_eq!(means, vec![1.5, 5.0, 8.0]);
    assert!((e.reward - 4.5).abs() < 1e-12, "{}", e.reward);
    assert!(e.per_prompt.iter().all(|p| p.kl.abs() < 1e-6), "the policy is still the reference");
}

#[test]
fn rl_leaves_its_source_untouched_and_its_output_resumes_with_fresh_moments() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = common::trained(tmp.path());
    // An interrupted commit in the source: a reader sees the committed files, a writer would
    // finish it by renaming. rl must only read.
    std::fs::copy(ck.join("state.json"), ck.join("state.json.tmp")).unwrap();
    std::fs::write(ck.join(".commit"), "step 4\n").unwrap();
    let listing = |dir: &std::path::Path| -> Vec<(String, Vec<u8>)> {
        let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
            .collect();
        files.sort();
        files
    };
    let before = listing(&ck);
    let out = tmp.path().join("rl");
    let o = common::run(&[
        "rl", "--checkpoint", ck.to_str().unwrap(), "--out", out.to_str().unwrap(), "--reward", "contains:e", "--steps", "2",
        "--batch-size", "4", "--tokens", "6", "--no-progress",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(listing(&ck), before, "rl wrote to its source");
    // No moments from rl's objective and step count: a resume starts fresh ones.
    let opt = candle_core::safetensors::load(out.join("optimizer.safetensors"), &Device::Cpu).unwrap();
    assert!(opt.is_empty(), "rl saved {} optimizer tensors", opt.len());
    let corpus = tmp.path().join("corpus.txt");
    let mut resume = common::tiny_train_flags(corpus.to_str().unwrap(), out.to_str().unwrap());
    resume.extend(["--resume", "--steps", "6"]);
    let o = common::run(&resume);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("AdamW's moments start from zero"));
}
