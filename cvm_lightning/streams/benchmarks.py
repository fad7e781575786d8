"""The registered benchmarks. Each builds a class- or domain-incremental Avalanche scenario.

Only split-digits and domain-digits are embedded. The others read ``--data-root``, in the
standard layouts of torchvision and Avalanche or in an ImageFolder layout
(``ROOT/train/<class>/*``, ``ROOT/test/<class>/*``), and never download
unless ``--download`` is given.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from cvm_lightning.concepts.defaults import DEFAULT_TEMPLATES
from cvm_lightning.errors import ConfigError, DataError
from cvm_lightning.streams.lifetime import LifetimeSpec, lifetime_stream
from cvm_lightning.streams.registry import (
    DOMAIN_INCREMENTAL,
    LIFETIME,
    Benchmark,
    StreamConfig,
    register_benchmark,
    split_by_class,
    split_by_condition,
    split_per_class,
    subsample_per_class,
)

# The conditions of the domain-incremental streams, in stream order (see cvm_lightning.streams.corruptions).
RGB_CONDITIONS = ("clean", "dark", "low contrast", "blur", "noise", "colour cast", "jpeg")
GREY_CONDITIONS = ("clean", "dark", "low contrast", "blur", "noise")


def shipped_class_names(name: str) -> dict:
    """The class list shipped with the package for benchmark data ``name``."""
    return json.loads(files("cvm_lightning.streams").joinpath(f"class_names/{name}.json").read_text())


def class_incremental(
    name: str,
    config: StreamConfig,
    train,
    test,
    class_names: list[str],
    default_experiences: int,
    *,
    in_chans: int = 3,
    image_size: int = 32,
    templates: tuple[str, ...] = DEFAULT_TEMPLATES,
    descriptions: dict[str, str] | None = None,
) -> Benchmark:
    """A :class:`Benchmark` from train/test datasets, subsampled per ``config``."""
    train = _keep_per_class(train, config.train_per_class, config.seed, "--train-per-class")
    test = _keep_per_class(test, config.test_per_class, config.seed, "--test-per-class")
    for dataset in (train, test):
        if hasattr(dataset, "decode_all"):  # image files: a broken one is named now, not mid-training
            dataset.decode_all()
    scenario = split_by_class(train, test, len(class_names), config.n_experiences or default_experiences, config.seed,
                              config.shuffle_classes)
    return Benchmark(name, scenario, class_names, in_chans, image_size, templates, descriptions or {})


def domain_incremental(
    name: str,
    config: StreamConfig,
    train,
    test,
    class_names: list[str],
    conditions: tuple[str, ...],
    *,
    in_chans: int = 3,
    image_size: int = 32,
    templates: tuple[str, ...] = DEFAULT_TEMPLATES,
) -> Benchmark:
    """A domain-incremental :class:`Benchmark`: every class in every experience, each under its own condition.

    The training images (at most ``config.train_per_class`` a class in all)
    are shared out among the experiences, a seeded, class-balanced part each,
    so no image is seen twice. Every test experience holds the same test
    images under its experience's condition. ``config.n_experiences`` keeps
    the first conditions; the noise is seeded by ``config.seed``, so a seed
    always gives the same pixels.
    """
    from cvm_lightning.streams.corruptions import check_conditions, corrupt
    from cvm_lightning.streams.datasets import TensorImageDataset, stacked_pixels, uint8_to_unit

    check_conditions(conditions)
    n = config.n_experiences or len(conditions)
    if not 1 <= n <= len(conditions):
        raise ConfigError(f"--n-experiences {n}: benchmark {name} has {len(conditions)} conditions "
                          f"({', '.join(conditions)}); choose 1 to {len(conditions)}.")
    conditions = conditions[:n]
    train = _keep_per_class(train, config.train_per_class, config.seed, "--train-per-class")
    test = _keep_per_class(test, config.test_per_class, config.seed, "--test-per-class")
    (train_pixels, train_targets), (test_pixels, test_targets) = (stacked_pixels(data) for data in (train, test))
    parts = split_per_class(train_targets.tolist(), n, config.seed)
    every_class = set(range(len(class_names)))
    short = sorted({class_names[c] for part in parts for c in every_class - set(train_targets[part].tolist())})
    if short:
        raise DataError(f"Classes {short[:5]} have fewer training images than the {n} conditions: every condition "
                        "needs every class; keep more images a class or fewer --n-experiences.")
    seed = config.seed * 100_003  # each condition and split draws its own noise
    train_sets = [TensorImageDataset(corrupt(train_pixels[part], c, seed + 2 * k), train_targets[part], uint8_to_unit)
                  for k, (c, part) in enumerate(zip(conditions, parts))]
    test_sets = [TensorImageDataset(corrupt(test_pixels, c, seed + 2 * k + 1), test_targets, uint8_to_unit)
                 for k, c in enumerate(conditions)]
    return Benchmark(name, split_by_condition(train_sets, test_sets), class_names, in_chans, image_size, templates,
                     conditions=conditions)


def from_datasets(train, test, class_names, config: StreamConfig, name: str = "datasets") -> Benchmark:
    """A class-incremental :class:`Benchmark` over a user's own map-style datasets of ``(image, label)`` pairs.

    Labels are class ids into ``class_names``; images are C x H x W float
    tensors in [0, 1] or uint8. The class order, per-class subsampling and
    experiences follow ``config`` as for the registered benchmarks. Every
    class needs training images, and every image of the stream the same
    channel count (the first image of each class and split is checked), and
    no float image a NaN or infinite pixel (every image is checked).
    """
    from cvm_lightning.settings import check_class_names
    from cvm_lightning.streams.datasets import check_finite, image_shape, labelled

    class_names = check_class_names(class_names)
    if config.n_experiences is None:
        raise ConfigError("from_datasets needs n_experiences: how many experiences the classes split into.")
    splits = {"training": labelled(train, "training"), "test": labelled(test, "test")}
    shapes = {}
    for what, data in splits.items():
        check_finite(data, f"{what} set")
        outside = sorted({t for t in data.targets if not 0 <= t < len(class_names)})
        if outside:
            raise DataError(f"The {what} set has labels {outside[:10]} outside the {len(class_names)} class_names "
                            f"(ids 0..{len(class_names) - 1}): give a name for every class.")
        first = {}  # class id -> the index of its first image
        for index, target in enumerate(data.targets):
            first.setdefault(target, index)
        shapes.update({(what, class_names[c]): image_shape(data, i, what) for c, i in sorted(first.items())})
    missing = [name for name in class_names if ("training", name) not in shapes]
    if missing:
        raise DataError(f"Classes {missing[:10]} have no training images: every class needs some.")
    channels = {shape[0] for shape in shapes.values()}
    if len(channels) > 1:
        seen = ", ".join(f"{what} {name}: {shape[0]}" for (what, name), shape in shapes.items())
        raise DataError(f"The images have different channel counts ({seen}); convert them to one mode "
                        "(for example all RGB) first.")
    image_size = max(shape[-1] for shape in shapes.values())
    return class_incremental(name, config, splits["training"], splits["test"], class_names, config.n_experiences,
                             in_chans=channels.pop(), image_size=image_size)


def _keep_per_class(dataset, per_class: int | None, seed: int, flag: str):
    if per_class is None:
        return dataset
    if not hasattr(dataset, "subset"):  # any dataset with .targets: let Avalanche wrap it
        from avalanche.benchmarks.utils import as_taskaware_classification_dataset

        dataset = as_taskaware_classification_dataset(dataset)
    return dataset.subset(subsample_per_class(list(dataset.targets), per_class, seed, flag))


def require_root(config: StreamConfig, name: str, layout: str) -> Path:
    if config.data_root is None:
        raise DataError(f"Benchmark {name} needs --data-root DIR holding {layout}")
    root = Path(config.data_root).expanduser()
    if not root.is_dir():
        raise DataError(f"--data-root {root} is not a folder. Benchmark {name} needs {layout}")
    return root


def _torchvision_cifar(kind: str, root: Path, download: bool, layout: str):
    import torch
    from torchvision.datasets import CIFAR10, CIFAR100

    from cvm_lightning.streams.datasets import TensorImageDataset, uint8_to_unit

    cls = CIFAR10 if kind == "cifar10" else CIFAR100
    try:
        splits = [cls(str(root), train=train, download=download) for train in (True, False)]
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise DataError(f"No {kind.upper()} data found in {root}. Put there {layout}") from err
    return [
        TensorImageDataset(
            torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets), uint8_to_unit
        )
        for ds in splits
    ]


def _cifar_splits(kind: str, name: str, config: StreamConfig):
    """CIFAR's training and test sets from ``--data-root`` and its class names."""
    shipped = shipped_class_names(kind)
    folder = "cifar-10-batches-py" if kind == "cifar10" else "cifar-100-python"
    layout = (
        f"either {folder}/ (torchvision's layout) or train/<class>/*.png and test/<class>/*.png "
        f"(ImageFolder, class folders named {', '.join(shipped['folders'][:3])}, ...); "
        "or pass --download on a machine with internet."
    )
    root = require_root(config, name, layout)
    if (root / "train").is_dir():
        from cvm_lightning.streams.images import load_image_folder

        train, test, _, _ = load_image_folder(root, image_size=32, class_names=shipped["folders"])
    else:
        train, test = _torchvision_cifar(kind, root, config.download, layout)
    return train, test, shipped["names"]


