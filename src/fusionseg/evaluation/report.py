"""Figures and reports: learning curve, segmentation overlays, markdown tables and reports (matplotlib Agg).

3D overlays are axial slices in radiological orientation, derived from the volume's affine (RAS+):
the patient's right on the viewer's left, anterior up (:func:`radiological_view`). Class names
(from dataset.json) label the overlays' legend.

Example:
    >>> plot_learning_curve([{"epoch": 1, "train_loss": 0.9, "val_dice": 0.5}], Path("curve.png"))
    >>> overlay_png(image, gt, pred, Path("case.png"), title="case_0 Dice 0.91", affine=meta["affine"],
    ...             names={1: "nodule"})
    >>> print(format_table(["model", "Dice"], [["unet", 0.91234]]))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fusionseg.files import atomic_write, write_text_atomic

__all__ = [
    "best_and_worst_overlays",
    "format_table",
    "learning_curve_points",
    "overlay_png",
    "plot_learning_curve",
    "radiological_view",
    "read_array",
    "representative_slice",
    "write_markdown_report",
]

# Class colours (RGB, 0-1) for labels 1, 2, ...; background is transparent.
_COLORS = np.array(
    [
        [0.90, 0.10, 0.10],
        [0.10, 0.75, 0.20],
        [0.15, 0.35, 0.95],
        [0.95, 0.80, 0.10],
        [0.80, 0.20, 0.85],
        [0.10, 0.80, 0.85],
    ]
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def format_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-markdown table; floats get 3 significant decimals."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _savefig(fig, path: Path) -> Path:
    """Save a figure as PNG, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    return path


def learning_curve_points(
    history: Sequence[dict], curve: Sequence[dict] | None = None
) -> tuple[str, list[tuple[float, float | None]], list[tuple[float, float]]]:
    """(x-axis name, [(x, train loss)], [(x, val Dice)]): per iteration from ``curve`` (points of the
    training loss every few iterations) when it has more points than ``history`` (one row per epoch;
    a row without a loss gives None, a gap in the plot).

    Example:
        >>> learning_curve_points([{"epoch": 1, "step": 4, "train_loss": 0.8, "val_dice": 0.5}],
        ...                       [{"step": 2, "train_loss": 0.9}, {"step": 4, "train_loss": 0.7}])
        ('iteration', [(2, 0.9), (4, 0.7)], [(4, 0.5)])
    """
    val_rows = [r for r in history if r.get("val_dice") not in (None, "")]
    if curve and len(curve) > len(history) and all("step" in r for r in history):
        loss: list[tuple[float, float | None]] = [(r["step"], float(r["train_loss"])) for r in curve]
        return "iteration", loss, [(r["step"], float(r["val_dice"])) for r in val_rows]
    loss = [(r["epoch"], r.get("train_loss")) for r in history]
    return "epoch", loss, [(r["epoch"], float(r["val_dice"])) for r in val_rows]


def plot_learning_curve(history: Sequence[dict], path: Path, curve: Sequence[dict] | None = None) -> Path:
    """Training loss (left axis) and validation Dice (right axis) per epoch, or per iteration when
    ``curve`` has more points (:func:`learning_curve_points`) → PNG."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    x_name, loss, val = learning_curve_points(history, curve)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    xs, ys = [x for x, _ in loss], [y for _, y in loss]
    ax.plot(xs, ys, color="tab:blue", marker="." if len(loss) < 40 else None, label="train loss")
    ax.set_xlabel(x_name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("train loss (Dice + CE)", color="tab:blue")
    ax.grid(alpha=0.3)
    if val:
        ax2 = ax.twinx()
        ax2.plot([e for e, _ in val], [float(v) for _, v in val], color="tab:orange", marker="o", label="val Dice")
        ax2.set_ylabel("validation Dice", color="tab:orange")
        ax2.set_ylim(0, 1)
    ax.set_title("learning curve")
    try:
        return _savefig(fig, path)
    finally:
        plt.close(fig)


def read_array(path: Path, label: bool = False) -> np.ndarray:
    """Voxel array of an image or label file, read through the format registry (:mod:`fusionseg.data.formats`):
    a label map (*S) with ``label``, else an image (*S), or (*S, C) when it has several channels (e.g. RGB)."""
    from fusionseg.data.io import read_image, read_label

    if label:
        return read_label(path)[0]
    image = read_image(path)[0]
    return image[0] if image.shape[0] == 1 else np.moveaxis(image, 0, -1)


def representative_slice(label: np.ndarray, axis: int = -1) -> int:
    """Index along ``axis`` with the most foreground (the middle one when empty)."""
    counts = np.count_nonzero(label, axis=tuple(i for i in range(label.ndim) if i != axis % label.ndim))
    return int(np.argmax(counts)) if counts.any() else label.shape[axis] // 2


# nibabel axis codes of the display: rows run to the patient's posterior (anterior up), columns to the
# patient's left (the patient's right on the viewer's left), slices inferior → superior.
RADIOLOGICAL_AXES = ("P", "L", "S")


def radiological_view(volume: np.ndarray, affine: np.ndarray | None) -> np.ndarray:
    """A 3D array (*S) or (*S, C) reordered so that ``view[..., k]`` shown as an image (rows down,
    columns right) is the axial slice k in radiological orientation; ``affine`` is the voxel → RAS+
    matrix of the volume (None: identity, the array axes are R, A, S).

    Example:
        >>> view = radiological_view(label, meta["affine"])     # view[0, -1, k]: the anterior, patient-left corner
    """
    from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

    affine = np.eye(4) if affine is None else np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"radiological_view needs a 4x4 affine of a 3D volume, got shape {affine.shape}")
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(RADIOLOGICAL_AXES))
    return np.ascontiguousarray(apply_orientation(np.asarray(volume), transform))


def _to_display(image: np.ndarray) -> np.ndarray:
    """Image (H, W) or (H, W, 3/4) → float RGB (H, W, 3) in [0, 1] with 1-99 percentile windowing."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        image = image[..., :3]
    elif image.ndim == 3:
        image = image[..., 0]
    lo, hi = np.percentile(image, (1, 99)) if image.size else (0.0, 1.0)
    image = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    return image if image.ndim == 3 else np.repeat(image[..., None], 3, -1)


