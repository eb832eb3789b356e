//! Accuracy of an artifact's model against the fp32 reference, measured with tract on validation data:
//! top-1 agreement, mean cosine similarity and SQNR of the first output, and label accuracy when labels
//! are given. (The tests check the same artifacts independently with onnxruntime.)
use serde::Serialize;

use crate::error::{Error, Result};
use crate::eval::Evaluator;
use crate::ir::{Model, TensorData};

/// Agreement metrics of a candidate against the reference.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Metrics {
    pub samples: usize,
    pub top1_agreement: f64,
    pub mean_cosine: f64,
    pub sqnr_db: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy_reference: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accuracy: Option<f64>,
}

/// Index of the largest value (the first on ties).
pub fn argmax(v: &[f64]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f64::NEG_INFINITY), |b, (i, x)| if *x > b.1 { (i, *x) } else { b })
        .0
}

/// Compare `candidate` with `reference` on `samples` (fed to `input`); `labels` are class indices.
pub fn compare(
    reference: &Model,
    candidate: &Model,
    input: &str,
    samples: &[TensorData],
    labels: Option<&[i64]>,
) -> Result<Metrics> {
    let refs = reference_outputs(reference, input, samples)?;
    compare_with(&refs, candidate, input, samples, labels)
}

/// The reference's first output on every sample, to compare many candidates against
/// ([`compare_with`]) without running the reference each time.
pub fn reference_outputs(
    reference: &Model,
    input: &str,
    samples: &[TensorData],
) -> Result<Vec<Vec<f64>>> {
    let first = samples.first().ok_or_else(|| Error::Input {
        name: input.into(),
        reason: "no validation samples".into(),
    })?;
    let r = Evaluator::new(reference, &[(input.to_string(), first.dtype, first.dims.clone())])?;
    crate::eval::par_map(samples.len(), |i| {
        r.run(&[(input.to_string(), samples[i].clone())])?
            .into_iter()
            .next()
            .and_then(|(_, t)| t.to_f64_vec())
            .ok_or_else(|| Error::Eval("reference produced no numeric output".into()))
    })
}

/// [`compare`] against the reference's outputs ([`reference_outputs`] on the same samples).
pub fn compare_with(
    refs: &[Vec<f64>],
    candidate: &Model,
    input: &str,
    samples: &[TensorData],
    labels: Option<&[i64]>,
) -> Result<Metrics> {
    let first = samples.first().ok_or_else(|| Error::Input {
        name: input.into(),
        reason: "no validation samples".into(),
    })?;
    if refs.len() != samples.len() {
        return Err(Error::Eval(format!(
            "{} reference outputs for {} samples",
            refs.len(),
            samples.len()
        )));
    }
    let fact = [(input.to_string(), first.dtype, first.dims.clone())];
    let c = Evaluator::new(candidate, &fact)?;
    // Runs on two threads; the metrics are summed in sample order (deterministic).
    let outs = crate::eval::par_map(samples.len(), |i| {
        c.run(&[(input.to_string(), samples[i].clone())])?
            .into_iter()
            .next()
            .and_then(|(_, t)| t.to_f64_vec())
            .ok_or_else(|| Error::Eval("candidate produced no numeric output".into()))
    })?;
    metrics(refs, &outs, labels)
}

/// Agreement metrics of the candidate's first outputs `outs` against `refs` (one Vec per sample).
pub fn metrics(refs: &[Vec<f64>], outs: &[Vec<f64>], labels: Option<&[i64]>) -> Result<Metrics> {
    if refs.len() != outs.len() {
        return Err(Error::Eval(format!(
            "{} reference outputs for {} samples",
            refs.len(),
            outs.len()
        )));
    }
    let (mut agree, mut cos, mut sig, mut noise, mut hit_r, mut hit_c) =
        (0usize, 0.0f64, 0.0f64, 0.0f64, 0usize, 0usize);
    for (i, (a, b)) in refs.iter().zip(outs).enumerate() {
        if a.len() != b.len() {
            return Err(Error::Eval(format!("output sizes differ: {} vs {}", a.len(), b.len())));
        }
        let (ia, ib) = (argmax(a), argmax(b));
        agree += usize::from(ia == ib);
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let (na, nb) = (
            a.iter().map(|x| x * x).sum::<f64>().sqrt(),
            b.iter().map(|x| x * x).sum::<f64>().sqrt(),
        );
        cos += dot / (na * nb).max(1e-30);
        sig += na * na;
        noise += a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>();
        if let Some(l) = labels.and_then(|l| l.get(i)) {
            hit_r += usize::from(ia as i64 == *l);
            hit_c += usize::from(ib as i64 == *l);
        }
    }
    let n = outs.len() as f64;
    Ok(Metrics {
        samples: outs.len(),
        top1_agreement: agree as f64 / n,
        mean_cosine: cos / n,
        sqnr_db: 10.0 * (sig / noise.max(1e-30)).log10(),
        accuracy_reference: labels.map(|_| hit_r as f64 / n),
        accuracy: labels.map(|_| hit_c as f64 / n),
    })
}

/// SQNR (dB) of every named value of `candidate` against the same value of `reference`, over `samples`:
/// the per-layer table of the report. Values missing from either model are skipped.
pub fn value_sqnr(
    reference: &Model,
    candidate: &Model,
    input: &str,
    samples: &[TensorData],
    names: &[String],
) -> Result<Vec<(String, f64)>> {
    let Some(first) = samples.first() else { return Ok(Vec::new()) };
    let shared: Vec<&String> = names
        .iter()
        .filter(|n| reference.graph.find(n).is_some() && candidate.graph.find(n).is_some())
        .collect();
    if shared.is_empty() {
        return Ok(Vec::new());
    }
    let probe = |m: &Model| -> Result<Evaluator> {
        let mut p = m.clone();
        p.graph.outputs = shared.iter().filter_map(|n| m.graph.find(n)).collect();
        Evaluator::new(&p, &[(input.to_string(), first.dtype, first.dims.clone())])
    };
    let (r, c) = (probe(reference)?, probe(candidate)?);
    let mut sig = vec![0f64; shared.len()];
    let mut noise = vec![0f64; shared.len()];
    for s in samples {
        let feed = [(input.to_string(), s.clone())];
        for (k, ((_, a), (_, b))) in r.run(&feed)?.iter().zip(c.run(&feed)?.iter()).enumerate() {
            let (Some(a), Some(b)) = (a.to_f64_vec(), b.to_f64_vec()) else { continue };
            sig[k] += a.iter().map(|x| x * x).sum::<f64>();
            noise[k] += a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>();
        }
    }
    Ok(shared
        .into_iter()
        .enumerate()
        .map(|(k, n)| (n.clone(), 10.0 * (sig[k].max(1e-30) / noise[k].max(1e-30)).log10()))
        .collect())
}
