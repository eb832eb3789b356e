//! Quantization ranges from calibration statistics.
//!
//! - `minmax`: the observed range.
//! - `percentile`: |x| below which `p` % of values fall (default 99.99).
//! - `entropy`: TensorRT's KL-divergence threshold search over the |x| histogram (128 quantized levels).
//! - `mse`: the threshold minimizing expected squared error (clipping + rounding) over the histogram.
use kiln_compiler::calib::{TensorStats, BINS};

/// Calibration method.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Method {
    MinMax,
    Percentile(f64),
    Entropy,
    Mse,
}

impl Method {
    pub fn parse(s: &str, percentile: Option<f64>) -> Option<Method> {
        Some(match s {
            "minmax" => Method::MinMax,
            "percentile" => Method::Percentile(percentile.unwrap_or(99.99)),
            "entropy" => Method::Entropy,
            "mse" => Method::Mse,
            _ => return None,
        })
    }
}

/// The clipping threshold (amax) for a tensor.
pub fn amax(s: &TensorStats, m: Method) -> f32 {
    let full = s.absmax();
    let total: u64 = s.hist.iter().sum();
    if full <= 0.0 || total == 0 || s.hist.len() != BINS || s.hist_max <= 0.0 {
        return full;
    }
    let w = s.hist_max / BINS as f32;
    let t = match m {
        Method::MinMax => return full,
        Method::Percentile(p) => {
            let want = (total as f64 * p / 100.0).ceil() as u64;
            let mut acc = 0;
            let mut edge = BINS;
            for (i, c) in s.hist.iter().enumerate() {
                acc += c;
                if acc >= want {
                    edge = i + 1;
                    break;
                }
            }
            edge as f32 * w
        }
        Method::Entropy => entropy_bins(used(s, w)) as f32 * w,
        Method::Mse => mse_bins(used(s, w)) as f32 * w,
    };
    t.clamp(w, full)
}

/// The histogram up to the bin holding max|x| (the range may extend to twice that).
fn used(s: &TensorStats, w: f32) -> &[u64] {
    let last = ((s.absmax() / w).ceil() as usize).clamp(1, s.hist.len());
    &s.hist[..last]
}

/// TensorRT-style KL threshold: the number of leading bins to keep.
fn entropy_bins(hist: &[u64]) -> usize {
    const LEVELS: usize = 128;
    let mut h: Vec<f64> = hist.iter().map(|c| *c as f64).collect();
    // After ReLU, bin 0 holds every exact zero; that spike would pull the threshold down to resolve it.
    // Treat it like its neighbour (as NVIDIA's pytorch-quantization does).
    if h.len() > 1 {
        h[0] = h[1];
    }
    let mut best = (f64::INFINITY, hist.len());
    if hist.len() <= LEVELS {
        return hist.len();
    }
    for i in (LEVELS..=hist.len()).step_by(4) {
        // Reference distribution: first i bins, outliers folded into the last.
        let mut p: Vec<f64> = h[..i].to_vec();
        p[i - 1] += h[i..].iter().sum::<f64>();
        let psum: f64 = p.iter().sum();
        if psum == 0.0 {
            continue;
        }
        // Quantize the first i bins into LEVELS levels, expand back over the non-empty bins.
        let mut q = vec![0.0; i];
        let per = i as f64 / LEVELS as f64;
        for l in 0..LEVELS {
            let (a, b) = ((l as f64 * per) as usize, (((l + 1) as f64 * per) as usize).min(i));
            if a >= b {
                continue;
            }
            let mass: f64 = h[a..b].iter().sum();
            let nonzero = h[a..b].iter().filter(|x| **x > 0.0).count();
            if nonzero == 0 {
                continue;
            }
            for j in a..b {
                if h[j] > 0.0 {
                    q[j] = mass / nonzero as f64;
                }
            }
        }
        let qsum: f64 = q.iter().sum();
        if qsum == 0.0 {
            continue;
        }
        let mut kl = 0.0;
        for j in 0..i {
            let pj = p[j] / psum;
            if pj > 0.0 {
                let qj = (q[j] / qsum).max(1e-12);
                kl += pj * (pj / qj).ln();
            }
        }
        if kl < best.0 {
            best = (kl, i);
        }
    }
    best.1
}

/// Threshold (in bins) minimizing E[(x − q(x))²] for symmetric 8-bit quantization of |x|.
fn mse_bins(hist: &[u64]) -> usize {
    let n = hist.len();
    let mut best = (f64::INFINITY, n);
    if n <= 16 {
        return n;
    }
    for t in (16..=n).step_by(8) {
        let step = t as f64 / 127.0; // in bins
        let mut err = 0.0;
        for (j, c) in hist.iter().enumerate() {
            if *c == 0 {
                continue;
            }
            let x = j as f64 + 0.5;
            let e = if x > t as f64 { x - t as f64 } else { (x - (x / step).round() * step).abs() };
            err += *c as f64 * e * e;
        }
        if err < best.0 {
            best = (err, t);
        }
    }
    best.1
}
