"""kiln_model: compile a model with kiln as a hermetic Bazel action.

Every file kiln reads is a declared input (the config, the model and its external data, calibration and
validation data, device profiles: `data`), every file it writes a declared output (the report, the manifest,
one directory per target), and the command line holds nothing machine-specific, so the action runs in
Bazel's sandbox, is cached by its inputs' digests, and can run on any Remote Execution API service
(`--remote_executor=grpcs://...`); the kiln executable itself is an input (`kiln`), so a new kiln
rebuilds the models.

    load("//bazel:kiln.bzl", "kiln_model")

    kiln_model(
        name = "digits",
        config = "digits.yaml",           # paths inside it are relative to it, as always
        model = "models/digits_se.onnx",  # plus `models/digits_se.onnx.data` in data, if any
        data = glob(["models/digits_se_*.npy"]),
        targets = ["phone-int8", "coral"],
    )

Outputs: `<name>/report.json`, `<name>/report.html`, `<name>/manifest.json` and a directory
`<name>/<target>` per target.
"""

def _kiln_model_impl(ctx):
    name = ctx.label.name
    manifest = ctx.actions.declare_file(name + "/manifest.json")
    report = ctx.actions.declare_file(name + "/report.json")
    html = ctx.actions.declare_file(name + "/report.html")
    dirs = [ctx.actions.declare_directory(name + "/" + t) for t in ctx.attr.targets]
    args = ctx.actions.args()
    args.add("build")
    args.add(ctx.file.config)
    args.add("--out-dir", manifest.dirname)
    args.add("--force")  # Bazel decides what is up to date
    args.add("--quiet")
    for t in ctx.attr.targets:
        args.add("--target", t)
    ctx.actions.run(
        executable = ctx.executable.kiln,
        arguments = [args],
        inputs = [ctx.file.config] + ctx.files.model + ctx.files.data,
        outputs = [manifest, report, html] + dirs,
        mnemonic = "KilnBuild",
        progress_message = "kiln: building %s" % ctx.label,
        env = {"CI": "1"},
    )
    return [DefaultInfo(files = depset([manifest, report, html] + dirs))]

kiln_model = rule(
    implementation = _kiln_model_impl,
    doc = "Compile a model with `kiln build`: one directory of artifacts per target.",
    attrs = {
        "config": attr.label(allow_single_file = [".yaml", ".yml"], mandatory = True),
        "model": attr.label_list(allow_files = True, mandatory = True, doc = "The .onnx (and its external data)."),
        "data": attr.label_list(allow_files = True, doc = "Calibration and validation data, device profiles."),
        "targets": attr.string_list(mandatory = True, allow_empty = False, doc = "Target names of the config to build."),
        "kiln": attr.label(executable = True, cfg = "exec", allow_single_file = True, default = "//tools:kiln"),
    },
)
