"""The ``edgeinfer`` command line. Converter imports stay inside ``convert`` (lazy)."""
from __future__ import annotations

import errno
import functools
import json
import os
import sys
import warnings
from pathlib import Path

import click

from .errors import EdgeInferError


def _fail(msg: str, code: int = 2) -> None:
    click.echo(f"error: {msg}", err=True)
    sys.exit(code)


def user_errors(fn):
    """Turn EdgeInferError (and a few environment errors) into one line + non-zero exit."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        warnings.showwarning = lambda message, *a, **k: click.echo(f"warning: {message}", err=True)
        try:
            return fn(*args, **kwargs)
        except EdgeInferError as exc:
            _fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except BrokenPipeError:  # `edgeinfer ... | head`: the reader left; stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        except MemoryError:
            _fail("out of memory; use fewer --calib images or a smaller batch")
        except OSError as exc:
            if exc.errno in _DISK_ERRORS:
                _fail(f"cannot write {exc.filename or 'a file'}: {exc.strerror}; free space, fix the permissions "
                      "or choose another path")
            _internal(exc)
        except Exception as exc:
            _internal(exc)
    return wrapper


_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR}


def _internal(exc: Exception) -> None:
    """An unexpected exception still gets one line (exit 3); EDGEINFER_DEBUG=1 shows the traceback."""
    if os.environ.get("EDGEINFER_DEBUG"):
        raise exc
    first = str(exc).splitlines()[0] if str(exc) else ""
    _fail(f"internal error ({exc.__class__.__name__}: {first}); rerun with EDGEINFER_DEBUG=1 and report it", 3)


class _Group(click.Group):
    """Usage errors (bad option value, missing argument, unknown command) as one `error:` line too."""

    def main(self, *args, **kwargs):
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.UsageError as exc:
            if isinstance(exc, getattr(click.exceptions, "NoArgsIsHelpError", ())):
                exc.show()  # bare `edgeinfer` / `edgeinfer profiles`-style groups: the help text, as click does
                sys.exit(exc.exit_code)
            command = exc.ctx.command_path if exc.ctx else "edgeinfer"
            _fail(f"{exc.format_message().rstrip('.')}; see `{command} --help`", exc.exit_code)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except click.Abort:
            _fail("interrupted", 130)


def _floats(name: str, value: str | None) -> list[float] | None:
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise EdgeInferError(f"--{name} must be comma-separated numbers like 0.485,0.456,0.406; got {value!r}") from None


def _csv(value: str | None) -> list[str] | None:
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgeinfer")
def main() -> None:
    """Convert models into verified edge bundles and run them."""


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--profile", "profiles", multiple=True, required=True, help="Device profile name (repeatable).")
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output folder; one bundle per profile.")
@click.option("--quant", help="Precisions, comma-separated: fp32,fp16,int8,int4 (default: the profile's recipe).")
@click.option("--formats", help="Formats, comma-separated: onnx,tflite,coreml (default: the profile's preferred).")
@click.option("--calib", "calib_dir", type=click.Path(path_type=Path), help="Folder of calibration images.")
@click.option("--calib-method", type=click.Choice(["minmax", "mse", "percentile", "entropy"]), default="minmax",
              show_default=True, help="Activation ranges; mse: min/max clipped to the least-squared-error range.")
@click.option("--calib-limit", type=click.IntRange(min=1), help="Use at most N calibration images.")
@click.option("--calib-synthetic", is_flag=True, help="Allow int8 without calibration images (random inputs; recorded in the manifest).")
@click.option("--verify-data", "verify_dir", type=click.Path(path_type=Path), help="Held-out images for verification (default: 20% of --calib).")
@click.option("--labels", "labels_file", type=click.Path(path_type=Path), help="Labels file, one per line.")
@click.option("--task", type=click.Choice(["classify", "detect"]), help="Default: from model metadata, else classify.")
@click.option("--preset", help="Preprocessing preset: imagenet, inception, yolo, raw.")
@click.option("--mean", help="Per-channel mean after scaling to 0..1, e.g. 0.485,0.456,0.406.")
@click.option("--std", help="Per-channel std, e.g. 0.229,0.224,0.225.")
@click.option("--scale", type=float, help="Pixel multiplier applied before mean/std (default 1/255).")
@click.option("--resize", type=click.IntRange(min=1), help="Resize: shorter side to N (with --crop) or N x N.")
@click.option("--crop", type=click.IntRange(min=1), help="Center crop N x N after --resize.")
@click.option("--letterbox", type=click.IntRange(min=1), help="Letterbox to N x N keeping aspect (detectors).")
@click.option("--layout", type=click.Choice(["NHWC", "NCHW"]), help="Input layout of the TFLite artifact (default NHWC).")
@click.option("--color", type=click.Choice(["rgb", "bgr", "gray"]))
@click.option("--tflite-io", type=click.Choice(["float32", "int8", "uint8"]), help="I/O dtype of full-int8 TFLite models.")
@click.option("--int8-mode", type=click.Choice(["full", "dynamic"]), help="TFLite int8: full integer (default) or dynamic-range.")
@click.option("--coreml-w8a8", is_flag=True, help="Core ML int8: also quantize activations (W8A8, iOS17+ profiles).")
@click.option("--coreml-fp32-ops", help="Core ML: op groups kept in fp32 (head, pool, stem, stem:N), comma-separated.")
@click.option("--input-shape", help="Fix dynamic input dims, in the model's order: N,C,H,W (or N,H,W,C).")
@click.option("--trust-pickle", is_flag=True, help="Allow pickled PyTorch checkpoints (loading one runs its code).")
@click.option("--opset", type=click.IntRange(17, 22), help="ONNX opset of the export of PyTorch models.")
@click.option("--decoder", type=click.Choice(["yolov5", "yolov8", "ssd"]), help="Detection decoder.")
@click.option("--anchors", type=click.Path(path_type=Path),
              help="Anchors: JSON file (ssd / yolov5) or an SSD preset name, e.g. blazeface-front-128.")
@click.option("--score-threshold", type=float)
@click.option("--iou-threshold", type=float)
@click.option("--max-detections", type=click.IntRange(min=1))
@click.option("--nms", type=click.Choice(["hard", "soft-linear", "soft-gaussian", "weighted"]))
@click.option("--prune", "prune_ratio", type=click.FloatRange(0.0, 0.95), help="Fraction of channels removed per prunable group.")
@click.option("--prune-flops", type=click.FloatRange(0.0, 0.95), help="Target fraction of FLOPs (MACs) removed.")
@click.option("--prune-criterion", type=click.Choice(["l1", "l2", "bn", "activation", "greedy"]), default="activation",
              show_default=True, help="How channels are chosen within a group; greedy: least-squares elimination (ThiNet).")
@click.option("--prune-min-channels", type=click.IntRange(min=1))
@click.option("--prune-allocation", type=click.Choice(["sensitivity", "uniform"]), default="sensitivity", show_default=True,
              help="Spread the cut by measured per-group sensitivity, or cut every group alike.")
@click.option("--prune-resolution", is_flag=True,
              help="Let the MAC budget lower the input size too (MobileNet's resolution multiplier), weighed against "
              "channels by measured sensitivity; classifiers with global pooling only. The bundle's input size and "
              "preprocessing change with it.")
@click.option("--recover", type=click.Choice(["none", "lsq", "distill", "blockwise", "blockwise+distill"]), default="lsq",
              show_default=True,
              help="After pruning: least-squares refit, or that plus training against the unpruned model (needs "
              "edgeinfer[train]): end-to-end distillation, block by block on cached block outputs, or block by "
              "block then an end-to-end pass on cached teacher logits.")
@click.option("--recover-budget", type=click.FloatRange(min=1.0),
              help="Training time budget in seconds (distill: default 900; blockwise: default 600; "
              "blockwise+distill: default 900, two thirds block by block).")
@click.option("--keep-float", help="Node names kept out of 8 bits in int8 artifacts (float, or 16-bit activations "
              "with --int8-fallback int16), comma-separated; shell-style patterns such as '/model.[0-9]/*' allowed.")
@click.option("--int8-fallback", type=click.Choice(["float", "int16"]),
              help="What ONNX int8 artifacts do with the nodes kept out of 8 bits: float, or 16-bit activations with "
              "8-bit weights (A16W8, for NPUs such as Qualcomm's HTP that run it natively). Default: the profile's "
              "[recipe] int8_fallback, else float. TFLite and Core ML keep such nodes in float.")
@click.option("--max-float-macs", type=click.FloatRange(min=0.0, max=1.0),
              help="Detectors on CPU-only profiles: int8 artifacts may keep the start of the graph in float, up to this "
              "share of the model's MACs, until the outputs reach 42 dB SQNR against fp32 (default 0.5; 0: off).")
@click.option("--no-auto-keep-float", is_flag=True, help="Skip the search for int8-sensitive nodes (detectors, --min-agreement).")
@click.option("--search-seconds", type=click.FloatRange(min=1.0), default=45.0, show_default=True,
              help="Time budget of the int8 keep-float search.")
@click.option("--min-agreement", type=float, help="Target agreement with fp32 (0..1): int8 keeps the most sensitive "
              "nodes in float to reach it; fail if an artifact stays below.")
@click.option("--int4-size", type=click.FloatRange(min=0.0, max=1.0, min_open=True),
              help="int4: choose the 4/8-bit mix by size: as many layers at 8 bits as fit in this fraction of the "
              "fp32 weight bytes (e.g. 0.18); the agreement floor still applies. Default (neither this nor "
              "--min-agreement): all layers at 4 bits if they reach agreement 0.93, else as many at 8 bits as "
              "fit halfway in bytes between all-4 and all-8 bits.")
@click.option("--verify-on", type=click.Choice(["host", "emulated"]), default="host", show_default=True,
              help="emulated: also verify arm64 profiles' TFLite/ONNX artifacts on the profile's core under QEMU.")
@click.option("--force", is_flag=True, help="Replace existing bundles.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifests as JSON on stdout.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option("--package", "package_targets", help="Also package each bundle for apps: android, ios, ort-mobile or all "
              "(comma-separated), into OUT/<bundle>-package/.")
@user_errors
def convert(model, profiles, out_dir, quant, formats, calib_dir, calib_method, calib_limit, calib_synthetic, verify_dir,
            labels_file, task, preset, mean, std, scale, resize, crop, letterbox, layout, color, tflite_io, int8_mode, coreml_w8a8, coreml_fp32_ops, input_shape, trust_pickle, opset, decoder, anchors,
            score_threshold, iou_threshold, max_detections, nms, prune_ratio, prune_flops, prune_criterion,
            prune_min_channels, prune_allocation, prune_resolution, recover, recover_budget, keep_float, int8_fallback, max_float_macs, no_auto_keep_float, search_seconds, min_agreement, int4_size, verify_on, force, as_json, quiet,
            package_targets):
    """Convert MODEL (.onnx, .pt2 torch.export program, TorchScript) into one verified bundle per --profile under -o OUT."""
    try:
        from converters.pipeline import ConvertOptions, convert as run_convert, summary_lines
    except ModuleNotFoundError as exc:
        raise EdgeInferError(f"the converter needs {exc.name}; install it with: pip install 'edgeinfer[convert]'") from None
    pre = {"mean": _floats("mean", mean), "std": _floats("std", std), "scale": scale, "color": color}
    if letterbox:
        pre.update(resize_mode="letterbox", letterbox={"size": letterbox, "pad_value": 114, "stride": None})
    elif resize or crop:
        pre.update(resize=resize or crop, crop=crop, resize_mode="shorter" if crop else "stretch")
    post = None
    overrides = {k: v for k, v in dict(score_threshold=score_threshold, iou_threshold=iou_threshold,
                                       max_detections=max_detections, nms=nms).items() if v is not None}
    if anchors and not decoder:
        raise EdgeInferError("--anchors is read by a decoder: pass --decoder ssd|yolov5 with it")
    if decoder or task == "detect":
        from .detection.postprocess import build_detect_postprocess
        if not decoder:
            raise EdgeInferError("--task detect needs --decoder yolov5|yolov8|ssd")
        post = build_detect_postprocess(decoder, anchors_file=anchors, score_threshold=score_threshold,
                                        iou_threshold=iou_threshold, max_detections=max_detections, nms=nms)
        task = "detect"
    prune_cfg = None
    if prune_resolution and prune_ratio is None and prune_flops is None:
        raise EdgeInferError("--prune-resolution spends a pruning budget: pass --prune-flops F (or --prune R) with it")
    if prune_ratio is not None or prune_flops is not None:
        prune_cfg = _prune_config(profiles, prune_ratio, prune_flops, prune_criterion, prune_min_channels, prune_allocation,
                                  recover, recover_budget, prune_resolution)
    opts = ConvertOptions(
        model=model, profiles=list(profiles), out_dir=out_dir, quant=_csv(quant), formats=_csv(formats),
        calib_dir=calib_dir, verify_dir=verify_dir, calib_method=calib_method, calib_synthetic=calib_synthetic,
        calib_limit=calib_limit, labels_file=labels_file, preset=preset, preprocess=pre, task=task, postprocess=post,
        postprocess_overrides={} if post else overrides, prune=prune_cfg, min_agreement=min_agreement, int4_size=int4_size, force=force, progress=not quiet,
        emitter_options={"tflite_io_dtype": tflite_io, "tflite_layout": layout, "int8_mode": int8_mode,
                         "coreml_w8a8": coreml_w8a8, "coreml_fp32_ops": coreml_fp32_ops}, exclude_nodes=_csv(keep_float) or [],
        auto_keep_float=not no_auto_keep_float, search_seconds=search_seconds, int8_fallback=int8_fallback, max_float_macs=max_float_macs,
        input_shape=_input_shape(input_shape), trust_pickle=trust_pickle, opset=opset, verify_on=verify_on)
    pack = None
    if package_targets:
        from converters.package.convert_hook import PackageAfterConvert
        pack = PackageAfterConvert(model, _csv(package_targets) or [], profiles, _csv(formats), out_dir, force, not quiet)
    result = run_convert(opts)
    if as_json:
        click.echo(json.dumps([dict(m, bundle=str(p)) for p, m in zip(result.bundles, result.manifests)], indent=2))
    else:
        for line in summary_lines(result):
            click.echo(line)
    if pack is not None:
        for line in pack.run(result.bundles):
            click.echo(line, err=as_json)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--target", "targets", required=True, help="android, ios, ort-mobile or all (comma-separated or repeated).",
              multiple=True)
@click.option("-o", "--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Output folder; one subfolder per target.")
@click.option("--name", help="Base name of the packaged files (default: the source model's name).")
@click.option("--zip", "as_zip", is_flag=True, help="Also write OUT/<name>-<target>.zip per target.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print each package.json on stdout.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@user_errors
def package(bundle, targets, out_dir, name, as_zip, force, as_json, quiet):
    """Package BUNDLE for apps: Android (LiteRT / MediaPipe), iOS (Core ML + Vision), ONNX Runtime Mobile."""
    try:
        from converters.package import PackageOptions, package_bundle, summary_lines as package_lines
    except ModuleNotFoundError as exc:
        raise EdgeInferError(f"packaging needs {exc.name}; install it with: pip install 'edgeinfer[convert]'") from None
    names = [t for v in targets for t in (_csv(v) or [])]
    result = package_bundle(PackageOptions(bundle=bundle, targets=names, out_dir=out_dir, name=name, zip=as_zip,
                                           force=force, progress=not quiet))
    if as_json:
        click.echo(json.dumps(result.packages, indent=2))
        return
    for line in package_lines(result):
        click.echo(line)


def _input_shape(text):
    from converters.intake.shapes import parse_input_shape
    return parse_input_shape(text)


def _prune_config(profiles, ratio, flops, criterion, min_channels, allocation, recover, recover_budget, resolution=False):
    from converters.prune import PruneConfig
    from converters.prune.blockwise import BlockwiseConfig
    from converters.prune.distill import DistillConfig, final_pass_config
    from .profiles import load_profile
    prof = load_profile(profiles[0]).data.get("prune", {})
    if recover_budget is not None and recover not in ("distill", "blockwise", "blockwise+distill"):
        raise EdgeInferError("--recover-budget limits training: pass it with --recover distill, blockwise or "
                             "blockwise+distill")
    distill = DistillConfig(time_budget=recover_budget) if recover_budget else None
    blockwise = BlockwiseConfig(time_budget=recover_budget) if recover_budget else None
    if recover == "blockwise+distill" and recover_budget:
        blockwise, distill = BlockwiseConfig(time_budget=recover_budget * 2 / 3), final_pass_config(recover_budget / 3)
    return PruneConfig(ratio=ratio, flops_target=flops, criterion=criterion,
                       channel_multiple=prof.get("channel_multiple", 1),
                       min_channels=min_channels or prof.get("min_channels", 1), recover=recover, allocation=allocation,
                       distill=distill, blockwise=blockwise, resolution=resolution)


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--artifact", help="Artifact file of the bundle to run (default: first this host can run).")
@click.option("--top-k", type=click.IntRange(min=1), help="Classes to show per image.")
@click.option("--threads", type=click.IntRange(min=1))
@click.option("--delegate", "delegates", multiple=True, help="LiteRT delegate name or library path (repeatable).")
@click.option("--strict-delegate", is_flag=True, help="Fail instead of falling back to CPU when a delegate is missing.")
@click.option("--batch", type=click.IntRange(min=1), help="Images decoded and run per engine call (default: the profile's, else 8).")
@click.option("--no-verify-hash", is_flag=True, help="Skip the artifact size/sha256 check (for bundles edited on purpose).")
@click.option("--require-signature", type=click.Path(path_type=Path), metavar="KEY.pub",
              help="Refuse the bundle unless manifest.sig is signed by this ed25519 public key.")
@click.option("--save-vis", type=click.Path(path_type=Path), help="Write images with detections drawn into this folder.")
@click.option("--json", "as_json", is_flag=True)
@user_errors
def run(bundle, images, artifact, top_k, threads, delegates, strict_delegate, batch, no_verify_hash, require_signature,
        save_vis, as_json):
    """Run BUNDLE on IMAGES and print the predictions (streamed: memory does not grow with the image count)."""
    from .predictor import Predictor
    pred = Predictor(bundle, artifact=artifact, threads=threads, delegates=list(delegates) or None,
                     strict_delegate=strict_delegate, verify_hash=not no_verify_hash, batch=batch,
                     require_signature=require_signature)
    if save_vis:
        if pred.task != "detect":
            raise EdgeInferError("--save-vis draws detections; this bundle is a classifier")
        from .detection.visualize import draw_detections
        if save_vis.exists() and not save_vis.is_dir():
            raise EdgeInferError(f"--save-vis {save_vis} is a file; give a folder for the drawn images")
        save_vis.mkdir(parents=True, exist_ok=True)
    info = pred.describe()
    rows = []
    if not as_json:
        click.echo(f"{info['artifact']} ({info.get('engine', info['format'])})")
    for img, res in pred.iter_predict(images, top_k=top_k):
        if save_vis:
            draw_detections(img, res, save_vis / (Path(img).stem + "_det.png"))
        if as_json:
            rows.append(dict(image=str(img), **res.to_dict()))
            continue
        click.echo(f"{img}:")
        for line in res.format_lines() or ["(nothing detected)"]:
            click.echo(f"  {line}")
    if as_json:
        click.echo(json.dumps({"bundle": str(bundle), **pred.describe(), "results": rows}, indent=2))


@main.command()
@click.argument("key", type=click.Path(path_type=Path))
@user_errors
def keygen(key):
    """Make an ed25519 key pair for signing bundles: KEY (private, keep it) and KEY.pub (give it to devices)."""
    from .signature import generate_key
    private, public = generate_key(key)
    click.echo(f"private key: {private} (keep it secret)\npublic key:  {public} (run with --require-signature {public})")


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--key", required=True, type=click.Path(path_type=Path), help="ed25519 private key (from `edgeinfer keygen`).")
@user_errors
def sign(bundle, key):
    """Sign BUNDLE (its manifest and labels; the manifest holds every artifact's sha256) into manifest.sig."""
    from .bundle import check_integrity, read_manifest
    from .signature import sign_bundle
    manifest = read_manifest(bundle)
    bad = {f: s for f, s in check_integrity(bundle, manifest).items() if s != "ok"}
    if bad:
        raise EdgeInferError(f"not signing {bundle}: artifacts do not match the manifest ({bad}); re-convert it")
    click.echo(f"signed: {sign_bundle(bundle, key, manifest)}")


@main.group(invoke_without_command=True)
@click.pass_context
@user_errors
def profiles(ctx):
    """List device profiles (or `profiles show NAME`)."""
    if ctx.invoked_subcommand is None:
        from .profiles import all_profiles
        for p in all_profiles():
            click.echo(f"{p.name:<18} {p.display_name:<42} formats={','.join(p.preferred_formats):<14} recipe={','.join(p.default_recipe)}")


@profiles.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@user_errors
def profiles_show(name, as_json):
    """Show one device profile."""
    from .profiles import load_profile
    p = load_profile(name)
    if as_json:
        click.echo(json.dumps(p.data, indent=2))
    else:
        click.echo(p.path.read_text().rstrip())


@main.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
@user_errors
def inspect(target, as_json):
    """Describe a bundle (manifest) or a model (.onnx, .tflite); nothing is executed."""
    from .bundle import check_integrity, is_bundle, read_manifest
    if is_bundle(target):
        info = read_manifest(target)
        info["integrity"] = check_integrity(target, info)
    elif target.suffix == ".tflite" or _file_head(target)[4:8] == b"TFL3":
        from .backends.tflite_check import describe_tflite
        info = describe_tflite(target)   # read and checked, never loaded into an interpreter
    else:
        try:
            from converters.inspect import inspect_model
        except ModuleNotFoundError as exc:
            raise EdgeInferError(f"inspecting a model needs {exc.name}; install 'edgeinfer[convert]'") from None
        info = inspect_model(target)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for line in _describe(info):
        click.echo(line)


def _file_head(path: Path, n: int = 8) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def _describe(info: dict) -> list[str]:
    lines = []
    for key, value in info.items():
        if key == "artifacts":
            lines.append("artifacts:")
            for a in value:   # a hand-edited manifest may hold anything here: print what is there
                v = a.get("verification") if isinstance(a.get("verification"), dict) else {}
                size = a.get("size")
                mb = f"{size / 1e6:8.3f} MB" if isinstance(size, (int, float)) else f"{'?':>8} MB"
                lines.append(f"  {a['file']:<32} {a['format']:<7} {str(a.get('precision')):<5} {mb}  "
                             + "  ".join(f"{k}={v[k]:.4g}" if isinstance(v[k], (int, float)) else f"{k}={v[k]!r}"
                                         for k in ("max_abs_error", "cosine", "top1_agreement", "map50_agreement") if k in v))
        elif isinstance(value, (dict, list)):
            lines.append(f"{key}: {json.dumps(value)}")
        else:
            lines.append(f"{key}: {value}")
    return lines


@main.command("eval")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option("--artifact", help="Evaluate only this artifact (default: every artifact this host can run).")
@click.option("--score-threshold", type=float, default=0.001, show_default=True, help="Detection score threshold for mAP.")
@click.option("--threads", type=click.IntRange(min=1))
@click.option("--no-verify-hash", is_flag=True, help="Skip the artifact size/sha256 check (for bundles edited on purpose).")
@click.option("--require-signature", type=click.Path(path_type=Path), metavar="KEY.pub",
              help="Refuse the bundle unless manifest.sig is signed by this ed25519 public key.")
@click.option("--json", "as_json", is_flag=True)
@user_errors
def eval_cmd(bundle, data, artifact, score_threshold, threads, no_verify_hash, require_signature, as_json):
    """Evaluate BUNDLE on DATA: image folder (classify) or COCO JSON / folder with annotations.json (detect)."""
    from .evaluate import format_report, run_eval
    report = run_eval(bundle, data, artifact=artifact, progress=not as_json, score_threshold=score_threshold,
                      threads=threads, verify_hash=not no_verify_hash, require_signature=require_signature)
    click.echo(json.dumps(report, indent=2) if as_json else "\n".join(format_report(report)))


@main.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--artifact", help="Benchmark only this artifact (default: every artifact this host can run).")
@click.option("--threads", type=click.IntRange(min=1), help="Engine threads (default: the profile's).")
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True, help="Timed runs per artifact.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Untimed runs first.")
@click.option("--image", type=click.Path(path_type=Path), help="Image to run (default: a synthetic 640x480 photo).")
@click.option("--no-ops", is_flag=True, help="Skip the per-op profile (ONNX Runtime profiler).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--plot", type=click.Path(path_type=Path), help="Write a bar chart of the p50 stages to this PNG.")
@user_errors
def bench(bundle, artifact, threads, runs, warmup, image, no_ops, as_json, plot):
    """Time BUNDLE on this device: load, p50/p90/p99 per stage, peak RSS, slowest ops."""
    from .bench import bench_bundle, format_report, plot as plot_png
    if plot is not None and plot.suffix.lower() != ".png":
        raise EdgeInferError(f"--plot writes a PNG; give a file name ending in .png, not {plot.name!r}")
    if plot is not None and plot.parent and not plot.parent.is_dir():
        raise EdgeInferError(f"--plot {plot}: folder {plot.parent} does not exist")
    rep = bench_bundle(bundle, artifact=artifact, threads=threads, runs=runs, warmup=warmup, image=image,
                       profile_ops=not no_ops, progress=not as_json)
    if plot is not None:
        rep["plot"] = str(plot_png(rep, plot))
    click.echo(json.dumps(rep, indent=2) if as_json else "\n".join(format_report(rep)))


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="edgeinfer")