def _blend(rgb: np.ndarray, label: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    out = rgb.copy()
    for value in np.unique(label):
        if value == 0:
            continue
        mask = label == value
        out[mask] = (1 - alpha) * out[mask] + alpha * _COLORS[(int(value) - 1) % len(_COLORS)]
    return out


def overlay_png(
    image: np.ndarray | None,
    gt: np.ndarray,
    pred: np.ndarray,
    path: Path,
    title: str = "",
    affine: np.ndarray | None = None,
    names: dict[int, str] | None = None,
) -> Path:
    """Ground truth and prediction coloured over the image, side by side → PNG.

    2D inputs are drawn as they are; 3D volumes as the axial slice with the most ground-truth
    foreground, in radiological orientation from ``affine`` (:func:`radiological_view`; None: the
    array axes are R, A, S). ``image`` may be None (labels on black) or carry channels last (RGB PNG).
    ``names`` (label value → class name) label the legend.
    """
    plt = _pyplot()
    axial = gt.ndim == 3
    if axial:
        gt, pred = radiological_view(gt, affine), radiological_view(pred, affine)
        k = representative_slice(gt, axis=-1)
        gt, pred = gt[..., k], pred[..., k]
        if image is not None:
            image = radiological_view(image, affine)
            image = image[..., k] if image.ndim == 3 else image[..., k, 0]
        title = f"{title} (axial slice {k}, radiological view)".strip()
    base = _to_display(image) if image is not None else np.zeros((*gt.shape, 3), np.float32)
    if base.shape[:2] != gt.shape:
        base = np.zeros((*gt.shape, 3), np.float32)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2))
    for ax, label, name in zip(axes, (gt, pred), ("ground truth", "prediction")):
        ax.imshow(_blend(base, label), interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
        if axial:  # the patient's sides, as radiologists read them
            for x, y, text in ((0.01, 0.5, "R"), (0.99, 0.5, "L"), (0.5, 0.99, "A"), (0.5, 0.01, "P")):
                ax.text(x, y, text, transform=ax.transAxes, color="yellow", fontsize=9, ha="center", va="center")
    present = sorted(({int(v) for v in np.unique(gt)} | {int(v) for v in np.unique(pred)}) - {0})
    if present:
        from matplotlib.patches import Patch

        handles = [Patch(color=_COLORS[(v - 1) % len(_COLORS)], label=(names or {}).get(v, str(v))) for v in present]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False)
    if title:
        fig.suptitle(title)
    try:
        return _savefig(fig, path)
    finally:
        plt.close(fig)


def best_and_worst_overlays(
    case_scores: dict[str, float],
    image_files: dict[str, Path],
    preds: dict[str, Path],
    gts: dict[str, Path],
    output: Path,
    k: int = 2,
    names: dict[int, str] | None = None,
) -> list[Path]:
    """Overlay PNGs of the ``k`` best and ``k`` worst cases by mean Dice → ``output/overlays/``.

    ``image_files``, ``preds`` and ``gts`` map case ids to files (images may miss cases: labels on black);
    3D cases are drawn in radiological orientation from the ground truth's affine; ``names`` label the legend.
    """
    from fusionseg.data.io import read_label

    ranked = sorted((s, cid) for cid, s in case_scores.items() if cid in preds and cid in gts)
    chosen = [("worst", s, cid) for s, cid in ranked[:k]]
    chosen += [("best", s, cid) for s, cid in reversed(ranked[-k:]) if cid not in {c for _, _, c in chosen}]
    paths = []
    for tag, score, cid in chosen:
        gt, gt_meta = read_label(gts[cid])
        pred = read_array(preds[cid], label=True)
        image = read_array(image_files[cid]) if cid in image_files else None
        if image is not None and image.shape[: gt.ndim] != gt.shape:
            image = None
        affine = gt_meta.get("affine") if gt.ndim == 3 else None
        png = output / "overlays" / f"{tag}_{cid}.png"
        paths.append(overlay_png(image, gt, pred, png, f"{tag}: {cid} Dice {score:.3f}", affine, names))
    return paths


def write_markdown_report(path: Path, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """Markdown file with ``# title`` and ``## heading`` + body per section (bodies are markdown)."""
    text = [f"# {title}", ""]
    for heading, body in sections:
        text += [f"## {heading}", "", body.rstrip(), ""]
    return write_text_atomic(path, "\n".join(text))
