//! The bundle's `build.sh` and `README.txt`: the trtexec commands that turn the bundle into engines on the
//! Jetson, with the flags the named TensorRT version has (TensorRT 8.5+/10.x: `--int8 --fp16`, `--calib`,
//! `--precisionConstraints`/`--layerPrecisions`; 11.x: strongly typed networks only, none of those), and
//! the TensorRT version number a calibration cache's header carries.
use std::fmt::Write as _;

/// A TensorRT version (`trt_version:`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrtVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl TrtVersion {
    /// "10.3", "10.3.0", "8.6.1". kiln knows 8.5–8.6 (JetPack 5), 10.x (JetPack 6) and 11.x.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || {
            format!("trt_version '{s}': expected MAJOR.MINOR[.PATCH] of TensorRT 8.5+, 10.x or 11.x (e.g. \"10.3\")")
        };
        let parts: Vec<&str> = s.trim().split('.').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(bad());
        }
        let num = |p: &str| p.parse::<u32>().map_err(|_| bad());
        let v = TrtVersion {
            major: num(parts[0])?,
            minor: num(parts[1])?,
            patch: parts.get(2).map(|p| num(p)).transpose()?.unwrap_or(0),
        };
        let known = (v.major == 8 && v.minor >= 5) || v.major == 10 || v.major == 11;
        if !known || v.minor > 99 || v.patch > 99 {
            return Err(bad());
        }
        Ok(v)
    }

    /// The integer TensorRT reports and writes in calibration-cache headers: 8601 for 8.6.1, 100300 for
    /// 10.3.0, 101401 for 10.14.1.
    pub fn number(self) -> u32 {
        let m = if self.major >= 10 { 10000 } else { 1000 };
        self.major * m + self.minor * 100 + self.patch
    }

    /// TensorRT 11 removed implicit quantization and precision flags: networks are strongly typed.
    pub fn strongly_typed_only(self) -> bool {
        self.major >= 11
    }
}

impl std::fmt::Display for TrtVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// One engine to build: which ONNX, which engine file, and the precision flags.
pub struct Engine {
    pub what: String,
    pub onnx: String,
    pub engine: String,
    pub precision: Vec<String>,
    pub dla: bool,
}

/// `build.sh` for `engines`.
pub fn build_sh(device: &str, v: TrtVersion, engines: &[Engine], kiln: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "#!/usr/bin/env bash");
    let _ = writeln!(s, "# Written by kiln {kiln}: builds the TensorRT engine(s) of this bundle on the device ({device}).");
    let _ = writeln!(
        s,
        "# Made for TensorRT {v} (trtexec reports v{}); engines are specific to the device and the",
        v.number()
    );
    let _ = writeln!(s, "# TensorRT version, so run this on the Jetson itself.");
    let _ = writeln!(
        s,
        "#   TRTEXEC        trtexec to use (default: on PATH, else /usr/src/tensorrt/bin/trtexec)"
    );
    let _ = writeln!(s, "#   WORKSPACE_MIB  builder workspace in MiB (default 1024)");
    if engines.iter().any(|e| e.dla) {
        let _ = writeln!(s, "#   DLA_CORE       DLA core to build for (default 0)");
    }
    let _ = writeln!(s, "set -euo pipefail");
    let _ = writeln!(s, "cd \"$(dirname \"$0\")\"");
    let _ = writeln!(
        s,
        "TRTEXEC=\"${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}\""
    );
    let _ = writeln!(s, "WORKSPACE_MIB=\"${{WORKSPACE_MIB:-1024}}\"");
    if engines.iter().any(|e| e.dla) {
        let _ = writeln!(s, "DLA_CORE=\"${{DLA_CORE:-0}}\"");
    }
    let _ = writeln!(s, "if [ ! -x \"$TRTEXEC\" ]; then");
    let _ = writeln!(
        s,
        "  echo \"build.sh: no trtexec at '$TRTEXEC' (install TensorRT, or set TRTEXEC)\" >&2"
    );
    let _ = writeln!(s, "  exit 1");
    let _ = writeln!(s, "fi");
    let _ = writeln!(
        s,
        "# trtexec prints its version as [TensorRT vNNNNNN]; this bundle was made for v{}.",
        v.number()
    );
    let _ = writeln!(
        s,
        "found=\"$(\"$TRTEXEC\" --help 2>&1 | grep -o 'TensorRT v[0-9]*' | head -n 1 || true)\""
    );
    let _ = writeln!(
        s,
        "if [ -n \"$found\" ] && [ \"${{found#TensorRT v}}\" != \"{}\" ]; then",
        v.number()
    );
    let dla_int8 =
        engines.iter().any(|e| e.dla && e.precision.iter().any(|p| p.starts_with("--calib")));
    if dla_int8 {
        let _ = writeln!(s, "  echo \"build.sh: this bundle's calibration cache is for TensorRT v{}, trtexec is $found: rebuild the bundle with kiln and trt_version set to it\" >&2", v.number());
        let _ = writeln!(s, "  exit 1");
    } else {
        let _ = writeln!(
            s,
            "  echo \"build.sh: warning: made for TensorRT v{}, trtexec is $found\" >&2",
            v.number()
        );
    }
    let _ = writeln!(s, "fi");
    for e in engines {
        let _ = writeln!(s);
        let _ = writeln!(s, "# {}", e.what);
        let _ = writeln!(s, "\"$TRTEXEC\" \\");
        let _ = writeln!(s, "  --onnx={} \\", e.onnx);
        for p in &e.precision {
            let _ = writeln!(s, "  {p} \\");
        }
        if e.dla {
            let _ = writeln!(s, "  --useDLACore=\"$DLA_CORE\" \\");
            let _ = writeln!(s, "  --allowGPUFallback \\");
        }
        let _ = writeln!(s, "  --memPoolSize=workspace:\"$WORKSPACE_MIB\"M \\");
        let _ = writeln!(s, "  --timingCacheFile=timing.cache \\");
        let _ = writeln!(s, "  --saveEngine={}", e.engine);
    }
    s
}
