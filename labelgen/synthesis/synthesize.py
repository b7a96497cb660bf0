"""Batched synthesis into WebDataset shards, resumable and splittable across workers.

Shard plan (deterministic, from the config alone):
  * S = ``shard_size`` kept samples per shard, F = ``drop_uncertain``. Shard i is made from
    C_i = ceil(S_i / (1 - F)) *candidates* (S_i = S, or what is left for the last shard), candidate
    indices i*C .. i*C + C_i - 1 with C = ceil(S / (1 - F)); the C_i - S_i candidates with the highest
    uncertainty score are dropped (ties: the higher index is dropped).
  * candidate j has seed ``seed_base + j`` and key ``f"{j:09d}"``; kept samples are stored in key order.
  * ``from_images``: candidate j is the j-th image of the folder (sorted by name); shard i holds
    candidates i*C .. (i+1)*C - 1 and keeps all but floor(count * F) of them. The file names and their
    content (sha256) are part of the plan (synthesis.json "images"): resuming over a folder where a
    file changed, appeared or went is refused, naming them.
So a shard's content depends only on the config and the shard id: one run, a resumed run (finished
shards are skipped; ShardWriter.clean_partial removes what a kill left) and K workers under
torchrun (shard i -> rank i % world; labelgen.run.init_dist) write the same samples. The output
folder is locked for the run (a second synthesis into it is refused with the holder's pid).

Per sample (tar members): <key>.png, <key>.mask.png (argmax of the ensemble mean), <key>.json
(seed/recipe or source image, generator id, head id, uncertainty score and measure), and with
``soft_labels="uint8"`` <key>.soft.npz: array "probs" uint8 [C, H, W] = round(255 * mean
probability), deflate-compressed (C*H*W bytes before compression; see docs/benchmarks.md).
Pipeline: the main thread samples batch k+1 (generator, and flipped features for TTA) while one labelling
thread labels batch k (head, mask, uncertainty; on CUDA on its own stream) and writes a shard when its last
batch is labelled; PNG/npz encoding runs in ``encode_workers`` threads (PIL and zlib release the GIL; default
from the CPUs the process may use). Batches are labelled in order, so the shards hold the same samples (member bytes) as
without overlap (``overlap=False``).
"""
from __future__ import annotations

import math
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from labelgen.data.io import atomic_write_json, file_sha256, list_images, read_image, read_json
from labelgen.data.shards import ShardSample, ShardWriter, encode_sample
from labelgen.errors import LabelgenError
from labelgen.heads.uncertainty import TOP_FRACTION
from labelgen.imaging import fit_photo, images_to_tensor, tensor_to_uint8
from labelgen.run import Dist, RunLock, init_dist, progress as progress_bar
from labelgen.teacher import Teacher

PLAN_NAME = "synthesis.json"  # the config a shard set was started with (resume must match it)


TTA_MODES = ("real", "all", "none")  # flip TTA (image-encoding teachers): --from-images photos / every image / off
SOFT_LABELS = ("none", "uint8")  # soft_labels: no <key>.soft.npz, or uint8-quantised probabilities


