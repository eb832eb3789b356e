//! Calibration and validation data: `.npy` tensors (samples along axis 0) or a folder of images with the
//! YAML's preprocessing (resize, center crop, scale to [0, 1], mean/std, channel order, layout).
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ir::TensorData;

/// Image preprocessing, as a model's training pipeline did it.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Resize so the image is `resize`×`resize` (bilinear) before cropping.
    #[serde(default)]
    pub resize: Option<u32>,
    /// Center crop to `crop`×`crop`.
    #[serde(default)]
    pub crop: Option<u32>,
    #[serde(default = "default_mean")]
    pub mean: Vec<f32>,
    #[serde(default = "default_std")]
    pub std: Vec<f32>,
    /// `rgb` or `bgr`.
    #[serde(default = "default_order")]
    pub channel_order: String,
    /// `nchw` or `nhwc`.
    #[serde(default = "default_layout")]
    pub layout: String,
}

fn default_mean() -> Vec<f32> {
    vec![0.0, 0.0, 0.0]
}
fn default_std() -> Vec<f32> {
    vec![1.0, 1.0, 1.0]
}
fn default_order() -> String {
    "rgb".into()
}
fn default_layout() -> String {
    "nchw".into()
}

impl Default for Preprocess {
    fn default() -> Self {
        Preprocess {
            resize: None,
            crop: None,
            mean: default_mean(),
            std: default_std(),
            channel_order: default_order(),
            layout: default_layout(),
        }
    }
}

/// Where samples come from.
#[derive(Clone, Debug)]
pub enum Source {
    Images { dir: PathBuf, preprocess: Preprocess },
    Tensors(PathBuf),
}

fn npy_samples(path: &Path, limit: usize) -> Result<Vec<TensorData>> {
    let t = crate::npy::read(path)?;
    let Some(&n) = t.dims.first() else {
        return Err(Error::Npy {
            path: path.into(),
            reason: "a scalar holds no samples (expected samples along axis 0)".into(),
        });
    };
    let per = t.bytes().len() / (n.max(1) as usize);
    let mut dims = t.dims.clone();
    dims[0] = 1;
    Ok((0..(n as usize).min(limit))
        .map(|i| {
            TensorData::from_bytes(
                t.dtype,
                dims.clone(),
                t.bytes()[i * per..(i + 1) * per].to_vec(),
            )
        })
        .collect())
}

/// Decode and preprocess one image into a [1, 3, H, W] (or [1, H, W, 3]) f32 tensor.
pub fn load_image(path: &Path, p: &Preprocess) -> Result<TensorData> {
    let err = |reason: String| Error::Input { name: path.display().to_string(), reason };
    let img = image::open(path).map_err(|e| err(format!("cannot decode image: {e}")))?.to_rgb8();
    let img = match p.resize {
        Some(r) if img.width() != r || img.height() != r => {
            image::imageops::resize(&img, r, r, image::imageops::FilterType::Triangle)
        }
        _ => img,
    };
    let (w, h) = (img.width(), img.height());
    let (cw, ch) = p.crop.map(|c| (c.min(w), c.min(h))).unwrap_or((w, h));
    let (x0, y0) = ((w - cw) / 2, (h - ch) / 2);
    if p.mean.len() != 3 || p.std.len() != 3 || p.std.contains(&0.0) {
        return Err(err("preprocess mean and std need 3 values each (std non-zero)".into()));
    }
    let bgr = p.channel_order == "bgr";
    let nhwc = p.layout == "nhwc";
    let (hh, ww) = (ch as usize, cw as usize);
    let mut out = vec![0f32; 3 * hh * ww];
    for y in 0..hh {
        for x in 0..ww {
            let px = img.get_pixel(x0 + x as u32, y0 + y as u32);
            for c in 0..3 {
                let src = if bgr { 2 - c } else { c };
                let v = (px[src] as f32 / 255.0 - p.mean[c]) / p.std[c];
                let idx = if nhwc { (y * ww + x) * 3 + c } else { c * hh * ww + y * ww + x };
                out[idx] = v;
            }
        }
    }
    let dims =
        if nhwc { vec![1, hh as i64, ww as i64, 3] } else { vec![1, 3, hh as i64, ww as i64] };
    Ok(TensorData::from_f32(dims, &out))
}

/// Load up to `limit` samples (each with batch dim 1), in a deterministic order.
pub fn load(source: &Source, limit: usize) -> Result<Vec<TensorData>> {
    match source {
        Source::Tensors(p) => npy_samples(p, limit),
        Source::Images { dir, preprocess } => {
            image_files(dir, limit)?.iter().map(|f| load_image(f, preprocess)).collect()
        }
    }
}

/// The images (.jpg/.jpeg/.png) of a folder, sorted by name, at most `limit`; an empty folder is an error.
pub fn image_files(dir: &Path, limit: usize) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        })
        .collect();
    if files.is_empty() {
        return Err(Error::Input {
            name: dir.display().to_string(),
            reason: "no .jpg/.jpeg/.png images in this folder".into(),
        });
    }
    files.sort();
    files.truncate(limit);
    Ok(files)
}
