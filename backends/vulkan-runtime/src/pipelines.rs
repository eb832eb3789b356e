//! Shader modules and compute pipelines (all created in one call through a `VkPipelineCache` that can be
//! seeded from, and written back to, a file).
use std::path::{Path, PathBuf};

use ash::vk;

use crate::error::Error;
use crate::resources::Resources;

/// Read the cache file's bytes; a missing file is an empty cache.
fn read_cache(path: &Path) -> Result<Vec<u8>, Error> {
    match std::fs::read(path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(Error::Io { path: path.to_path_buf(), source }),
    }
}

/// Write the cache file atomically: a temporary file in the same directory, then a rename.
fn write_cache(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    let tmp = dir.join(name);
    let result = std::fs::write(&tmp, bytes)
        .map_err(|source| Error::Io { path: tmp.clone(), source })
        .and_then(|()| {
            std::fs::rename(&tmp, path)
                .map_err(|source| Error::Io { path: path.to_path_buf(), source })
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Create the pipeline cache, from `initial` if the driver accepts it, else empty.
fn create_cache(d: &ash::Device, initial: &[u8]) -> Result<vk::PipelineCache, Error> {
    let info = vk::PipelineCacheCreateInfo::default().initial_data(initial);
    // SAFETY: valid create info.
    match unsafe { d.create_pipeline_cache(&info, None) } {
        Ok(c) => Ok(c),
        Err(_) if !initial.is_empty() => {
            let empty = vk::PipelineCacheCreateInfo::default();
            // SAFETY: valid create info.
            unsafe { d.create_pipeline_cache(&empty, None) }
                .map_err(Error::vk("vkCreatePipelineCache"))
        }
        Err(result) => Err(Error::Vk { call: "vkCreatePipelineCache", result }),
    }
}

/// Create one compute pipeline per module (SPIR-V words) into `res.pipelines` (then drop the modules), going through the
/// cache at `cache_path` if given; the cache is written back when its contents changed.
pub(crate) fn create_pipelines(
    res: &mut Resources,
    modules: &[Vec<u32>],
    cache_path: Option<&Path>,
) -> Result<(), Error> {
    let d = res.device.clone();
    for words in modules {
        let info = vk::ShaderModuleCreateInfo::default().code(words);
        // SAFETY: valid create info; the handle is stored in `res` at once.
        let module = unsafe { d.create_shader_module(&info, None) }
            .map_err(Error::vk("vkCreateShaderModule"))?;
        res.modules.push(module);
    }
    let initial = match cache_path {
        Some(p) => read_cache(p)?,
        None => Vec::new(),
    };
    res.cache = create_cache(&d, &initial)?;
    if !res.modules.is_empty() {
        let infos: Vec<vk::ComputePipelineCreateInfo<'_>> = res
            .modules
            .iter()
            .map(|&module| {
                let stage = vk::PipelineShaderStageCreateInfo::default()
                    .stage(vk::ShaderStageFlags::COMPUTE)
                    .module(module)
                    .name(c"main");
                vk::ComputePipelineCreateInfo::default().stage(stage).layout(res.pipeline_layout)
            })
            .collect();
        // SAFETY: the infos reference live modules, layout and cache.
        match unsafe { d.create_compute_pipelines(res.cache, &infos, None) } {
            Ok(p) => res.pipelines = p,
            Err((partial, result)) => {
                res.pipelines =
                    partial.into_iter().filter(|p| *p != vk::Pipeline::null()).collect();
                return Err(Error::Vk { call: "vkCreateComputePipelines", result });
            }
        }
    }
    res.destroy_modules();
    if let Some(path) = cache_path {
        // SAFETY: the cache is live and not in use by another thread.
        let data = unsafe { d.get_pipeline_cache_data(res.cache) }
            .map_err(Error::vk("vkGetPipelineCacheData"))?;
        if data != initial {
            write_cache(path, &data)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_file_round_trip() {
        let dir = std::env::temp_dir().join(format!("kiln-vk-cache-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.bin");
        assert!(read_cache(&path).unwrap().is_empty());
        write_cache(&path, b"abc").unwrap();
        assert_eq!(read_cache(&path).unwrap(), b"abc");
        assert!(write_cache(&dir.join("missing/c.bin"), b"x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