def default_encode_workers() -> int:
    """PNG/npz encoding threads: the CPUs this process may use, less one for the sampling thread (1..16)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(16, cpus - 1))


@dataclass
class SynthesisConfig:
    n: int | None = 1000  # kept samples (sampling); with from_images: at most this many images (None = all)
    shard_size: int = 1000  # kept samples per shard
    batch_size: int = 16
    drop_uncertain: float = 0.0  # fraction F of candidates dropped (most uncertain)
    seed_base: int = 1_000_000  # candidate j uses seed seed_base + j (annotation seeds start at 0)
    soft_labels: str = "none"  # one of SOFT_LABELS
    from_images: str | None = None  # folder of real images to pseudo-label instead of sampling
    top_fraction: float = TOP_FRACTION  # image score = mean of this top fraction of pixel uncertainties
    encode_workers: int = field(default_factory=default_encode_workers)  # PNG/npz threads (0 = inline)
    overlap: bool | None = None  # label batch k in a thread while batch k+1 samples; None: on CUDA only (on a CPU
    # the two would share the same cores), False: one after another
    tta: str = "real"  # one of TTA_MODES: horizontal-flip test-time augmentation for real photos, every image, none
    class_idx: int | None = None  # conditional GANs: class of the samples (None: the workspace's)
    truncation: float | None = None  # truncation psi / z scale of the samples (None: the workspace's)
    ddim_steps: int | None = None  # diffusion teachers: DDIM steps of the samples (None: the workspace's)
    device: str = "auto"  # auto | cpu | cuda (labelgen.run.pick_device); under torchrun cuda:<local rank>

    def sampling_options(self) -> dict[str, Any]:
        """Options of Teacher.sample given for this run (recorded in synthesis.json through plan_key)."""
        return sampling_options(self.class_idx, self.truncation, self.ddim_steps)

    def plan_key(self) -> dict[str, Any]:
        """What decides the content of each shard (a resumed run must agree on all of it)."""
        return {k: v for k, v in asdict(self).items() if k not in ("batch_size", "encode_workers", "overlap", "device")}


def sampling_options(class_idx: int | None, truncation: float | None, ddim_steps: int | None = None) -> dict[str, Any]:
    """The sampling options a command was given (None = the workspace's), as Teacher.sample takes them."""
    return {k: v for k, v in (("class_idx", class_idx), ("truncation", truncation), ("ddim_steps", ddim_steps))
            if v is not None}


@dataclass
class ShardPlan:
    shard_id: int
    candidates: list[int]
    keep: int


@dataclass
class SynthesisSummary:
    kept: int
    dropped: int
    shards: int
    shards_written: int  # by this run (all ranks)
    seconds: float
    samples_per_second: float  # candidates processed per second by this run (all ranks)
    bytes: int
    manifest: dict = field(default_factory=dict)


def _candidates_per_shard(shard_size: int, drop: float) -> int:
    return math.ceil(shard_size / (1 - drop) - 1e-9)


def plan_shards(config: SynthesisConfig, num_images: int | None = None) -> list[ShardPlan]:
    """The shard plan (see module docstring). ``num_images``: folder size in from-images mode."""
    if not 0 <= config.drop_uncertain < 1:
        raise LabelgenError(f"--drop-uncertain must be in [0, 1), got {config.drop_uncertain}")
    if config.shard_size < 1:
        raise LabelgenError(f"--shard-size must be at least 1, got {config.shard_size}")
    if config.tta not in TTA_MODES:
        raise LabelgenError(f"--tta {config.tta!r}: one of {', '.join(TTA_MODES)}")
    per_shard = _candidates_per_shard(config.shard_size, config.drop_uncertain)
    plans = []
    if num_images is None:
        if config.n is None or config.n < 1:
            raise LabelgenError(f"--n must be at least 1, got {config.n}")
        for shard_id in range(math.ceil(config.n / config.shard_size)):
            keep = min(config.shard_size, config.n - shard_id * config.shard_size)
            count = _candidates_per_shard(keep, config.drop_uncertain)
            start = shard_id * per_shard
            plans.append(ShardPlan(shard_id, list(range(start, start + count)), keep))
    else:
        total = num_images if config.n is None else min(config.n, num_images)
        for shard_id in range(math.ceil(total / per_shard)):
            candidates = list(range(shard_id * per_shard, min(total, (shard_id + 1) * per_shard)))
            plans.append(ShardPlan(shard_id, candidates,
                                   len(candidates) - math.floor(len(candidates) * config.drop_uncertain + 1e-9)))
    return plans


def sample_key(candidate: int) -> str:
    return f"{candidate:09d}"




def image_identities(paths: list[Path]) -> list[list[str]]:
    """[[file name, sha256 of its bytes], ...] of the --from-images files in candidate order: part of the plan,
    so a resumed run over a changed folder is refused instead of labelling one image twice and missing another."""
    return [[p.name, file_sha256(p)] for p in paths]


def _plan_difference(out_dir: Path, previous: dict, current: dict) -> str:
    """The one-line refusal of a resume whose plan differs from synthesis.json's."""
    if previous.get("images") != current.get("images") and "images" in previous and "images" in current:
        before, now = dict(map(tuple, previous["images"])), dict(map(tuple, current["images"]))
        parts = [f"{what}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}" for what, names in (
            ("changed", sorted(n for n in before.keys() & now.keys() if before[n] != now[n])),
            ("added", sorted(now.keys() - before.keys())), ("removed", sorted(before.keys() - now.keys()))) if names]
        return (f"{out_dir}: the --from-images folder {current.get('from_images')} changed since this synthesis "
                f"started ({'; '.join(parts) or 'order'}); use a new --out (or restore the files) to resume")
    changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
    return (f"{out_dir}: holds a synthesis with other settings ({', '.join(changed)} differ); "
            "use a new --out or the same command to resume")


# ---- the run ----
class _Source:
    """Candidate ids -> (images [B, 3, H, W] in [-1, 1], selected features, per-sample meta), through the
    teacher: new samples (``Teacher.sample``) or the folder's real images (``Teacher.features``)."""

    def __init__(self, teacher: Teacher, config: SynthesisConfig):
        self.teacher = teacher
        self.config = config
        self.image_paths: list[Path] = []
        if config.from_images is not None:
            teacher.require_image_encoding("--from-images")
            self.image_paths = list_images(Path(config.from_images))
            if not self.image_paths:
                raise LabelgenError(f"{config.from_images}: no images")

    @torch.no_grad()
    def batch(self, candidates: list[int]) -> tuple[torch.Tensor, list[torch.Tensor], list[dict]]:
        if self.image_paths:
            arrays, metas = [], []
            for j in candidates:
                image = read_image(self.image_paths[j])
                metas.append({"source_image": self.image_paths[j].name, "source_size": list(image.shape[:2])})
                arrays.append(fit_photo(image, self.teacher.resolution)[0])  # the photo rule; what the shard stores
            return images_to_tensor(np.stack(arrays)), self.teacher.features(images=arrays), metas
        seeds = [self.config.seed_base + j for j in candidates]
        out = self.teacher.sample(seeds, **self.config.sampling_options())
        return out.images, out.features, [{"seed": seed, "recipe": recipe} for seed, recipe in zip(seeds, out.recipes)]


class _Labeller:
    """Labels batches (head, mask, uncertainty), hands samples to the encoders and writes each shard when its
    last batch is labelled. Jobs run in candidate order (the labelling thread, or this one without overlap), so
    the shards hold the same members either way. On CUDA a job runs on its own stream, after the sampling
    stream's work on its batch (an event), so labelling overlaps the next batch's UNet passes on the GPU too."""

    def __init__(self, teacher: Teacher, config: SynthesisConfig, writer: ShardWriter, base_meta: dict,
                 pool: ThreadPoolExecutor | None):
        self.teacher, self.config, self.writer, self.base_meta, self.pool = teacher, config, writer, base_meta, pool
        self.scored: list[tuple[float, int, Future | bytes]] = []  # the current shard's samples so far
        self.stream = torch.cuda.Stream(teacher.device) if teacher.device.type == "cuda" else None

    def job(self, shard: ShardPlan, candidates: list[int], images: torch.Tensor, features: list[torch.Tensor],
            flipped: list[torch.Tensor] | None, metas: list[dict]):
        """A callable labelling one sampled batch (returns its size); made on the sampling thread."""
        ready = None
        if self.stream is not None:
            ready = torch.cuda.Event()
            ready.record()  # on the sampling (current) stream, after the batch's kernels
        return lambda: self._label(shard, candidates, images, features, flipped, metas, ready)

    def _label(self, shard, candidates, images, features, flipped, metas, ready) -> int:
        if self.stream is None:
            self._label_batch(shard, candidates, images, features, flipped, metas)
            return len(candidates)
        with torch.cuda.stream(self.stream):
            self.stream.wait_event(ready)
            for tensor in [images, *features, *(flipped or [])]:
                tensor.record_stream(self.stream)  # not reused by the sampling stream while labelled here
            self._label_batch(shard, candidates, images, features, flipped, metas)
        return len(candidates)

    def _label_batch(self, shard, candidates, images, features, flipped, metas) -> None:
        config = self.config
        pred = self.teacher.predict(features, config.top_fraction, flipped)
        masks = pred.mask.cpu().numpy()  # [B, H, W]
        scores = pred.scores.cpu().tolist()  # [B]
        soft = ((pred.probs * 255).round().to(torch.uint8).cpu().numpy()
                if config.soft_labels == "uint8" else None)  # [B, C, H, W]
        images_u8 = tensor_to_uint8(images)  # [B, H, W, 3]
        for k, candidate in enumerate(candidates):
            meta = {"key": sample_key(candidate), "candidate": candidate, **metas[k], **self.base_meta,
                    "uncertainty": round(float(scores[k]), 6)}
            sample = ShardSample(sample_key(candidate), images_u8[k], masks[k], meta,
                                 soft=None if soft is None else soft[k])  # soft: uint8 [C, H, W]
            self.scored.append((round(float(scores[k]), 6), candidate,
                                self.pool.submit(encode_sample, sample) if self.pool else encode_sample(sample)))
        if self.pool:  # back-pressure: at most ~4 batches of raw arrays wait for the encoders
            for _, _, pending in self.scored[:max(0, len(self.scored) - 4 * config.batch_size)]:
                pending.result()
        if len(self.scored) == len(shard.candidates):
            self._write(shard)

    def _write(self, shard: ShardPlan) -> None:
        ranked = sorted(self.scored, key=lambda item: (item[0], item[1]))
        kept = sorted(ranked[:shard.keep], key=lambda item: item[1])
        dropped = sorted(ranked[shard.keep:], key=lambda item: item[1])
        for _, _, job in dropped:
            if isinstance(job, Future):
                job.cancel()
        encoded = [job.result() if isinstance(job, Future) else job for _, _, job in kept]
        self.writer.write_shard(shard.shard_id, encoded=encoded, info={
            "candidates": len(shard.candidates), "kept": len(kept), "dropped": len(dropped),
            "dropped_keys": [sample_key(c) for _, c, _ in dropped],
            "dropped_scores": [s for s, _, _ in dropped]})
        self.scored = []


def synthesize(teacher: Teacher, config: SynthesisConfig, out_dir: Path | str, progress: bool = True,
               log=print) -> SynthesisSummary:
    """``labelgen synthesize`` (see module docstring) with ``teacher`` (its heads label, its classes name the
    manifest's; moved to this rank's device). Under torchrun each rank writes its shards; rank 0 holds the output
    folder's lock and writes manifest.json after a barrier, and every rank returns the summary (same numbers)."""
    dist = init_dist(config.device)
    lock = RunLock(out_dir, "synthesize").acquire() if dist.is_main else None
    try:
        return _synthesize(teacher, config, Path(out_dir), progress, dist)
    finally:
        if lock is not None:
            lock.release()
        dist.close()


def _synthesize(teacher: Teacher, config: SynthesisConfig, out_dir: Path, progress: bool, dist: Dist
                ) -> SynthesisSummary:
    error, writer, source = "", None, None
    try:
        teacher.to(dist.device)
        writer = ShardWriter(out_dir, teacher.classes)  # no trained head: refused here
        source = _Source(teacher, config)
        if config.tta == "all":
            teacher.require_image_encoding("--tta all")
    except LabelgenError as e:
        error = str(e)
    plan: list[ShardPlan] = []
    new_plan = False  # this run wrote synthesis.json (removed again if it fails before any shard is done)
    if not error:
        try:
            plan = plan_shards(config, len(source.image_paths) if config.from_images else None)
        except LabelgenError as e:
            error = str(e)
    run_config = {}
    if not error:
        run_config = {**config.plan_key(),
                      "from_images": None if config.from_images is None else str(Path(config.from_images).resolve()),
                      "generator": teacher.generator_id, "head": teacher.head_id, "head_type": teacher.head_type,
                      "ensemble": teacher.ensemble, "uncertainty": teacher.uncertainty_measure,
                      "resolution": list(teacher.resolution)}
    if dist.rank == 0 and not error:
        if config.from_images is not None:  # candidate j is the j-th of these files, with this content
            run_config["images"] = image_identities(source.image_paths)
        plan_path = out_dir / PLAN_NAME
        if plan_path.is_file():
            previous = read_json(plan_path)
            if previous != run_config:
                error = _plan_difference(out_dir, previous, run_config)
        else:
            atomic_write_json(plan_path, run_config)
            new_plan = True
        if not error:
            writer.clean_partial()
    error = dist.broadcast(error)
    if error:
        raise LabelgenError(error)
    dist.barrier()  # rank 0 has cleaned up partial shards before anybody writes

    flip = config.tta == "all" or (config.tta == "real" and config.from_images is not None)
    done = writer.done_shards()
    mine = [p for p in plan if p.shard_id % dist.world == dist.rank and p.shard_id not in done]
    base_meta = {"generator": teacher.generator_id, "head": teacher.head_id,
                 "uncertainty_measure": teacher.uncertainty_measure}
    pool = ThreadPoolExecutor(max_workers=config.encode_workers) if config.encode_workers > 0 else None
    labeller = _Labeller(teacher, config, writer, base_meta, pool)
    bar = progress_bar(sum(len(p.candidates) for p in mine), unit="sample", desc=f"synthesize (rank {dist.rank})"
                       if dist.world > 1 else "synthesize", disable=not progress or dist.rank != 0)
    started = time.perf_counter()
    processed = 0
    # bounded pipeline: this thread samples batch k+1 while one labelling thread labels batch k (in order)
    overlap = teacher.device.type == "cuda" if config.overlap is None else config.overlap
    thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="label") if overlap else None
    in_flight: deque[Future] = deque()
    try:
        for shard in mine:
            for start in range(0, len(shard.candidates), config.batch_size):
                candidates = shard.candidates[start:start + config.batch_size]
                images, features, metas = source.batch(candidates)
                flipped = teacher.flipped_features(images) if flip else None  # TTA (the generator: this thread)
                job = labeller.job(shard, candidates, images, features, flipped, metas)
                if thread is None:
                    processed += job()
                    bar.update(len(candidates))
                    continue
                in_flight.append(thread.submit(job))
                while len(in_flight) > 1:  # at most one batch labelled while the next one samples
                    count = in_flight.popleft().result()
                    processed += count
                    bar.update(count)
        while in_flight:
            count = in_flight.popleft().result()
            processed += count
            bar.update(count)
    except Exception:
        if thread:
            thread.shutdown(wait=True, cancel_futures=True)
        if new_plan and not writer.done_shards():  # a bad input before the first shard: --out as it was
            (out_dir / PLAN_NAME).unlink(missing_ok=True)
        raise
    finally:
        bar.close()
        if thread:
            thread.shutdown(wait=True, cancel_futures=True)
        if pool:
            pool.shutdown(wait=True, cancel_futures=True)
    seconds = time.perf_counter() - started
    written = dist.sum(len(mine))
    processed_all = dist.sum(processed)
    dist.barrier()  # every rank has finished its shards
    manifest: dict = {}
    if dist.rank == 0:
        indexes = [read_json(out_dir / f"{i:06d}.json") for i in sorted(writer.done_shards())]
        kept_total = sum(ix.get("kept", ix["count"]) for ix in indexes)
        dropped_total = sum(ix.get("dropped", 0) for ix in indexes)
        summary = {k: v for k, v in run_config.items() if k != "images"}  # the file list stays in synthesis.json
        manifest = writer.write_manifest({**summary, "kept": kept_total, "dropped": dropped_total,
                                          "shards_planned": len(plan)})
    manifest = dist.broadcast(manifest)
    config_out = manifest.get("config", {})
    return SynthesisSummary(kept=config_out.get("kept", 0), dropped=config_out.get("dropped", 0),
                            shards=len(manifest.get("shards", [])), shards_written=written, seconds=seconds,
                            samples_per_second=processed_all / seconds if seconds > 0 else 0.0,
                            bytes=manifest.get("bytes", 0), manifest=manifest)