def _cifar(kind: str, name: str, default_experiences: int, config: StreamConfig) -> Benchmark:
    return class_incremental(name, config, *_cifar_splits(kind, name, config), default_experiences)


DIGIT_TEMPLATES = ("a handwritten digit {}.", "the number {}.", "a photo of the digit {}.")


@register_benchmark(
    "split-digits", "sklearn's 8x8 digits, 5 experiences of 2 classes (embedded, the default)", augment="none"
)
def split_digits(config: StreamConfig) -> Benchmark:
    from cvm_lightning.streams.datasets import DIGIT_NAMES, load_digits_split

    train, test = load_digits_split()
    return class_incremental(
        "split-digits", config, train, test, list(DIGIT_NAMES), 5, in_chans=1, image_size=8, templates=DIGIT_TEMPLATES
    )


@register_benchmark(
    "domain-digits",
    f"sklearn's 8x8 digits, all 10 classes under {len(GREY_CONDITIONS)} conditions ({', '.join(GREY_CONDITIONS)}) "
    "(embedded)",
    augment="none",
    kind=DOMAIN_INCREMENTAL,
)
def domain_digits(config: StreamConfig) -> Benchmark:
    from cvm_lightning.streams.datasets import DIGIT_NAMES, load_digits_split

    return domain_incremental(
        "domain-digits", config, *load_digits_split(), list(DIGIT_NAMES), GREY_CONDITIONS, in_chans=1, image_size=8,
        templates=DIGIT_TEMPLATES,
    )


