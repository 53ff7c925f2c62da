"""Dataset configuration: the sd-scripts dataset TOML (`[general]`, `[[datasets]]`, `[[datasets.subsets]]`) or
DreamBooth folders from the command line, resolved into plain dataclasses.

Every key is checked against the schema (where it may appear, what type it has); an unknown key fails with its
location and the nearest known name. A value is looked up subset -> dataset -> general -> command line -> default;
`null`/absent means "not set here".
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import toml

from library.data.captions import CaptionOptions
from library.data.folders import dreambooth_subsets
from library.errors import ToolkitError
from library.options.spec import DATASET, GENERAL, SUBSET
from library.options.train import dataset_cli_names, dataset_keys, refused_dataset_keys

log = logging.getLogger(__name__)

G, D, S = GENERAL, DATASET, SUBSET


def _is_bool(v: object) -> bool:
    return isinstance(v, bool)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_float(v: object) -> bool:
    return (isinstance(v, (int, float))) and not isinstance(v, bool)


def _is_str(v: object) -> bool:
    return isinstance(v, str)


def _is_resolution(v: object) -> bool:
    return _is_int(v) or (isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_int(x) for x in v))


def _is_pair(v: object) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_float(x) for x in v)


def _is_table(v: object) -> bool:
    return isinstance(v, dict)


# TOML shape of each declared type (the command line reads some as text: resolution "512,768" is [512, 768] here)
_KINDS: dict[object, tuple[Callable[[object], bool], str]] = {
    None: (_is_bool, "true or false"), int: (_is_int, "an integer"), float: (_is_float, "a number"),
    str: (_is_str, "a string"), dict: (_is_table, "a table"),
}
_SHAPES = {"resolution": (_is_resolution, "an integer or [width, height]"),
           "face_crop_aug_range": (_is_pair, "[low, high]")}


def _schema() -> dict[str, tuple[tuple[str, ...], Callable[[object], bool], str]]:
    out = {}
    for key, o in dataset_keys().items():
        check, kind = _SHAPES.get(key) or _KINDS[o.type]
        out[key] = (o.dataset, check, kind)
    return out


# key -> (levels where it may appear, type check, type name for messages); all from library/options
SCHEMA = _schema()
TOP_LEVEL = {"general", "datasets"}
DEFAULTS: dict[str, object] = {k: o.default for k, o in dataset_keys().items() if o.default is not None}
# dataset keys that fall back to a command-line option of another name
CLI_NAMES = dataset_cli_names()
_UNSUPPORTED = refused_dataset_keys()


@dataclass
class SubsetConfig:
    """One image folder and how its images and captions are used."""

    image_dir: Path
    num_repeats: int = DEFAULTS["num_repeats"]
    class_tokens: str | None = None
    is_reg: bool = False
    caption_extension: str = DEFAULTS["caption_extension"]
    caption: CaptionOptions = field(default_factory=CaptionOptions)
    color_aug: bool = False
    flip_aug: bool = False
    random_crop: bool = False
    cache_info: bool = False
    resize_interpolation: str | None = None
    alpha_mask: bool = False
    conditioning_data_dir: Path | None = None  # mask images, only with --masked_loss
    metadata_file: Path | None = None  # a fine-tuning subset: images and captions from sd-scripts' metadata JSON
    face_crop_aug_range: tuple[float, float] | None = None

    @property
    def name(self) -> str:
        """How metadata names the subset: its folder, or its metadata file (sd-scripts' ss_dataset_dirs keys)."""
        return self.metadata_file.name if self.metadata_file else self.image_dir.name


@dataclass
class DatasetConfig:
    """One dataset: a resolution and bucket settings shared by its subsets, and one batch size."""

    resolution: tuple[int, int]
    batch_size: int = DEFAULTS["batch_size"]
    enable_bucket: bool = False
    bucket_no_upscale: bool = False
    min_bucket_reso: int = DEFAULTS["min_bucket_reso"]
    max_bucket_reso: int = DEFAULTS["max_bucket_reso"]
    bucket_reso_steps: int = DEFAULTS["bucket_reso_steps"]
    network_multiplier: float = DEFAULTS["network_multiplier"]
    validation_split: float = 0.0
    validation_seed: int | None = None
    subsets: list[SubsetConfig] = field(default_factory=list)


def _suggest(key: str, options) -> str:  # noqa: ANN001
    close = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_table(table: Mapping, level: str, where: str, source: Path) -> None:
    for key, value in table.items():
        if key not in SCHEMA:
            if level == D and key == "subsets":
                continue
            raise ToolkitError(f"{source}: {where}: unknown key {key!r}{_suggest(key, SCHEMA)}")
        levels, check, kind = SCHEMA[key]
        if level not in levels:
            allowed = " or ".join({G: "[general]", D: "[[datasets]]", S: "[[datasets.subsets]]"}[lv] for lv in levels)
            raise ToolkitError(f"{source}: {where}: {key!r} is not allowed here; put it in {allowed}")
        if value is not None and not check(value):
            raise ToolkitError(f"{source}: {where}: {key!r} must be {kind}, got {value!r}")


def read_dataset_config(path: str | Path) -> dict:
    """Parse and validate a dataset TOML/JSON file; returns its raw tables."""
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"--dataset_config {path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix.lower() == ".json" else toml.loads(text)
    except (toml.TomlDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ToolkitError(f"{path}: not a valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'} file: {e}") from None
    for key in raw:
        if key not in TOP_LEVEL:
            raise ToolkitError(f"{path}: unknown top-level key {key!r}{_suggest(key, TOP_LEVEL)}: "
                               "expected [general] and [[datasets]]")
    general = raw.get("general", {})
    if not isinstance(general, dict):
        raise ToolkitError(f"{path}: [general] must be a table")
    _check_table(general, G, "[general]", path)
    datasets = raw.get("datasets", [])
    if not isinstance(datasets, list) or not datasets:
        raise ToolkitError(f"{path}: no [[datasets]] tables")
    for i, ds in enumerate(datasets):
        _check_table(ds, D, f"datasets[{i}]", path)
        subsets = ds.get("subsets", [])
        if not isinstance(subsets, list) or not subsets:
            raise ToolkitError(f"{path}: datasets[{i}] has no [[datasets.subsets]]")
        for j, sub in enumerate(subsets):
            _check_table(sub, S, f"datasets[{i}].subsets[{j}]", path)
            if "image_dir" not in sub and "metadata_file" not in sub:
                raise ToolkitError(f"{path}: datasets[{i}].subsets[{j}]: 'image_dir' is required")
    return {"general": general, "datasets": datasets, "source": path}


def _lookup(key: str, tables: list[Mapping], cli: Mapping) -> object:
    for t in tables:
        if t.get(key) is not None:
            return t[key]
    cli_value = cli.get(CLI_NAMES.get(key, key))
    if cli_value is not None:
        return cli_value
    return DEFAULTS.get(key)


def parse_resolution(value: object, what: str = "--resolution") -> tuple[int, int]:
    """`512`, `"512"`, `"768,512"` or `[768, 512]` -> (width, height)."""
    if value is None:
        raise ToolkitError(f"{what} is required (e.g. --resolution 512 or --resolution 768,512)")
    try:
        if isinstance(value, str):
            parts = [int(p) for p in value.replace("x", ",").split(",")]
        elif isinstance(value, (list, tuple)):
            parts = [int(p) for p in value]
        else:
            parts = [int(value)]
    except ValueError:
        raise ToolkitError(f"{what}: expected 'SIZE' or 'WIDTH,HEIGHT', got {value!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise ToolkitError(f"{what}: expected 'SIZE' or 'WIDTH,HEIGHT', got {value!r}")
    return parts[0], parts[1]


def parse_face_crop(value: object, what: str = "--face_crop_aug_range") -> tuple[float, float] | None:
    """`"2.0,4.0"` or `[2.0, 4.0]` -> (2.0, 4.0): the face's share of the training size, lowest and highest."""
    if value is None or value == "":
        return None
    try:
        parts = [float(p) for p in (value.split(",") if isinstance(value, str) else value)]
    except (TypeError, ValueError):
        parts = []
    if len(parts) != 2 or not 0 < parts[0] <= parts[1]:
        raise ToolkitError(f"{what} {value!r}: expected 'LOW,HIGH' with 0 < LOW <= HIGH, e.g. 2.0,4.0")
    return parts[0], parts[1]


def _subset(tables: list[Mapping], cli: Mapping, image_dir: Path, where: str,
            metadata_file: Path | None = None) -> SubsetConfig:
    def get(key: str) -> object:
        return _lookup(key, tables, cli)

    for key, why in _UNSUPPORTED.items():
        if S in SCHEMA[key][0] and get(key):
            raise ToolkitError(f"{where}: {key}: {why}")
    caption = CaptionOptions(**{k: get(k) for k in CaptionOptions.__dataclass_fields__})
    masks = get("conditioning_data_dir")
    if masks and not cli.get("masked_loss"):
        log.warning("%s: conditioning_data_dir is only used with --masked_loss; ignored", where)
    return SubsetConfig(
        image_dir=image_dir, num_repeats=int(get("num_repeats")), class_tokens=get("class_tokens"),
        is_reg=bool(get("is_reg")), caption_extension=str(get("caption_extension")), caption=caption,
        color_aug=bool(get("color_aug")), flip_aug=bool(get("flip_aug")), random_crop=bool(get("random_crop")),
        cache_info=bool(get("cache_info")), resize_interpolation=get("resize_interpolation"),
        alpha_mask=bool(get("alpha_mask")),
        conditioning_data_dir=Path(masks) if masks and cli.get("masked_loss") else None,
        metadata_file=metadata_file, face_crop_aug_range=parse_face_crop(get("face_crop_aug_range"),
                                                                          f"{where}: face_crop_aug_range"),
    )


def _dataset(tables: list[Mapping], cli: Mapping, subsets: list[SubsetConfig], where: str) -> DatasetConfig:
    def get(key: str) -> object:
        return _lookup(key, tables, cli)

    for key, why in _UNSUPPORTED.items():
        if S not in SCHEMA[key][0] and get(key):
            raise ToolkitError(f"{where}: {key}: {why}")
    split = float(get("validation_split") or 0.0)
    if not 0 <= split < 1:
        raise ToolkitError(f"{where}: validation_split {split}: must be at least 0 and below 1")
    for key in ("batch_size", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps"):
        if int(get(key)) <= 0:
            raise ToolkitError(f"{where}: {key} {get(key)}: must be greater than 0")
    if get("enable_bucket") and int(get("min_bucket_reso")) < int(get("bucket_reso_steps")):
        raise ToolkitError(f"{where}: min_bucket_reso {get('min_bucket_reso')}: must be at least bucket_reso_steps "
                           f"{get('bucket_reso_steps')}")
    return DatasetConfig(
        resolution=parse_resolution(get("resolution"), f"{where}: resolution"), batch_size=int(get("batch_size")),
        enable_bucket=bool(get("enable_bucket")), bucket_no_upscale=bool(get("bucket_no_upscale")),
        min_bucket_reso=int(get("min_bucket_reso")), max_bucket_reso=int(get("max_bucket_reso")),
        bucket_reso_steps=int(get("bucket_reso_steps")), network_multiplier=float(get("network_multiplier")),
        validation_split=split, validation_seed=get("validation_seed"), subsets=subsets,
    )


def datasets_from_config(path: str | Path, cli: Mapping) -> list[DatasetConfig]:
    """Resolve a dataset TOML against the command-line values in `cli` (argparse names)."""
    raw = read_dataset_config(path)
    source: Path = raw["source"]
    general = raw["general"]
    out = []
    for i, ds in enumerate(raw["datasets"]):
        subsets, seen = [], set()
        fine_tuning = _fine_tuning_dataset(ds, f"{source}: datasets[{i}]")
        for j, sub in enumerate(ds["subsets"]):
            where = f"{source}: datasets[{i}].subsets[{j}]"
            image_dir = Path(sub["image_dir"]) if sub.get("image_dir") else None
            if image_dir is not None and not image_dir.is_dir():
                raise ToolkitError(f"{where}: image_dir {image_dir}: folder not found")
            metadata = Path(sub["metadata_file"]) if fine_tuning else None
            if metadata is not None and not metadata.is_file():
                raise ToolkitError(f"{where}: metadata_file {metadata}: file not found")
            identity = (metadata or image_dir).resolve()
            if identity in seen:
                log.warning("%s: %s is already in this dataset; ignored", where, metadata or image_dir)
                continue
            seen.add(identity)
            subset = _subset([sub, ds, general], cli, image_dir or metadata.parent, where, metadata)
            if subset.num_repeats < 1:
                log.warning("%s: num_repeats %d < 1; subset skipped", where, subset.num_repeats)
                continue
            subsets.append(subset)
        out.append(_dataset([ds, general], cli, subsets, f"{source}: datasets[{i}]"))
    return out


# DreamBooth-only keys: sd-scripts' schema refuses them in a fine-tuning (metadata_file) subset or dataset
_DREAMBOOTH_ONLY = ("is_reg", "class_tokens", "caption_extension", "cache_info", "conditioning_data_dir")


def _fine_tuning_dataset(ds: Mapping, where: str) -> bool:
    """Whether a dataset's subsets are fine-tuning subsets (all have metadata_file) or DreamBooth ones (none)."""
    flags = ["metadata_file" in sub for sub in ds["subsets"]]
    if any(flags) and not all(flags):
        raise ToolkitError(f"{where}: DreamBooth subsets (image_dir) and fine-tuning subsets (metadata_file) "
                           "cannot share a dataset; put them in two [[datasets]]")
    if not all(flags):
        return False
    for j, table in [(None, ds), *enumerate(ds["subsets"])]:
        for key in _DREAMBOOTH_ONLY:
            if table.get(key) is not None:
                at = where if j is None else f"{where}.subsets[{j}]"
                raise ToolkitError(f"{at}: {key!r} is for DreamBooth subsets; a metadata_file subset takes its "
                                   "captions and images from the metadata")
    return True


def datasets_from_metadata(train_data_dir: str | Path | None, in_json: str | Path, cli: Mapping
                           ) -> list[DatasetConfig]:
    """One fine-tuning dataset from `--in_json` (images in `--train_data_dir`, repeats `--dataset_repeats`)."""
    metadata = Path(in_json)
    if not metadata.is_file():
        raise ToolkitError(f"--in_json {metadata}: file not found")
    image_dir = Path(train_data_dir) if train_data_dir else None
    if image_dir is not None and not image_dir.is_dir():
        raise ToolkitError(f"--train_data_dir {image_dir}: folder not found")
    if cli.get("reg_data_dir"):
        log.warning("--in_json: fine-tuning datasets have no regularisation images; --reg_data_dir is ignored")
    subset = _subset([], cli, image_dir or metadata.parent, "--in_json", metadata)
    return [_dataset([], cli, [subset], "command line")]


def datasets_from_folders(train_data_dir: str | Path, reg_data_dir: str | Path | None,
                          cli: Mapping) -> list[DatasetConfig]:
    """One dataset from DreamBooth `N_name` folders under `--train_data_dir` (and `--reg_data_dir`)."""
    subsets = []
    for parent, option, is_reg in ((train_data_dir, "--train_data_dir", False), (reg_data_dir, "--reg_data_dir", True)):
        if parent is None:
            continue
        for folder, repeats, tokens in dreambooth_subsets(Path(parent), option):
            sub = _subset([{"num_repeats": repeats, "class_tokens": tokens, "is_reg": is_reg}], cli, folder, option)
            if is_reg:  # --conditioning_data_dir holds the training images' masks; regularisation images train whole
                sub.conditioning_data_dir = None
            subsets.append(sub)
    return [_dataset([], cli, subsets, "command line")]
