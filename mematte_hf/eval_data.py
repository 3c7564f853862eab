"""Find the (image, trimap, ground-truth alpha) triples of a matting test set laid out in a standard way.

Recognised layouts of the root folder, tried in this order (the first that matches wins):

* Composition-1K test set: `merged/` (composited images), `trimaps/`, and `alpha_copy/` (one alpha per
  composite, preferred) or `alpha/`;
* AIM-500: `original/` (JPEG images), `trimap/`, `mask/` (ground-truth alphas);
* generic: `images/`, `trimaps/`, `alphas/`.

In every layout the three files of one sample share a name stem (`0001.jpg`, `0001.png`, `0001.png`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class EvalSample:
    """One test image: its name (the shared file stem) and the paths of its three files."""

    name: str
    image_path: Path
    trimap_path: Path
    alpha_path: Path


@dataclass(frozen=True)
class _Layout:
    name: str
    image_dirs: tuple[str, ...]
    trimap_dirs: tuple[str, ...]
    alpha_dirs: tuple[str, ...]  # the first one that exists is used


LAYOUTS = (
    _Layout("Composition-1K", ("merged",), ("trimaps",), ("alpha_copy", "alpha")),
    _Layout("AIM-500", ("original",), ("trimap",), ("mask",)),
    _Layout("generic", ("images",), ("trimaps",), ("alphas",)),
)


def list_images_by_stem(folder: Path) -> dict[str, Path]:
    """Map each image file's stem to its path (hidden files and non-image files are ignored).

    Raises InputError if two images in the folder share a stem, since pairing by stem would be ambiguous.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; give the folder that holds the image files")
    by_stem: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if path.stem in by_stem:
            raise InputError(
                f"{folder} holds both {by_stem[path.stem].name} and {path.name}; files are paired by name "
                "stem, so keep only one of them"
            )
        by_stem[path.stem] = path
    return by_stem


def _describe_names(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return f"{shown}, ... ({len(names)} in all)" if len(names) > limit else shown


def pair_by_stem(folders: Mapping[str, Path]) -> dict[str, dict[str, Path]]:
    """Pair the image files of several folders by name stem: {stem: {role: path}}, sorted by stem.

    `folders` maps a role (e.g. "prediction") to its folder. Every stem must be present in every folder;
    otherwise the InputError names the files that lack a partner and the folder they are missing from.
    """
    listings = {role: list_images_by_stem(folder) for role, folder in folders.items()}
    all_stems = set().union(*(listing.keys() for listing in listings.values()))
    problems = []
    for role, listing in listings.items():
        missing = sorted(all_stems - listing.keys())
        if missing:
            problems.append(f"no {role} in {folders[role]} for {_describe_names(missing)}")
    if problems:
        raise InputError(
            "some files have no partner (files are paired by name stem): "
            + "; ".join(problems)
            + ". Add the missing files or remove the unpaired ones."
        )
    if not all_stems:
        raise InputError(
            "found no image files in "
            + ", ".join(str(folder) for folder in folders.values())
            + f"; expected images with one of the suffixes {', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    return {stem: {role: listing[stem] for role, listing in listings.items()} for stem in sorted(all_stems)}


def _first_existing(root: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None


def _match_layout(root: Path) -> tuple[_Layout, Path, Path, Path] | None:
    for layout in LAYOUTS:
        image_dir = _first_existing(root, layout.image_dirs)
        trimap_dir = _first_existing(root, layout.trimap_dirs)
        alpha_dir = _first_existing(root, layout.alpha_dirs)
        if image_dir is not None and trimap_dir is not None and alpha_dir is not None:
            return layout, image_dir, trimap_dir, alpha_dir
    return None


def detect_layout(root: str | Path) -> str:
    """The name of the layout of `root` ("Composition-1K", "AIM-500" or "generic"); InputError if none."""
    root = Path(root)
    match = _match_layout(root)
    if match is None:
        raise InputError(_no_layout_message(root))
    return match[0].name


def _no_layout_message(root: Path) -> str:
    expected = "; ".join(
        f"{layout.name}: {layout.image_dirs[0]}/, {layout.trimap_dirs[0]}/, {' or '.join(layout.alpha_dirs)}/"
        for layout in LAYOUTS
    )
    if not root.is_dir():
        return f"the evaluation data folder {root} does not exist; expected a folder with one of: {expected}"
    present = sorted(path.name + "/" for path in root.iterdir() if path.is_dir())
    return (
        f"{root} matches no known test-set layout (it has {', '.join(present) or 'no sub-folders'}); "
        f"expected one of: {expected}"
    )


def find_evaluation_samples(root: str | Path) -> list[EvalSample]:
    """The samples of the test set in `root`, sorted by name (see the module docstring for the layouts)."""
    root = Path(root)
    match = _match_layout(root)
    if match is None:
        raise InputError(_no_layout_message(root))
    _, image_dir, trimap_dir, alpha_dir = match
    pairs = pair_by_stem({"image": image_dir, "trimap": trimap_dir, "ground-truth alpha": alpha_dir})
    return [
        EvalSample(
            name=stem,
            image_path=paths["image"],
            trimap_path=paths["trimap"],
            alpha_path=paths["ground-truth alpha"],
        )
        for stem, paths in pairs.items()
    ]