# The lifetimes on site: a deployed model of four classes, then small updates (see cvm_lightning.streams.lifetime).
SITE_DIGITS = LifetimeSpec(first_classes=4, first_per_class=60, update_per_class=15, updates=8,
                           conditions=GREY_CONDITIONS[1:])
SITE_CIFAR10 = LifetimeSpec(first_classes=4, first_per_class=1000, update_per_class=20, updates=10,
                            conditions=RGB_CONDITIONS[1:])


def _lifetime_description(data: str, spec: LifetimeSpec, where: str) -> str:
    return (f"{data}: a model of {spec.first_classes} classes ({spec.first_per_class} images each), then "
            f"{spec.updates} updates of {spec.update_per_class} new images a class, new conditions and new classes "
            f"in turn ({where})")


@register_benchmark("site-digits", _lifetime_description("sklearn's 8x8 digits", SITE_DIGITS, "embedded"),
                    augment="none", kind=LIFETIME)
def site_digits(config: StreamConfig) -> Benchmark:
    from cvm_lightning.streams.datasets import DIGIT_NAMES, load_digits_split

    return lifetime_stream("site-digits", config, *load_digits_split(), list(DIGIT_NAMES), SITE_DIGITS, in_chans=1,
                           image_size=8, templates=DIGIT_TEMPLATES)


