"""`refine` and `predict` under torchrun: two gloo processes on CPU give the bytes one process gives,
and an interrupted sharded run resumes per shard to the same bytes."""
import os
import socket

import pytest
import torch.multiprocessing as mp
from click.testing import CliRunner

from refinemask_cli.cli import main
from refinemask_cli.jobs.shard import Shard

from .cocofix import make_dataset, tiny_weights


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, args, log_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    r = CliRunner().invoke(main, args)
    with open(os.path.join(log_dir, f"rank{rank}.log"), "w") as f:
        f.write(f"exit {r.exit_code}\n{r.output}\n{r.exception!r}\n")
    if dist.is_initialized():
        dist.destroy_process_group()


def torchrun(args, log_dir, world=2):
    mp.spawn(_worker, args=(world, _free_port(), [str(a) for a in args], str(log_dir)), nprocs=world, join=True)
    logs = [(log_dir / f"rank{r}.log").read_text() for r in range(world)]
    assert all(log.startswith("exit 0") for log in logs), logs
    return logs


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_weights(tmp_path_factory.mktemp("w") / "tiny.pt", box_score_thresh=0.0)


def test_shard_takes_every_worlds_batch():
    groups = [[0, 1], [2, 3], [4, 5], [6]]
    assert Shard(0, 2).take(groups) == [[0, 1], [4, 5]] and Shard(1, 2).take(groups) == [[2, 3], [6]]
    assert Shard().take(groups) == groups and Shard().gather("x") == ["x"] and Shard(1, 3).suffix == ".rank1of3"


@pytest.mark.parametrize("batch", ["1", "2"])
def test_two_process_refine_is_byte_identical(weights, tmp_path, batch):
    src = make_dataset(tmp_path, n_images=5)
    common = ["--images", tmp_path, "--weights", weights, "--device", "cpu", "--batch-size", batch]
    r = run("refine", src, "-o", tmp_path / "one.json", "--report", tmp_path / "one.csv", *common)
    assert r.exit_code == 0, r.output
    torchrun(["refine", src, "-o", tmp_path / "two.json", "--report", tmp_path / "two.csv", *common], tmp_path)
    assert (tmp_path / "two.json").read_bytes() == (tmp_path / "one.json").read_bytes()
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    assert not list(tmp_path.glob("two.json.journal*"))  # every rank's journal is gone


def test_sharded_refine_resumes_per_shard(weights, tmp_path):
    """Rank 1's journal survives a killed run (made by hand: one of its images done); the resumed
    sharded run takes it and still writes the single-process bytes."""
    import json

    from refinemask_cli.io.coco import read_coco
    from refinemask_cli.jobs import refine as job
    from refinemask_cli.predictor import Predictor
    from refinemask_cli.weights import load_model

    src = make_dataset(tmp_path, n_images=4)
    common = ["--images", tmp_path, "--weights", weights, "--device", "cpu"]
    assert run("refine", src, "-o", tmp_path / "one.json", *common).exit_code == 0
    out = tmp_path / "two.json"
    model, ckpt = load_model(weights)
    predictor = Predictor(model, device="cpu")
    options = job.RefineOptions()
    shard = Shard(1, 2)
    journal = job.Journal(out, job.fingerprint(src, ckpt, options, predictor.runtime + shard.suffix),
                          shard.suffix)
    journal.start()
    doc = read_coco(src)
    per_image = job.validate_for_refine(doc, tmp_path, options)
    info = doc["images"][1]  # rank 1's first batch
    image, _ = job.load_checked_image(tmp_path, info)
    prep = job.prepare_image(image.shape[0], image.shape[1], per_image[info["id"]], job.model_labels(doc, predictor),
                             options)
    det = predictor.refine_many([(image, prep.boxes, prep.labels, prep.priors)], False, options.settings)[0]
    journal.append(info["id"], json.loads(json.dumps(job.finish_image(det, prep, info, per_image[info["id"]], options))))
    logs = torchrun(["refine", src, "-o", out, "--resume", *common], tmp_path)
    assert "1 from the journal" in " ".join(logs[0].split())
    assert out.read_bytes() == (tmp_path / "one.json").read_bytes()


def test_two_process_predict_is_byte_identical(weights, tmp_path):
    make_dataset(tmp_path, n_images=5)
    common = ["--weights", weights, "--device", "cpu", "--score-threshold", "0", "--max-detections", "4"]
    assert run("predict", tmp_path, "-o", tmp_path / "one.json", *common).exit_code == 0
    torchrun(["predict", tmp_path, "-o", tmp_path / "out" / "two.json", *common], tmp_path)
    assert (tmp_path / "out" / "two.json").read_bytes() == (tmp_path / "one.json").read_bytes()
