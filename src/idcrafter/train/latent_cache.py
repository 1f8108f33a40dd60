"""Latents of a finite training set, encoded once by the frozen codec and read back by SFT.

In the latent recipes the frozen VAE's encoder costs more than the DiT's whole step on a CPU
(`sprites-latent`: about 1.3 s of 2 s per batch of 16 on a shared core, the clip under bf16
autocast and its references in fp32). Real video DiT trainers cache latents for the same reason
(one VAE pass per clip instead of one per epoch); this module is that cache:

    idcrafter train cache-latents --recipe sprites-latent --out runs/latents-20k \\
        data.source=folder data.path=data/sprites-20k
    idcrafter train sft --recipe sprites-latent data.source=folder data.path=data/sprites-20k \\
        data.latent_cache=runs/latents-20k

What is cached: for every item i of the finite source (a `world make` folder, or the procedural
stream with `data.limit`), the clip's latents z0 (C, F', h, w) exactly as `Trainer.compute_loss`
computes them (the codec under the run's autocast) and its references' encodings as
`ConditionEncoder.encode_references` computes them (padded to 4 subjects), in `cache.dtype`
(float16 by default; float32 reproduces the uncached run bit for bit, tested). Frames, masks and
captions still come from the source (a memory-mapped read for a folder), so the loss weight map,
dropout and prompts are unchanged; only the two encodings are looked up by item.

Layout: `<out>/shard-00000.safetensors` ... (`shard_size` items each; written atomically and
skipped when present, so an interrupted build resumes) and `<out>/cache.json`, written last,
which records what the latents are a function of (`cache_key`: the codec's class, folder and a
fingerprint of its weights, the data source and its sizes, the autocast). Training refuses a cache
whose key differs from its own config (`InputError` naming the fields), so a cache made with
another VAE or another dataset cannot be used by mistake.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from idcrafter.errors import CorruptFileError, InputError

if TYPE_CHECKING:
    from idcrafter.train.config import Config
    from idcrafter.train.data import Batch

MANIFEST = "cache.json"
FORMAT = 1
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def finite_items(cfg: "Config") -> int:
    """The number of items a cache of this config's data covers (refused for endless or skipping sources)."""
    d = cfg.data
    if d.source == "procedural" and d.curriculum:
        raise InputError("a latent cache cannot follow data.curriculum (an item's cast would depend on its step): "
                         "cache each stage's data separately, or train that run uncached")
    if d.source == "procedural" and d.bucket_by_subjects:
        raise InputError("a latent cache of the procedural stream needs data.bucket_by_subjects=false (the number "
                         "of subjects of an item would depend on its position)")
    if d.source == "procedural" and d.limit:
        return int(d.limit)
    if d.source == "folder":
        from idcrafter.train.data import FolderSource

        return FolderSource(d).n
    raise InputError(f"a latent cache needs a finite source: data.source=folder (a `world make` folder) or "
                     f"data.source=procedural with data.limit=N, got data.source={d.source!r}"
                     + (" without data.limit" if d.source == "procedural" else ""))


def cache_key(cfg: "Config") -> dict[str, Any]:
    """What the cached latents are a function of: the codec (class, folder, weight fingerprint) and
    the data items (source, folder, seed, split, sizes, limit, subjects), plus the autocast."""
    from idcrafter.linking import fingerprint

    m, d = cfg.model, cfg.data
    codec: dict[str, Any] = {"codec": m.codec, "codec_patch": m.codec_patch if m.codec == "pixel" else None}
    if m.codec_path:
        folder = Path(m.codec_path)
        folder = folder / "vae" if (folder / "vae" / "config.json").is_file() else folder
        codec.update(codec_path=str(folder.resolve()), codec_fingerprint=fingerprint(folder) if folder.is_dir() else None)
    data = {"source": d.source, "path": str(Path(d.path).resolve()) if d.path else None, "seed": d.seed,
            "split": d.split, "frames": d.frames, "height": d.height, "width": d.width, "ref_size": d.ref_size,
            "limit": d.limit, "num_subjects": d.num_subjects if d.source == "procedural" else None}
    return {"format": FORMAT, **codec, **data, "autocast": cfg.train.mixed_precision}


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def build_latent_cache(cfg: "Config", out: str | Path, shard_size: int = 2048, batch_size: int = 16,
                       dtype: str = "float16", progress: bool = True) -> Path:
    """Encode every item of `cfg.data` with `cfg.model`'s codec into `out` (module docstring).
    Resumable: complete shards are kept; `cache.json` is written when every shard exists."""
    from tqdm import tqdm

    from idcrafter.builder import check_reference_size
    from idcrafter.conditioning import ConditionEncoder
    from idcrafter.train import checkpoint as ckpt
    from idcrafter.train.data import build_source, collate
    from idcrafter.train.engine import slow_bf16_warning
    from idcrafter.utils.io import check_writable_dir, mark_dir
    from idcrafter.world.scene import MAX_SUBJECTS

    if dtype not in DTYPES:
        raise InputError(f"cache dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if shard_size < 1 or batch_size < 1:
        raise InputError(f"shard_size and batch_size must be >= 1, got {shard_size}, {batch_size}")
    out = Path(out)
    n, key = finite_items(cfg), cache_key(cfg)
    check_writable_dir(out, "idcrafter train cache-latents", fix="", signature=(MANIFEST,))
    done = out / MANIFEST
    if done.is_file():
        old = ckpt.read_json(done)
        if _differences(old.get("key", {}), key) or old.get("dtype") != dtype or old.get("items") != n:
            raise InputError(f"{out} holds a latent cache of other data or another codec: choose another --out")
        return out
    out.mkdir(parents=True, exist_ok=True)
    mark_dir(out, "idcrafter train cache-latents")
    if (why := slow_bf16_warning(cfg.train.mixed_precision)) is not None:
        logging.getLogger(__name__).warning(why)
    pipe = cfg.model.build()
    check_reference_size(pipe, cfg.data.ref_size)
    pipe.transformer.requires_grad_(False)
    source, enc = build_source(cfg.data), ConditionEncoder(pipe, "cpu", cache_size=0)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.train.mixed_precision == "bf16")
    shards = [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]
    bar = tqdm(total=n, desc="latents", disable=not progress)
    for index, (lo, hi) in enumerate(shards):
        path = out / f"shard-{index:05d}.safetensors"
        if path.is_file():
            bar.update(hi - lo)
            continue
        z_parts, r_parts, counts = [], [], []
        for start in range(lo, hi, batch_size):
            batch = collate([source.get_item(i) for i in range(start, min(start + batch_size, hi))])
            with torch.no_grad(), autocast:  # as Trainer.compute_loss encodes the clip
                z_parts.append(pipe.codec.encode(batch.video).float().to(DTYPES[dtype]))
            refs, mask = enc.encode_references(batch.ref_images)  # (B, K, ...) as the trainer's ConditionEncoder
            pad = refs.new_zeros((refs.shape[0], MAX_SUBJECTS - refs.shape[1], *refs.shape[2:]))
            r_parts.append(torch.cat([refs, pad], 1).to(DTYPES[dtype]))
            counts.append(mask.sum(1).to(torch.int32))
            bar.update(len(batch))
        ckpt.save_tensors(path, {"z0": torch.cat(z_parts), "refs": torch.cat(r_parts), "ref_count": torch.cat(counts)})
    bar.close()
    ckpt.write_json(done, {"key": key, "items": n, "dtype": dtype, "shard_size": shard_size,
                           "shards": [f"shard-{i:05d}.safetensors" for i in range(len(shards))]})
    return out