FASHION_MNIST_NAMES = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)
FASHION_MNIST_DEBIAN = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _read_idx(path: Path):
    """An IDX file (optionally gzipped) as a uint8 tensor: MNIST's format."""
    import gzip

    import torch

    with (gzip.open(path) if path.suffix == ".gz" else open(path, "rb")) as f:
        data = f.read()
    n_dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(n_dims)]
    return torch.frombuffer(bytearray(data[4 + 4 * n_dims :]), dtype=torch.uint8).view(shape)


@register_benchmark(
    "split-fashion-mnist",
    "Fashion-MNIST (28x28 grey), 5 experiences of 2 classes (Debian dataset-fashion-mnist or --data-root)",
    augment="none",
)
def split_fashion_mnist(config: StreamConfig) -> Benchmark:
    from cvm_lightning.streams.datasets import TensorImageDataset, uint8_to_unit

    layout = (
        f"the four Fashion-MNIST files ({', '.join(sum(FASHION_MNIST_FILES.values(), ()))}), "
        "optionally without .gz. Debian and Ubuntu ship them: `apt-get install dataset-fashion-mnist` "
        f"puts them in {FASHION_MNIST_DEBIAN}, which is used when --data-root is not given."
    )
    root = require_root(config, "split-fashion-mnist", layout) if config.data_root else FASHION_MNIST_DEBIAN
    splits = []
    for images_name, labels_name in FASHION_MNIST_FILES.values():
        found = [root / n if (root / n).exists() else root / n.removesuffix(".gz") for n in (images_name, labels_name)]
        missing = [str(p) for p in found if not p.exists()]
        if missing:
            raise DataError(f"Fashion-MNIST files missing: {', '.join(missing)}. split-fashion-mnist needs {layout}")
        images, labels = (_read_idx(p) for p in found)
        splits.append(TensorImageDataset(images.unsqueeze(1), labels.long(), uint8_to_unit))
    return class_incremental(
        "split-fashion-mnist",
        config,
        *splits,
        list(FASHION_MNIST_NAMES),
        5,
        in_chans=1,
        image_size=28,
        templates=(
            "a photo of a {}.",
            "a black and white photo of a {}.",
            "a product photo of a {}, an item of clothing.",
        ),
    )


@register_benchmark("split-cifar10", "CIFAR-10, 5 experiences of 2 classes (--data-root)")
def split_cifar10(config: StreamConfig) -> Benchmark:
    return _cifar("cifar10", "split-cifar10", 5, config)


@register_benchmark(
    "domain-cifar10",
    f"CIFAR-10, all 10 classes under {len(RGB_CONDITIONS)} conditions ({', '.join(RGB_CONDITIONS)}) (--data-root)",
    kind=DOMAIN_INCREMENTAL,
)
def domain_cifar10(config: StreamConfig) -> Benchmark:
    return domain_incremental("domain-cifar10", config, *_cifar_splits("cifar10", "domain-cifar10", config),
                              RGB_CONDITIONS)


@register_benchmark("site-cifar10", _lifetime_description("CIFAR-10", SITE_CIFAR10, "--data-root"), kind=LIFETIME)
def site_cifar10(config: StreamConfig) -> Benchmark:
    train, test, names = _cifar_splits("cifar10", "site-cifar10", config)
    return lifetime_stream("site-cifar10", config, train, test, names, SITE_CIFAR10, in_chans=3, image_size=32,
                           templates=DEFAULT_TEMPLATES)


