"""Visualized-BGE (FlagEmbedding research/visual_bge) at toy scale: data, stage-2 training, evaluation.

* **Data** (``build_dataset``): one shape per image, drawn with Pillow, for every combination of
  shape x colour x size x position; each combination is drawn ``train_renderings`` times with
  jitter (place, size, shade, background) for training and once more for the held-out split,
  so held-out images are new drawings. Each image has a caption, and one edit instruction
  ("make the circle blue") pairs it with a drawing of the edited combination in the same split:
  composed image retrieval. Stored as ``images/*.png``, ``images.jsonl`` and ``edits.jsonl``.
* **Training** (``train``): stage 2 of FlagEmbedding's companion code: the text encoder is
  frozen, the ViT and the projection train. Each batch is one task: text -> image, or
  (image, instruction) -> image; each query's group is its positive and ``group_size - 1``
  hard negatives (drawings one attribute away; for an edit, also the source), scored against
  every candidate of the batch by InfoNCE at ``temperature``.
* **Evaluation** (``evaluate``): Recall@1/5 over the held-out images for text -> image (a
  phrasing no training query used) and composed (image + instruction) -> image (the source
  left out of the ranking), for the trained model, the same model before training (random ViT
  and projection) and a caption-only text search (the query text against the images'
  captions, through the plain text encoder; for an edit, the source's caption + the instruction).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from flagops.config import ConfigError
from flagops.data.formats import DataError, atomic_path, iter_jsonl, write_jsonl
from flagops.losses.infonce import compute_loss_from_embeddings
from flagops.models.visual_bge import VisualBGE, VisualSettings
from flagops.training.common import stamp
from flagops.training.loop_checkpoints import LoopCheckpoints, files_digest

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {"red": (214, 39, 40), "green": (44, 160, 44), "blue": (31, 89, 212), "yellow": (230, 200, 30), "purple": (148, 62, 189)}
SIZES = {"small": 0.14, "large": 0.26}  # radius as a share of the side
POSITIONS = {"left": 0.27, "center": 0.5, "right": 0.73}  # centre x as a share of the side
ATTRIBUTES = ("shape", "colour", "size", "position")
# Query phrasings; the caption is the first, held-out queries use the last (no training query does).
TEMPLATES = (
    "a {size} {colour} {shape} on the {position}",
    "{colour} {shape}, {size}, {position} side",
    "there is a {size} {shape} coloured {colour} at the {position}",
    "picture of one {colour} {shape} ({size}) to the {position}",
)
EDIT_TEMPLATES = {
    "shape": "turn the {shape} into a {new}",
    "colour": "make the {shape} {new}",
    "size": "make the {shape} {new}",
    "position": "move the {shape} to the {new}",
}
CHOICES = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES), "position": tuple(POSITIONS)}
DATA_FILES = ("images.jsonl", "edits.jsonl")


@dataclass(frozen=True)
class Combo:
    shape: str
    colour: str
    size: str
    position: str

    def replace(self, attribute: str, value: str) -> Combo:
        return Combo(**{**asdict(self), attribute: value})


def all_combos() -> list[Combo]:
    return [Combo(*values) for values in itertools.product(SHAPES, COLOURS, SIZES, POSITIONS)]


def describe(combo: Combo, template: int = 0) -> str:
    return TEMPLATES[template].format(**asdict(combo))


def edit(combo: Combo, attribute: str, new: str) -> tuple[str, Combo]:
    """The instruction that changes ``attribute`` of ``combo`` to ``new``, and the edited combination."""
    return EDIT_TEMPLATES[attribute].format(shape=combo.shape, new=new), combo.replace(attribute, new)


def shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """The polygon of a square, triangle or diamond of circumradius-like size ``r`` around (cx, cy)."""
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy - r * math.sin(a)) for a in (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    raise ValueError(f"unknown shape {shape!r}")


def draw(combo: Combo, side: int, rng: random.Random) -> Image.Image:
    """``combo`` drawn on a ``side`` x ``side`` canvas, with jitter from ``rng``: centre, radius, shade, background."""
    grey = rng.randint(225, 250)
    img = Image.new("RGB", (side, side), (grey, grey, grey))
    pen = ImageDraw.Draw(img)
    r = side * (SIZES[combo.size] + rng.uniform(-0.02, 0.02))
    cx = side * (POSITIONS[combo.position] + rng.uniform(-0.04, 0.04))
    cy = side * rng.uniform(0.35, 0.65)
    fill = tuple(min(255, max(0, c + rng.randint(-20, 20))) for c in COLOURS[combo.colour])
    if combo.shape == "circle":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        pen.polygon(shape_points(combo.shape, cx, cy, r), fill=fill)
    return img


# ---------------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class ImageRow:
    id: str
    file: str
    split: str
    caption: str
    combo: Combo


@dataclass(frozen=True)
class EditRow:
    split: str
    source: str
    instruction: str
    target: str


@dataclass
class Dataset:
    root: Path
    images: dict[str, ImageRow]
    edits: list[EditRow]

    def split(self, name: str) -> list[ImageRow]:
        return [row for row in self.images.values() if row.split == name]

    def load(self, image_id: str) -> Image.Image:
        with Image.open(self.root / self.images[image_id].file) as img:
            return img.convert("RGB")


def build_dataset(cfg, out_dir: str | Path) -> dict[str, int]:
    """Draw the train and held-out images and their edits into ``out_dir`` (``cfg``: the visual_bge section)."""
    rng = random.Random(cfg.seed)
    combos = all_combos()
    images: list[dict] = []
    by_split: dict[str, dict[Combo, list[str]]] = {"train": {}, "test": {}}
    with atomic_path(out_dir, is_dir=True) as tmp:
        (tmp / "images").mkdir()
        for split, copies in (("train", cfg.train_renderings), ("test", 1)):
            for combo in combos:
                for _ in range(copies):
                    image_id = f"{split}-{len(images):05d}"
                    draw(combo, cfg.image_size, rng).save(tmp / "images" / f"{image_id}.png")
                    by_split[split].setdefault(combo, []).append(image_id)
                    images.append(
                        {"id": image_id, "file": f"images/{image_id}.png", "split": split, "caption": describe(combo), **asdict(combo)}
                    )
        edits = []
        for row in images:
            combo = Combo(*(row[a] for a in ATTRIBUTES))
            attribute = rng.choice(ATTRIBUTES)
            new = rng.choice([v for v in CHOICES[attribute] if v != getattr(combo, attribute)])
            instruction, target = edit(combo, attribute, new)
            target_id = rng.choice(by_split[row["split"]][target])
            edits.append({"split": row["split"], "source": row["id"], "instruction": instruction, "target": target_id})
        write_jsonl(tmp / "images.jsonl", images)
        write_jsonl(tmp / "edits.jsonl", edits)
    return {"train_images": sum(r["split"] == "train" for r in images), "test_images": sum(r["split"] == "test" for r in images)}


def _field(obj: dict, key: str, where: str, choices=None) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise DataError(f"{where}: {key!r} must be a non-empty string; regenerate the dataset (build_visual_bge_data)")
    if choices is not None and value not in choices:
        raise DataError(f"{where}: {key} {value!r} is not one of {', '.join(choices)}")
    return value


def read_dataset(root: str | Path) -> Dataset:
    """The dataset ``build_dataset`` wrote; a bad row is a DataError naming its file and line."""
    root = Path(root)
    images: dict[str, ImageRow] = {}
    for line, obj in iter_jsonl(root / "images.jsonl"):
        where = f"{root / 'images.jsonl'}:{line}"
        combo = Combo(*(_field(obj, a, where, CHOICES[a]) for a in ATTRIBUTES))
        row = ImageRow(
            _field(obj, "id", where),
            _field(obj, "file", where),
            _field(obj, "split", where, ("train", "test")),
            _field(obj, "caption", where),
            combo,
        )
        if not (root / row.file).is_file():
            raise DataError(f"{where}: image {row.file} is missing under {root}; regenerate the dataset")
        images[row.id] = row
    edits = []
    for line, obj in iter_jsonl(root / "edits.jsonl"):
        where = f"{root / 'edits.jsonl'}:{line}"
        row = EditRow(*(_field(obj, k, where) for k in ("split", "source", "instruction", "target")))
        for key in ("source", "target"):
            if getattr(row, key) not in images:
                raise DataError(f"{where}: {key} {getattr(row, key)!r} is no image id of images.jsonl")
        edits.append(row)
    if not any(r.split == "test" for r in images.values()):
        raise DataError(f"{root / 'images.jsonl'}: no held-out (split test) image; regenerate the dataset")
    return Dataset(root, images, edits)


# ---------------------------------------------------------------------- training


def settings_of(cfg) -> VisualSettings:
    return VisualSettings(cfg.image_size, cfg.patch_size, cfg.vit_hidden_size, cfg.vit_layers, cfg.vit_heads, cfg.text_max_len)


def create_model(cfg, model_cfg) -> VisualBGE:
    """The untrained model: the configured text encoder beside a ViT and projection drawn from ``cfg.seed``."""
    return VisualBGE.create(cfg.text_encoder or model_cfg.base, settings_of(cfg), cfg.seed)


def hard_negatives(
    positive: str, by_combo: dict[Combo, list[str]], combos: dict[str, Combo], k: int, rng: random.Random, first: str | None = None
) -> list[str]:
    """``k`` images whose combination differs from ``positive``'s in one attribute (``first`` leads when given)."""
    combo = combos[positive]
    near = [
        i for a in ATTRIBUTES for v in CHOICES[a] if v != getattr(combo, a) for i in by_combo.get(combo.replace(a, v), []) if i != first
    ]
    picked = [first] if first is not None else []
    picked += rng.sample(near, k - len(picked))
    return picked


