"""Datasets: loading from files or factories, seeded sampling, and alignment with a target."""

from __future__ import annotations

import csv
import io
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bastion.errors import DataError, UnsafeFileError, require

if TYPE_CHECKING:
    from bastion.core.targets.base import Target

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


@dataclass
class Dataset:
    """Inputs ``x`` (n, *shape) float32 and raw labels ``y`` (n,)."""

    x: np.ndarray
    y: np.ndarray
    name: str = ""
    feature_names: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x)
        self.y = np.asarray(self.y)
        if self.x.ndim == 0:
            raise DataError(f"dataset '{self.name}': the inputs are a single number (a 0-d array), not one row per "
                            "sample", hint="save the inputs as an array of shape (n_samples, ...)")
        if self.y.ndim == 2 and self.y.shape[1] > 1:
            raise DataError(f"dataset '{self.name}': the labels have shape {self.y.shape} — one-hot or "
                            "per-class scores, not one label per sample",
                            hint="give class indices, e.g. y.argmax(axis=1)")
        self.y = self.y.reshape(-1)
        if len(self.x) == 0:
            raise DataError(f"dataset '{self.name}' is empty")
        if len(self.x) != len(self.y):
            raise DataError(f"dataset '{self.name}' has {len(self.x)} inputs but {len(self.y)} labels")
        if self.x.dtype == object or not np.issubdtype(self.x.dtype, np.number):
            raise DataError(f"dataset '{self.name}' has non-numeric inputs (dtype {self.x.dtype})")
        self.x = self.x.astype(np.float32, copy=False)

    def __len__(self) -> int:
        return len(self.x)

    def sample(self, limit: int | None, seed: int = 0) -> Dataset:
        """A seeded random subset of at most ``limit`` samples (order kept stable)."""
        if limit is None or limit >= len(self):
            return self
        if limit <= 0:
            raise DataError(f"limit must be a positive number of samples, got {limit}")
        idx = np.sort(np.random.default_rng(seed).choice(len(self), size=limit, replace=False))
        return Dataset(self.x[idx], self.y[idx], self.name, self.feature_names, dict(self.meta))

    def describe(self) -> dict[str, Any]:
        values, counts = np.unique(self.y.astype(str), return_counts=True)
        return {"name": self.name, "n": len(self), "shape": list(self.x.shape[1:]),
                "labels": {str(v): int(c) for v, c in zip(values, counts)}, **self.meta}


def align_labels(data: Dataset, target: Target) -> np.ndarray:
    """Map raw labels to indices into ``target.classes``; unknown labels are a DataError."""
    names = [str(c) for c in target.classes]
    lookup = {n: i for i, n in enumerate(names)}
    raw = data.y
    if np.issubdtype(raw.dtype, np.floating) and np.all(raw == np.round(raw)):
        raw = raw.astype(np.int64)
    keys = raw.astype(str)
    unknown = sorted(set(keys.tolist()) - set(lookup))  # plain str, not np.str_, in messages
    if unknown:
        raise DataError(f"labels {unknown[:10]} of dataset '{data.name}' are not classes of the target {names[:20]}",
                        hint="check that the data and the model use the same label encoding; when the labels are "
                             "names (folder names, CSV strings), give the model's class names in output order "
                             "(bastion attack --classes a,b,...; target.classes in a policy)")
    return np.array([lookup[k] for k in keys], dtype=np.int64)


# --- file loaders ---------------------------------------------------------------------------------
def check_label_indices(y: np.ndarray, n: int, n_classes: int, *, what: str = "labels") -> np.ndarray:
    """``y`` as int64 class indices in ``[0, n_classes)``, one per input; a DataError otherwise."""
    y = np.asarray(y).reshape(-1)
    if len(y) != n:
        raise DataError(f"{n} inputs but {len(y)} {what}")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{what} must be class indices (integers), got dtype {y.dtype}",
                            hint="map labels to indices with bastion.core.data.align_labels")
    if len(y) and (y.min() < 0 or y.max() >= n_classes):
        raise DataError(f"{what} must be in [0, {n_classes - 1}] for this target; found {int(y.min())}..{int(y.max())}")
    return y.astype(np.int64)