@register_benchmark(
    "split-cifar100", "CIFAR-100, 10 experiences of 10 classes; --n-experiences 20 for 20 x 5 (--data-root)"
)
def split_cifar100(config: StreamConfig) -> Benchmark:
    return _cifar("cifar100", "split-cifar100", 10, config)


@register_benchmark(
    "split-tinyimagenet", "Tiny-ImageNet (200 classes, 64x64), 10 experiences of 20 classes (--data-root)"
)
def split_tinyimagenet(config: StreamConfig) -> Benchmark:
    layout = (
        "an ImageFolder layout (train/<wnid>/*, test/<wnid>/*, classes.tsv of wnid<TAB>names) "
        "or the official tiny-imagenet-200/ layout (train/<wnid>/images/*, val/images/*, "
        "val/val_annotations.txt, words.txt)."
    )
    root = require_root(config, "split-tinyimagenet", layout)
    for candidate in (root / "tinyimagenet-sub", root / "tiny-imagenet-200"):
        if (candidate / "train").is_dir():
            root = candidate
    if (root / "test").is_dir():
        from cvm_lightning.streams.images import load_image_folder

        train, test, names, descriptions = load_image_folder(root, image_size=64)
    elif (root / "val" / "val_annotations.txt").is_file():
        train, test, names, descriptions = _official_tinyimagenet(root)
    else:
        raise DataError(f"No Tiny-ImageNet data found in {root}. Put there {layout}")
    return class_incremental(
        "split-tinyimagenet", config, train, test, names, 10, image_size=64, descriptions=descriptions
    )


def _official_tinyimagenet(root: Path):
    from cvm_lightning.streams.images import ImageFileDataset, read_class_names, scan_split

    wnids = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    train_paths, train_targets = scan_split(root / "train", wnids)
    index = {wnid: i for i, wnid in enumerate(wnids)}
    test_paths, test_targets = [], []
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        file_name, wnid = line.split("\t")[:2]
        test_paths.append(root / "val" / "images" / file_name)
        test_targets.append(index[wnid])
    words = root / "words.txt"
    names, descriptions = read_class_names(root, wnids, names_file=words if words.is_file() else None)
    return (
        ImageFileDataset(train_paths, train_targets, 64),
        ImageFileDataset(test_paths, test_targets, 64),
        names,
        descriptions,
    )


@register_benchmark(
    "core50", "CORe50 new-classes scenario: 50 objects, 10 experiences of 5 (--data-root, Avalanche layout)"
)
def core50(config: StreamConfig) -> Benchmark:
    from avalanche.benchmarks.datasets import CORe50Dataset

    layout = "Avalanche's CORe50 layout (core50_128x128/, paths.pkl, labels.pkl, LUP.pkl), or pass --download."
    root = require_root(config, "core50", layout)
    try:
        train, test = (
            CORe50Dataset(root=root, train=t, download=config.download, object_level=True) for t in (True, False)
        )
    except Exception as err:  # Avalanche raises several kinds when files are missing
        raise DataError(f"CORe50 could not be loaded from {root}: {err}. Put there {layout}") from err
    return class_incremental("core50", config, train, test, shipped_class_names("core50")["names"], 10, image_size=128)


@register_benchmark(
    "imagefolder", "your own images: ROOT/train/<class>/*, ROOT/test/<class>/* (--data-root, --n-experiences)"
)
def imagefolder(config: StreamConfig) -> Benchmark:
    layout = (
        "train/<class>/<image> and test/<class>/<image>; class names are the folder names (underscores become "
        "spaces) unless classes.txt (folder<TAB>name[<TAB>description]) or classes.json says otherwise."
    )
    from cvm_lightning.streams.images import load_image_folder

    root = require_root(config, "imagefolder", layout)
    train, test, names, descriptions = load_image_folder(root, image_size=32)
    if config.n_experiences is None:
        raise ConfigError(f"Benchmark imagefolder needs --n-experiences (a divisor of its {len(names)} classes).")
    return class_incremental("imagefolder", config, train, test, names, config.n_experiences, descriptions=descriptions)