def train_batches(data: Dataset, cfg, rng: random.Random, start: int = 0):
    """Endless batches, alternating tasks: ``("t2i", query texts, None, candidate ids)`` and
    ``("edit", instructions, source ids, candidate ids)``; each query's group is contiguous, positive first.
    ``start``: the steps already taken (a resumed run, ``rng`` in the state it had then)."""
    train = data.split("train")
    combos = {r.id: r.combo for r in train}
    by_combo: dict[Combo, list[str]] = {}
    for r in train:
        by_combo.setdefault(r.combo, []).append(r.id)
    edits = [e for e in data.edits if e.split == "train"]
    phrasings = range(len(TEMPLATES) - 1)  # the last is the held-out queries'
    for step in itertools.count(start):
        if step % 2 == 0:
            rows = rng.sample(train, cfg.batch_size)
            texts = [describe(r.combo, rng.choice(phrasings)) for r in rows]
            groups = [[r.id, *hard_negatives(r.id, by_combo, combos, cfg.group_size - 1, rng)] for r in rows]
            yield "t2i", texts, None, [i for g in groups for i in g]
        else:
            chosen = rng.sample(edits, cfg.batch_size)
            groups = [[e.target, *hard_negatives(e.target, by_combo, combos, cfg.group_size - 1, rng, first=e.source)] for e in chosen]
            yield "edit", [e.instruction for e in chosen], [e.source for e in chosen], [i for g in groups for i in g]