def load_npz(path: str | Path) -> Dataset:
    path = Path(path)
    _refuse_not_npz(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            xk = next((k for k in ("x", "X", "inputs") if k in keys), None)
            yk = next((k for k in ("y", "Y", "labels") if k in keys), None)
            if xk is None or yk is None:
                raise DataError(f"{path}: an .npz dataset needs arrays named 'x' and 'y' (found {sorted(keys)})")
            return Dataset(z[xk], z[yk], name=str(path))
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise UnsafeFileError(f"{path} holds object arrays, which are pickles and can run code when loaded",
                                  hint="save plain numeric arrays (np.savez with numeric dtypes)") from exc
        raise DataError(f"{path}: cannot read .npz: {exc}") from exc
    except (zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: the .npz archive is damaged or truncated ({exc})",
                        hint="write the file again (np.savez) and check that it was copied whole") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc


def _refuse_not_npz(path: Path) -> None:
    """An .npz is a zip archive: say what a file that is not one looks like, rather than letting
    NumPy read it as a pickle and report "object arrays"."""
    try:
        with path.open("rb") as fh:
            head = fh.read(6)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if head.startswith(b"PK"):
        return
    if head.startswith(b"\x93NUMPY"):
        what = "a single .npy array, not an .npz archive"
    elif head[:1] == b"\x80":
        what = "a pickle, which bastion never loads (it can run code)"
    elif not head:
        what = "empty"
    else:
        what = "not an .npz (zip) archive"
    raise DataError(f"{path}: the file is {what}", hint="save the data with np.savez(path, x=..., y=...)")


def load_npy_pair(x_path: str | Path, y_path: str | Path) -> Dataset:
    arrays = []
    for p in (x_path, y_path):
        try:
            arrays.append(np.load(p, allow_pickle=False))
        except ValueError as exc:
            if "pickle" in str(exc).lower():
                raise UnsafeFileError(f"{p} holds object arrays (pickles); refusing to load",
                                      hint="save plain numeric arrays (np.save with a numeric dtype)") from exc
            raise DataError(f"{p}: not a readable .npy array ({exc})") from exc
        except (OSError, EOFError) as exc:
            raise DataError(f"{p}: cannot read: {exc}") from exc
    x, y = arrays
    return Dataset(x, y, name=f"{x_path},{y_path}")


def load_csv(path: str | Path, label: str) -> Dataset:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark is not part of the first column's name
    except UnicodeDecodeError as exc:
        log.warning("%s is not UTF-8 (byte 0x%02x at offset %d); reading it as Latin-1", path, raw[exc.start],
                    exc.start)
        text = raw.decode("latin-1")  # every byte is a Latin-1 character: the common non-UTF-8 export
    rows = list(csv.reader(io.StringIO(text, newline="")))
    if len(rows) < 2:
        raise DataError(f"{path}: a CSV dataset needs a header row and at least one data row")
    header, body = rows[0], rows[1:]
    if label not in header:
        raise DataError(f"{path}: label column '{label}' not found; columns are {header}")
    li = header.index(label)
    names = [h for i, h in enumerate(header) if i != li]
    x = np.empty((len(body), len(names)), np.float64)
    for r, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}:{r}: {len(row)} fields where the header has {len(header)}")
        vals = [v for i, v in enumerate(row) if i != li]
        try:
            x[r - 2] = [float(v) for v in vals]
        except ValueError as exc:
            raise DataError(f"{path}:{r}: non-numeric feature value ({exc})",
                            hint="encode categorical columns as numbers (one-hot) first") from exc
    y = np.array([row[li] for row in body])
    try:
        y = y.astype(np.int64)
    except ValueError:
        pass
    return Dataset(x, y, name=str(path), feature_names=names)


def load_image_folder(root: str | Path, size: tuple[int, int] | None = None, grayscale: bool = False) -> Dataset:
    """A folder with one sub-folder of images per class (like torchvision's ImageFolder)."""
    image = require("PIL.Image", "images")
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise DataError(f"{root}: expected one sub-folder of images per class")
    xs, ys = [], []
    for cls in classes:
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with image.open(f) as im:
                    im = im.convert("L" if grayscale else "RGB")
                    if size is not None:
                        im = im.resize(size)
                    arr = np.asarray(im, np.float32) / 255.0
            except Exception as exc:  # Pillow raises many types for broken files
                raise DataError(f"{f}: cannot read image: {exc}") from exc
            xs.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
            ys.append(cls)
    if not xs:
        raise DataError(f"{root}: no images found")
    shapes = {a.shape for a in xs}
    if len(shapes) > 1:
        raise DataError(f"{root}: images have different sizes {sorted(shapes)[:3]}", hint="pass an image size")
    return Dataset(np.stack(xs), np.array(ys), name=str(root))
