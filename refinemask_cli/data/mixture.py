"""Several datasets sampled by weight, with augmentation that depends only on (seed, step, slot).

Because every random choice is derived from the training seed and the step number, a run resumed
at step k sees exactly the batches an uninterrupted run would, whatever the number of loader
workers; and ranks of a distributed run take disjoint slots of the same global batch.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import cv2
import numpy as np
from torch.utils.data import Dataset, Sampler

from .coco_dataset import CocoInstances, hflip, to_sample


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    boxes = np.zeros((len(masks), 4), dtype=np.float32)
    for k, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if len(xs):
            boxes[k] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    return boxes


def copy_paste(base, other, rng: np.random.Generator, min_area: int = 16):
    """Paste ``other``'s instances (resized to ``base``'s size) over ``base``; occluded parts are removed."""
    img, masks, boxes, labels = base
    o_img, o_masks, _, o_labels = other
    if len(o_masks) == 0:
        return base
    h, w = img.shape[:2]
    keep = rng.random(len(o_masks)) < 0.5
    if not keep.any():
        keep[rng.integers(len(o_masks))] = True
    o_img = cv2.resize(o_img, (w, h), interpolation=cv2.INTER_LINEAR)
    o_masks = np.stack([cv2.resize(m, (w, h), interpolation=cv2.INTER_NEAREST) for m in o_masks[keep]])
    pasted = o_masks.any(axis=0)
    img = img.copy()
    img[pasted] = o_img[pasted]
    masks = masks & ~pasted[None] if len(masks) else masks
    all_masks = np.concatenate([masks, o_masks]) if len(masks) else o_masks
    all_labels = np.concatenate([labels, o_labels[keep]])
    visible = all_masks.reshape(len(all_masks), -1).sum(1) >= min_area
    all_masks, all_labels = all_masks[visible], all_labels[visible]
    return img, all_masks, masks_to_boxes(all_masks), all_labels


def random_crop(sample, scale: tuple[float, float], rng: np.random.Generator, min_area: int = 16, tries: int = 10):
    """A random window of the image, its sides ``scale[0]..scale[1]`` of the image's (the same aspect):
    the model's resize then shows it at the full input size, so its objects are zoomed in. Objects cut
    by the window keep their visible part (at least ``min_area`` pixels; smaller remnants are dropped,
    as copy-paste drops what it covers). A window that keeps no object of an image that had some is
    drawn again, at most ``tries`` times, then the image is left whole."""
    img, masks, _, labels = sample
    h, w = img.shape[:2]
    for _ in range(tries):
        s = rng.uniform(*scale)
        ch, cw = max(1, round(h * s)), max(1, round(w * s))
        y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        window = masks[:, y0 : y0 + ch, x0 : x0 + cw]
        visible = window.sum(axis=(1, 2)) >= min_area  # (n,) also for an image without objects
        if len(masks) and not visible.any():
            continue
        window = window[visible]
        return img[y0 : y0 + ch, x0 : x0 + cw], window, masks_to_boxes(window), labels[visible]
    return sample


def color_jitter(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and saturation, in a random order, each scaled by a factor drawn from
    ``1 ± strength`` (photometric distortion: the same objects under other light and cameras)."""
    x = img.astype(np.float32)
    for op in rng.permutation(3):
        f = rng.uniform(1 - strength, 1 + strength)
        if op == 0:  # brightness
            x = x * f
        elif op == 1:  # contrast, around the image's mean grey
            mean = float(x.mean())
            x = (x - mean) * f + mean
        else:  # saturation, around each pixel's grey
            grey = (x @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
            x = (x - grey) * f + grey
        np.clip(x, 0, 255, out=x)
    return x.round().astype(np.uint8)


def jitter_boxes(boxes: np.ndarray, amount: float, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Loosen/shift boxes by up to ``amount`` of their size on each side (what a hasty box does)."""
    if amount <= 0 or len(boxes) == 0:
        return boxes
    bw = (boxes[:, 2] - boxes[:, 0])[:, None]
    bh = (boxes[:, 3] - boxes[:, 1])[:, None]
    d = rng.uniform(-amount * 0.5, amount, size=(len(boxes), 4))  # more often looser than tighter
    out = boxes + np.concatenate([-d[:, :1] * bw, -d[:, 1:2] * bh, d[:, 2:3] * bw, d[:, 3:] * bh], axis=1)
    out[:, 0::2] = out[:, 0::2].clip(0, w)
    out[:, 1::2] = out[:, 1::2].clip(0, h)
    bad = (out[:, 2] - out[:, 0] < 1) | (out[:, 3] - out[:, 1] < 1)
    out[bad] = boxes[bad]
    return out.astype(np.float32)


class MixedInstances(Dataset):
    """Items are keyed ``(dataset_index, item_index, sample_seed)``."""

    def __init__(self, datasets: Sequence[CocoInstances], flip: float = 0.5, copy_paste: float = 0.0,
                 box_jitter: float = 0.0, *, crop: float = 0.0, crop_scale: tuple[float, float] = (0.5, 1.0),
                 color: float = 0.0):
        self.datasets = list(datasets)
        self.flip = flip
        self.copy_paste = copy_paste
        self.box_jitter = box_jitter
        self.crop, self.crop_scale = crop, crop_scale
        self.color = color

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, key):
        ds_index, item_index, seed = key
        rng = np.random.default_rng(seed)
        ds = self.datasets[ds_index]
        img, masks, boxes, labels, image_id = ds.load(item_index)
        if self.copy_paste and len(ds) > 1 and rng.random() < self.copy_paste:
            other_index = int(rng.integers(len(ds) - 1))
            other_index += other_index >= item_index
            o_img, o_masks, o_boxes, o_labels, _ = ds.load(other_index)
            img, masks, boxes, labels = copy_paste((img, masks, boxes, labels), (o_img, o_masks, o_boxes, o_labels), rng)
        if self.crop and rng.random() < self.crop:
            img, masks, boxes, labels = random_crop((img, masks, boxes, labels), self.crop_scale, rng)
        if rng.random() < self.flip:
            img, masks, boxes = hflip(img, masks, boxes)
        if self.color:
            img = color_jitter(img, self.color, rng)
        boxes = jitter_boxes(boxes, self.box_jitter, img.shape[0], img.shape[1], rng)
        return to_sample(img, masks, boxes, labels, image_id, ds.every_object)


class StepBatchSampler(Sampler):
    """Batches of keys for steps ``start..total-1``; step ``s`` depends only on ``(seed, s)``.

    Each step draws ``batch_size * world_size`` slots: a dataset by weight, then an item uniformly;
    rank ``r`` takes slots ``r*batch_size .. (r+1)*batch_size - 1``.
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], batch_size: int, seed: int,
                 start: int, total: int, rank: int = 0, world_size: int = 1):
        if any(s < 1 for s in sizes):
            raise ValueError("every training dataset needs at least one image")
        w = np.asarray(weights, dtype=np.float64)
        if (w <= 0).any():
            raise ValueError("dataset weights must be > 0")
        self.p = w / w.sum()
        self.sizes = list(sizes)
        self.batch_size, self.seed = batch_size, seed
        self.start, self.total = start, total
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def batch_for_step(self, step: int) -> list[tuple[int, int, int]]:
        rng = np.random.default_rng([self.seed, step])
        n = self.batch_size * self.world_size
        ds = rng.choice(len(self.sizes), size=n, p=self.p)
        items = [int(rng.integers(self.sizes[d])) for d in ds]
        seeds = rng.integers(0, 2**31 - 1, size=n)
        keys = [(int(d), i, int(s)) for d, i, s in zip(ds, items, seeds)]
        lo = self.rank * self.batch_size
        return keys[lo : lo + self.batch_size]

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        for step in range(self.start, self.total):
            yield self.batch_for_step(step)
