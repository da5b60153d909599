"""Data loaders (npz, npy, CSV, image folders, demo, Python factories), sampling, and the errors
for data that does not fit a target."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bastion.core.data import Dataset, align_labels
from bastion.core.loader import load_data, load_target
from bastion.core.safe_load import torch_load_weights
from bastion.core.spec import InputSpec
from bastion.core.targets.callable_target import CallableTarget
from bastion.errors import DataError, UnsafeFileError, UsageError


def _uniform(a: np.ndarray) -> np.ndarray:
    return np.full((len(a), 3), 1 / 3)


# ------------------------------------------------------------------------------------- formats
def test_npz_with_x_and_y(tmp_path: Path, rng: np.random.Generator) -> None:
    x, y = rng.random((20, 2, 3)), rng.integers(0, 3, 20)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    for spec in (f"npz:{path}", str(path)):
        ds = load_data(spec)
        assert ds.x.dtype == np.float32 and ds.x.shape == (20, 2, 3)
        np.testing.assert_allclose(ds.x, x, rtol=1e-6)
        np.testing.assert_array_equal(ds.y, y)
    np.savez(tmp_path / "alt.npz", X=x, labels=y)
    assert len(load_data(str(tmp_path / "alt.npz"))) == 20


def test_npz_without_x_or_y_names_the_arrays_found(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", inputs=np.zeros((2, 2)), target=np.zeros(2))
    with pytest.raises(DataError, match=r"needs arrays named 'x' and 'y' \(found \['inputs', 'target'\]\)"):
        load_data(str(tmp_path / "d.npz"))


def test_npz_with_object_arrays_is_refused_as_unsafe(tmp_path: Path) -> None:
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    with pytest.raises(UnsafeFileError, match="object arrays.*pickles.*run code") as err:
        load_data(f"npz:{path}")
    assert "numeric" in err.value.hint


def test_npy_pair_and_object_npy(tmp_path: Path, rng: np.random.Generator) -> None:
    x, y = rng.random((8, 4)), np.arange(8) % 2
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    ds = load_data(f"npy:{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}")
    assert ds.x.shape == (8, 4) and list(ds.y) == list(y)
    np.save(tmp_path / "o.npy", np.array([object()] * 8, dtype=object), allow_pickle=True)
    with pytest.raises(UnsafeFileError, match="object arrays"):
        load_data(f"npy:{tmp_path / 'o.npy'},{tmp_path / 'y.npy'}")
    with pytest.raises(UsageError, match="two files"):
        load_data(f"npy:{tmp_path / 'x.npy'}")
    with pytest.raises(DataError, match="no such data file"):
        load_data(f"npy:{tmp_path / 'x.npy'},{tmp_path / 'missing.npy'}")


def test_csv_with_label_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,label,b\n1.5,cat,2\n-3,dog,4e-1\n0,cat,7\n")
    ds = load_data(f"csv:{path}?label=label")
    np.testing.assert_allclose(ds.x, [[1.5, 2], [-3, 0.4], [0, 7]])
    assert list(ds.y) == ["cat", "dog", "cat"] and ds.feature_names == ["a", "b"]
    assert load_data(str(path), label="label").x.shape == (3, 2)
    ints = tmp_path / "i.csv"
    ints.write_text("f,y\n0.1,1\n0.2,0\n")
    assert load_data(f"csv:{ints}?label=y").y.dtype == np.int64


def test_csv_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,b,label\n1,2,x\n3,4,y\n")
    with pytest.raises(DataError, match=r"t.csv: label column 'target' not found; columns are \['a', 'b', 'label'\]"):
        load_data(f"csv:{path}?label=target")
    with pytest.raises(UsageError, match="label column") as err:
        load_data(f"csv:{path}")
    assert "?label=" in err.value.hint
    short = tmp_path / "short.csv"
    short.write_text("a,b,label\n1,2,x\n3,y\n")
    with pytest.raises(DataError, match=r"short.csv:3: 2 fields where the header has 3"):
        load_data(f"csv:{short}?label=label")
    text = tmp_path / "text.csv"
    text.write_text("a,b,label\n1,2,x\n3,4,y\n5,red,z\n")
    with pytest.raises(DataError, match=r"text.csv:4: non-numeric") as err:
        load_data(f"csv:{text}?label=label")
    assert "one-hot" in err.value.hint
    empty = tmp_path / "empty.csv"
    empty.write_text("a,label\n")
    with pytest.raises(DataError, match="at least one data row"):
        load_data(f"csv:{empty}?label=label")


def test_image_folder_made_with_pillow(tmp_path: Path, rng: np.random.Generator) -> None:
    from PIL import Image

    pixels = {}
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            arr = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / cls / f"{i}.png")
            pixels[(cls, i)] = arr
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = load_data(f"images:{tmp_path}")
    assert ds.x.shape == (6, 3, 6, 5) and list(ds.y) == ["cat"] * 3 + ["dog"] * 3
    np.testing.assert_allclose(ds.x[4], pixels[("dog", 1)].transpose(2, 0, 1) / 255.0, atol=1e-6)
    assert ds.x.min() >= 0 and ds.x.max() <= 1
    gray = load_data(f"images:{tmp_path}?mode=L")
    assert gray.x.shape == (6, 1, 6, 5)
    assert load_data(str(tmp_path), image_size=(4, 4)).x.shape == (6, 3, 4, 4)  # a bare folder works too
    Image.fromarray(rng.integers(0, 256, size=(9, 9, 3), dtype=np.uint8)).save(tmp_path / "dog" / "big.png")
    with pytest.raises(DataError, match="different sizes") as err:
        load_data(f"images:{tmp_path}")
    assert "image size" in err.value.hint
    (tmp_path / "dog" / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="broken.png: cannot read image"):
        load_data(f"images:{tmp_path}", image_size=(4, 4))


def test_image_folder_without_class_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="one sub-folder of images per class"):
        load_data(f"images:{tmp_path}")
    with pytest.raises(DataError, match="no such image folder"):
        load_data(f"images:{tmp_path / 'missing'}")
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match="no images found"):
        load_data(f"images:{tmp_path}")


def test_demo_digits_and_breast_cancer_data() -> None:
    digits = load_data("demo:digits")
    assert digits.x.shape == (360, 1, 8, 8) and digits.x.min() >= 0 and digits.x.max() <= 1
    assert set(digits.y) == set(range(10))
    cancer = load_data("demo:breast-cancer")
    assert cancer.x.shape[1] == 30 and len(cancer.feature_names) == 30
    train = load_data("demo:digits-train")
    assert len(train) + len(digits) == 1797
    with pytest.raises(UsageError, match="unknown demo dataset 'mnist'"):
        load_data("demo:mnist")


def test_python_data_factory(tmp_path: Path) -> None:
    src = tmp_path / "mydata.py"
    src.write_text("import numpy as np\n"
                   "def pair():\n    return np.ones((4, 2)), np.array([0, 1, 0, 1])\n"
                   "def bad():\n    return [1, 2, 3]\n")
    ds = load_data(f"python:{src}:pair")
    assert ds.x.shape == (4, 2) and ds.name == f"python:{src}:pair"
    with pytest.raises(DataError, match="must return \\(x, y\\) or a bastion Dataset"):
        load_data(f"python:{src}:bad")
    with pytest.raises(UsageError, match="no such Python file"):
        load_data(f"python:{tmp_path / 'nope.py'}:pair")
    with pytest.raises(UsageError, match="cannot import"):
        load_data("python:no_such_module_xyz:make")


# -------------------------------------------------------------------------------------- sampling
def test_limit_keeps_a_seeded_sorted_subset(rng: np.random.Generator) -> None:
    x = np.arange(100, dtype=np.float32)[:, None]
    y = np.arange(100)
    a = load_data((x, y), limit=10, seed=1)
    b = load_data((x, y), limit=10, seed=1)
    c = load_data((x, y), limit=10, seed=2)
    assert len(a) == 10 and list(a.y) == list(b.y) and list(a.y) != list(c.y)
    assert list(a.y) == sorted(a.y)
    np.testing.assert_array_equal(a.x[:, 0], a.y)  # inputs and labels stay paired
    assert len(load_data((x, y), limit=1000)) == 100
    with pytest.raises(DataError, match="positive"):
        load_data((x, y), limit=0)


def test_limit_applies_to_file_specs(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((50, 2)), y=np.arange(50))
    ds = load_data(str(tmp_path / "d.npz"), limit=7, seed=3)
    assert len(ds) == 7 and len(set(ds.y)) == 7


# ---------------------------------------------------------------------------- bad data, bad files
def test_dataset_refuses_empty_mismatched_and_non_numeric() -> None:
    with pytest.raises(DataError, match="empty"):
        Dataset(np.zeros((0, 3)), np.zeros(0), name="e")
    with pytest.raises(DataError, match="3 inputs but 2 labels"):
        Dataset(np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(DataError, match="non-numeric"):
        Dataset(np.array([["a", "b"]]), np.zeros(1))


def test_data_that_does_not_fit_the_target() -> None:
    target = CallableTarget(_uniform, ["a", "b", "c"], InputSpec(shape=(1, 4, 4)))
    good = np.full((3, 1, 4, 4), 0.5)
    target.input_spec.validate(good)
    with pytest.raises(DataError, match="per-sample shape"):
        target.predict_proba(np.zeros((3, 1, 8, 8)))
    with pytest.raises(DataError, match="bounds"):
        target.predict_proba(good * 255)
    with pytest.raises(DataError, match="NaN"):
        target.predict_proba(np.where(np.arange(48).reshape(3, 1, 4, 4) == 20, np.nan, good))
    with pytest.raises(DataError, match="dtype"):
        target.predict_proba(good.astype(str))
    assert target.queries == 0  # refused inputs cost no queries


def test_align_labels_maps_raw_labels_and_refuses_unknown_ones() -> None:
    target = CallableTarget(_uniform, ["cat", "dog", "eel"], InputSpec(shape=(2,)))
    ds = Dataset(np.zeros((4, 2)), np.array(["dog", "cat", "eel", "dog"]), name="pets")
    np.testing.assert_array_equal(align_labels(ds, target), [1, 0, 2, 1])
    bad = Dataset(np.zeros((2, 2)), np.array(["dog", "cow"]), name="farm")
    with pytest.raises(DataError, match=r"labels \['cow'\] of dataset 'farm' are not classes") as err:
        align_labels(bad, target)
    assert "label encoding" in err.value.hint
    numeric = CallableTarget(_uniform, [0, 1, 2], InputSpec(shape=(2,)))
    floats = Dataset(np.zeros((3, 2)), np.array([2.0, 0.0, 1.0]))  # e.g. read from a float CSV column
    np.testing.assert_array_equal(align_labels(floats, numeric), [2, 0, 1])
    with pytest.raises(DataError, match=r"\['7'\]"):
        align_labels(Dataset(np.zeros((1, 2)), np.array([7])), numeric)


@pytest.mark.parametrize("spec", ["model.pkl", "sklearn:model.joblib", "torchscript:weights.pickle", "m.sav"])
def test_pickle_model_specs_are_refused_with_the_reason(tmp_path: Path, spec: str) -> None:
    scheme, _, name = spec.rpartition(":")
    path = tmp_path / name
    path.write_bytes(b"\x80\x04K\x01.")  # a real (harmless) pickle: refused by name, never opened
    with pytest.raises(UnsafeFileError, match="execute arbitrary code") as err:
        load_target(f"{scheme}:{path}" if scheme else str(path), input_shape=(2,))
    assert "skops" in err.value.hint and "bastion inspect" in err.value.hint


def test_torch_weights_load_only_plain_tensors(tmp_path: Path) -> None:
    import collections

    import torch

    good = tmp_path / "w.pt"
    torch.save({"w": torch.ones(2)}, good)
    assert torch.equal(torch_load_weights(good)["w"], torch.ones(2))
    bad = tmp_path / "obj.pt"
    torch.save({"w": torch.ones(2), "x": collections.Counter("ab"), "f": _uniform}, bad)
    with pytest.raises(UnsafeFileError, match="weights only"):
        torch_load_weights(bad)


@pytest.mark.parametrize("spec, err, match", [
    ("", UsageError, "empty model spec"),
    ("ftp:model.onnx", UsageError, "unknown model scheme 'ftp'"),
    ("model.bin", UsageError, "cannot tell what kind of model"),
    ("onnx:missing.onnx", Exception, "no such model file"),
    ("demo:resnet", UsageError, "unknown demo model 'resnet'"),
])
def test_bad_model_specs(spec: str, err: type, match: str) -> None:
    with pytest.raises(err, match=match):
        load_target(spec, input_shape=(2,))


@pytest.mark.parametrize("spec, match", [
    ("s3:bucket/x.npz", "unknown data scheme 's3'"),
    ("data.parquet", "cannot tell what kind of data"),
    ("npz:missing.npz", "no such data file"),
])
def test_bad_data_specs(spec: str, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        load_data(spec)


# ------------------------------------------------------------------ bad input, clear errors (issue 7)
def test_truncated_npz_is_a_data_error(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.random((50, 4)), y=np.arange(50) % 2)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match="damaged or truncated") as err:
        load_data(f"npz:{path}")
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content, words", [
    (bytes(range(256)) * 4, r"not an \.npz \(zip\) archive"),
    (b"\x80\x04\x95" + b"\x00" * 20, "a pickle"),
    (b"", "empty"),
])
def test_file_that_is_not_an_npz_says_what_it_is(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "d.npz"
    path.write_bytes(content)
    with pytest.raises(DataError, match=words) as err:
        load_data(f"npz:{path}")
    assert "object arrays" not in str(err.value)


def test_npz_scheme_on_a_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a directory"):
        load_data(f"npz:{tmp_path}")


def test_zero_d_npy_inputs(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.array(3.0))
    np.save(tmp_path / "y.npy", np.array(1))
    with pytest.raises(DataError, match="0-d array"):
        load_data(f"npy:{tmp_path / 'x.npy'},{tmp_path / 'y.npy'}")


def test_one_hot_labels_are_refused_with_the_fix(rng: np.random.Generator) -> None:
    with pytest.raises(DataError, match="one-hot") as err:
        Dataset(rng.random((4, 3)), np.eye(3)[[0, 1, 2, 0]], name="d")
    assert "argmax" in err.value.hint


def test_csv_with_byte_order_mark_and_latin1(tmp_path: Path) -> None:
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufefflabel,größe\ncat,1.5\ndog,2\n".encode("utf-8"))
    ds = load_data(f"csv:{bom}?label=label")            # the BOM is not part of the label column's name
    assert ds.feature_names == ["größe"] and list(ds.y) == ["cat", "dog"]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("taille,étiquette\n1.5,chat\n2,chien\n".encode("latin-1"))
    ds = load_data(f"csv:{latin}?label=étiquette")
    assert ds.feature_names == ["taille"] and list(ds.y) == ["chat", "chien"]


def test_images_in_0_255_need_declared_bounds(rng: np.random.Generator) -> None:
    ds = Dataset(rng.integers(0, 256, (6, 1, 4, 4)).astype(np.float32), np.arange(6) % 2, name="pixels")

    def fn(a: np.ndarray) -> np.ndarray:
        return np.full((len(a), 2), 0.5)

    with pytest.raises(DataError, match=r"\[0, 255\]") as err:
        load_target(fn, data=ds, classes=[0, 1])
    assert "bounds" in err.value.hint
    target = load_target(fn, data=ds, classes=[0, 1], bounds=(0.0, 255.0))
    assert target.input_spec.bounds_arrays()[1].max() == 255.0


def test_label_names_hint_at_classes(rng: np.random.Generator) -> None:
    ds = Dataset(rng.random((4, 3)), np.array(["cat", "dog", "cat", "dog"]), name="pets")
    target = CallableTarget(lambda a: np.full((len(a), 2), 0.5), [0, 1], InputSpec(shape=(3,)))
    with pytest.raises(DataError) as err:
        align_labels(ds, target)
    assert "--classes" in err.value.hint