def train(cfg, model_cfg, data: Dataset, out_dir: str | Path) -> dict[str, float]:
    """Stage 2: the ViT and projection learn under the frozen text encoder; saves the model to ``out_dir``."""
    edits = sum(e.split == "train" for e in data.edits)
    if cfg.batch_size > edits:
        raise ConfigError(f"visual_bge.batch_size {cfg.batch_size} exceeds the {edits} training edits; lower it or raise train_renderings")
    model = create_model(cfg, model_cfg)
    params = model.freeze_text()
    model.train()
    model.text.eval()  # frozen: no dropout either, so its outputs are the plain encoder's
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate)
    cache: dict[str, Image.Image] = {}

    def images(ids: list[str]) -> list[Image.Image]:
        for i in ids:
            if i not in cache:
                cache[i] = data.load(i)
        return [cache[i] for i in ids]

    blank = [""] * (cfg.batch_size * cfg.group_size)
    losses: dict[str, list[float]] = {"t2i": [], "edit": []}
    rng = random.Random(cfg.seed)
    rows = [json.dumps(asdict(r), sort_keys=True) for r in [*data.images.values(), *data.edits]] + [files_digest(data.root)]
    checkpoints = LoopCheckpoints(
        "train_visual_bge", Path(out_dir), stamp(cfg, model_cfg, data=rows), cfg.save_steps, cfg.resume_from_checkpoint
    )
    done, saved, extra = checkpoints.restore(model, optimizer)
    if extra is not None:
        rng.setstate(extra["rng"])
        losses = saved
    batches = train_batches(data, cfg, rng, start=done)
    for step in range(done + 1, cfg.max_steps + 1):
        task, texts, sources, candidates = next(batches)
        if task == "t2i":
            with torch.no_grad():  # a text query has no trainable part
                q = model.encode(texts)
        else:
            q = model.encode(texts, images(sources))
        p = model.encode(blank, images(candidates))
        loss = compute_loss_from_embeddings(q, p, cfg.temperature, in_batch=True)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses[task].append(loss.item())
        checkpoints.save(step, model, optimizer, log=losses, extra={"rng": rng.getstate()})
    model.eval().save(out_dir)
    checkpoints.finish()

    def mean(xs: list[float]) -> float:
        return float(np.mean(xs)) if xs else float("nan")

    window = max(1, len(losses["t2i"]) // 5)
    return {
        f"{task}_loss_{part}": mean(xs[:window] if part == "first" else xs[-window:])
        for task, xs in losses.items()
        for part in ("first", "last")
    }


# ---------------------------------------------------------------------- evaluation


def recall_at(scores: np.ndarray, positives: np.ndarray, ks: tuple[int, ...] = (1, 5)) -> dict[int, float]:
    """Share of rows whose positive column ranks within the top k; ties count against the positive."""
    pos = scores[np.arange(len(scores)), positives][:, None]  # (q, 1)
    rank = (scores >= pos).sum(axis=1)  # 1 = first; a tie places the positive behind
    return {k: float((rank <= k).mean()) for k in ks}


def _retrieval(queries: np.ndarray, gallery: np.ndarray, positives: np.ndarray, exclude: np.ndarray | None = None) -> dict[int, float]:
    scores = queries @ gallery.T  # (q, g)
    if exclude is not None:
        scores[np.arange(len(scores)), exclude] = -np.inf
    return recall_at(scores, positives)


def evaluate(cfg, model_cfg, data: Dataset, trained_dir: str | Path) -> dict[str, float]:
    """Recall@1/5 on the held-out images: trained model, untrained model and caption-only search."""
    test = data.split("test")
    index = {r.id: n for n, r in enumerate(test)}
    edits = [e for e in data.edits if e.split == "test"]
    pictures = [data.load(r.id) for r in test]
    queries = [describe(r.combo, len(TEMPLATES) - 1) for r in test]
    sources = np.array([index[e.source] for e in edits])
    targets = np.array([index[e.target] for e in edits])
    metrics: dict[str, float] = {}
    untrained = create_model(cfg, model_cfg).eval()
    for name, model in (("visual_bge", VisualBGE.load(trained_dir)), ("random_init", untrained)):
        gallery = model.embed([""] * len(test), pictures)
        t2i = _retrieval(model.embed(queries), gallery, np.arange(len(test)))
        composed = _retrieval(model.embed([e.instruction for e in edits], [pictures[i] for i in sources]), gallery, targets, sources)
        metrics[f"{name}/t2i_recall@1"] = t2i[1]
        metrics[f"{name}/composed_recall@1"] = composed[1]
        if name == "visual_bge":
            metrics["visual_bge/t2i_recall@5"] = t2i[5]
            metrics["visual_bge/composed_recall@5"] = composed[5]
    text_encoder = untrained  # a text alone is the plain text encoder's embedding (frozen: the same in both)
    captions = text_encoder.embed([r.caption for r in test])
    t2i = _retrieval(text_encoder.embed(queries), captions, np.arange(len(test)))
    composed = _retrieval(
        text_encoder.embed([f"{test[i].caption} {e.instruction}" for i, e in zip(sources, edits, strict=True)]), captions, targets, sources
    )
    metrics["caption_search/t2i_recall@1"] = t2i[1]
    metrics["caption_search/composed_recall@1"] = composed[1]
    return metrics