def check_cache_config(cfg: "Config") -> dict[str, Any]:
    """The manifest of `cfg.data.latent_cache`, checked against `cfg` (`InputError` if it is not a
    finished cache of exactly this codec and data)."""
    from idcrafter.train import checkpoint as ckpt

    folder = Path(cfg.data.latent_cache)
    if not (folder / MANIFEST).is_file():
        raise InputError(f"data.latent_cache={folder} is not a finished latent cache (no {MANIFEST}): build or "
                         f"finish it with `idcrafter train cache-latents --out {folder}` and the run's overrides")
    meta = ckpt.read_json(folder / MANIFEST)
    diff = _differences(meta.get("key", {}), cache_key(cfg))
    if diff:
        raise InputError(f"data.latent_cache={folder} was made for other data or another codec (differs in "
                         f"{', '.join(diff)}): rebuild it for this run's config")
    if meta.get("items") != finite_items(cfg):
        raise InputError(f"data.latent_cache={folder} holds {meta.get('items')} items but the data has "
                         f"{finite_items(cfg)}: rebuild it")
    return meta


class LatentCache:
    """The cached encodings of a run's data, looked up by item (module docstring)."""

    def __init__(self, z0: torch.Tensor, refs: torch.Tensor, ref_count: torch.Tensor):
        self.z0, self.refs, self.ref_count = z0, refs, ref_count  # (N, C, F', h, w), (N, 4, ...), (N,)

    @classmethod
    def open(cls, folder: str | Path, cfg: "Config") -> "LatentCache":
        """Read a cache made for exactly this config's codec and data (else `InputError`)."""
        from idcrafter.train import checkpoint as ckpt

        folder = Path(folder)
        meta = check_cache_config(replace(cfg, data=replace(cfg.data, latent_cache=str(folder))))
        parts: dict[str, list[torch.Tensor]] = {"z0": [], "refs": [], "ref_count": []}
        for name in meta["shards"]:
            shard = ckpt.load_tensors(folder / name)
            for k in parts:
                if k not in shard:
                    raise CorruptFileError(f"{folder / name} has no {k!r}: rebuild the cache")
                parts[k].append(shard[k])
        z0, refs, count = (torch.cat(parts[k]) for k in ("z0", "refs", "ref_count"))
        if len(z0) != meta["items"] or len(refs) != len(z0) or len(count) != len(z0):
            raise CorruptFileError(f"{folder} holds {len(z0)} latents for {meta['items']} items: rebuild the cache")
        return cls(z0, refs, count)

    def lookup(self, batch: "Batch") -> tuple[torch.Tensor, torch.Tensor]:
        """(z0 (B, C, F', h, w), reference encodings (B, K, ...)) of a batch's items, float32,
        K = the batch's padded reference count; checked against the batch's reference masks."""
        if batch.items is None:
            raise InputError("a latent cache needs items from a finite source (data.source=folder, or procedural "
                             "with data.limit)")
        idx = batch.items
        k = batch.ref_mask.shape[1]
        if not torch.equal(self.ref_count[idx].long(), batch.ref_mask.sum(1).long()):
            raise CorruptFileError("the latent cache's reference counts differ from the data's: it was made from "
                                   "other data; rebuild it")
        return self.z0[idx].float(), self.refs[idx, :k].float()


def describe(folder: str | Path) -> dict[str, Any]:
    """The manifest of a cache folder (for the CLI's summary)."""
    from idcrafter.train import checkpoint as ckpt

    meta = ckpt.read_json(Path(folder) / MANIFEST)
    return {"items": meta["items"], "dtype": meta["dtype"], "shards": len(meta["shards"]),
            "bytes": int(sum((Path(folder) / s).stat().st_size for s in meta["shards"])),
            "codec": meta["key"].get("codec"), "data": meta["key"].get("path") or meta["key"].get("source")}
