"""DATASET_CARD.md and licence texts next to the splits, so what was trained on can be published honestly.

Every ISIC image carries one of three licences, CC-0, CC-BY or CC-BY-NC, and an attribution
(docs/ISIC_SOURCES.md 2.4; challenge years carry the licence and citation of their release, set by
harmonization in ``copyright_license``/``attribution``). A user who shares a split, or a model card
built on one, needs the counts per licence, the attributions to credit and the licence texts. This
module writes them from the split manifest and the metadata:

* ``DATASET_CARD.md``: sources, images per split x class, class balance, licences with counts per
  split and in total, attributions ordered as the archive orders them (most images first, then by
  name, ``Anonymous`` last; isic : ``isic/zip_download/api.py`` ``get_attributions``), the split
  configuration and seed;
* ``licenses/<licence>.txt``: a plain-language summary with the official legal-code URL for every
  licence present, shipped as package data (``isic_assets/licenses/``) so it works offline.

Licence versions: ISIC writes the tags without a version. The challenge pages link CC-BY-NC and CC-BY
to the 4.0 licences (stade ``data/2019.html``, ``data/2024.html``), the 2020 citation says
"CC-BY-NC 4.0" (stade ``data/2020.html``), and CC0 only exists as 1.0 (linked from stade
``data/2017.html``). We assume the same versions for archive images; the texts the archive itself
serves (``zip-download/license-file/``) are saved by ``isic_api`` beside each API download.

The output depends on its inputs only (no timestamps, every table sorted), so a re-run with the same
inputs, in any row order, writes byte-identical files and rewrites nothing.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd

from .. import layout
from ..atomic import write_bytes_if_changed
from .assign import SPLITS
from .folds import fold_class_counts
from .grouping import clean_keys

CARD_NAME = layout.DATASET_CARD
LICENSES_DIR = "licenses"
ANONYMOUS = "Anonymous"
NO_LICENSE = "(none recorded)"


@dataclass(frozen=True)
class LicenseInfo:
    """What the card says about one ISIC licence tag."""

    name: str
    legal_code: str
    obligations: str


#: The archive's three licences (isic : ``isic/core/models/base.py``), in the order the card lists them.
LICENSES: dict[str, LicenseInfo] = {
    "CC-0": LicenseInfo(
        "CC0 1.0 Universal (public domain dedication)",
        "https://creativecommons.org/publicdomain/zero/1.0/legalcode",
        "no conditions; citing the ISIC ids and datasets is good practice",
    ),
    "CC-BY": LicenseInfo(
        "Creative Commons Attribution 4.0 International",
        "https://creativecommons.org/licenses/by/4.0/legalcode",
        "credit the attribution, link the licence, say what you changed",
    ),
    "CC-BY-NC": LicenseInfo(
        "Creative Commons Attribution-NonCommercial 4.0 International",
        "https://creativecommons.org/licenses/by-nc/4.0/legalcode",
        "as CC-BY, and no commercial use",
    ),
}
_COMPACT_LICENSES = {"CC0": "CC-0", "CCBY": "CC-BY", "CCBYNC": "CC-BY-NC"}
_VERSION_SUFFIX = re.compile(r"[\s_-]*v?\d+\.\d+(\s*international)?$", re.IGNORECASE)
_SECRET_KEY = re.compile(r"token|secret|password|credential", re.IGNORECASE)


def normalize_license(value: object) -> str:
    """The archive spelling (``CC-0``, ``CC-BY``, ``CC-BY-NC``) of a licence tag, ``""`` when missing.

    Accepts the spellings found in releases and citations: ``CC0``, ``cc-by``, ``CC BY-NC 4.0``,
    ``CC-BY-NC 4.0``. An unrecognised value is returned stripped, unchanged, so the card can show it.
    """
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    text = str(value).strip()
    compact = re.sub(r"[\s_-]+", "", _VERSION_SUFFIX.sub("", text)).upper()
    return _COMPACT_LICENSES.get(compact, text)


def order_attributions(attributions: Iterable[str]) -> list[str]:
    """Distinct attributions as the archive orders them: most images first, then by name, Anonymous last.

    Mirrors ``get_attributions`` of isic : ``isic/zip_download/api.py`` (also used by isic-cli,
    docs/ISIC_SOURCES.md 2.4); each occurrence counts as one image.
    """
    counts = Counter(attributions)
    return sorted(counts, key=lambda name: (name == ANONYMOUS, -counts[name], name))


def license_text(license_: str) -> str:
    """The packaged summary text of an archive licence tag (``CC-0``, ``CC-BY``, ``CC-BY-NC``)."""
    if license_ not in LICENSES:
        raise KeyError(f"no licence text for {license_!r}; known: {', '.join(LICENSES)}")
    return (resources.files("isic_assets") / "licenses" / f"{license_}.txt").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Facts from the manifest and the metadata
# ---------------------------------------------------------------------------------------------


def _as_bool(values: pd.Series) -> pd.Series:
    """``is_augmented`` as booleans whether it came from a plan (bool) or a manifest.csv (text)."""
    if values.dtype == bool:
        return values
    return clean_keys(values).str.lower().isin(["true", "1", "yes"])


def _file_facts(manifest: pd.DataFrame, metadata: pd.DataFrame) -> pd.DataFrame:
    """One row per file of the splits: split, label, original id, augmented flag, licence, attribution.

    An augmented copy is an adaptation of its original, so it carries the original's licence and
    attribution.
    """
    for column in ("isic_id", "split", "label"):
        if column not in manifest.columns:
            raise ValueError(f"manifest has no {column!r} column")
    if "isic_id" not in metadata.columns:
        raise ValueError("metadata has no 'isic_id' column")
    augmented = (
        _as_bool(manifest["is_augmented"]).to_numpy()
        if "is_augmented" in manifest.columns
        else pd.Series(False, index=manifest.index).to_numpy()
    )
    ids = clean_keys(manifest["isic_id"])
    if "augmented_from" in manifest.columns:
        ids = ids.where(~augmented, clean_keys(manifest["augmented_from"]))
    meta_ids = clean_keys(metadata["isic_id"])
    # Only the rows the manifest names (the plan's few hundred of 400,000 when undersampling).
    named = meta_ids.isin(ids.to_numpy()).to_numpy()
    metadata, meta_ids = metadata[named], meta_ids[named]
    first = ~meta_ids.duplicated(keep="first")

    def lookup(column: str) -> pd.Series:
        if column not in metadata.columns:
            return pd.Series("", index=manifest.index)
        table = pd.Series(clean_keys(metadata[column])[first].to_numpy(), index=meta_ids[first].to_numpy())
        return ids.map(table).fillna("")

    return pd.DataFrame(
        {
            "split": clean_keys(manifest["split"]).to_numpy(),
            "label": clean_keys(manifest["label"]).to_numpy(),
            "original": ids.to_numpy(),
            "augmented": augmented,
            "license": lookup("copyright_license").map(normalize_license).to_numpy(),
            "attribution": lookup("attribution").str.replace(r"\s+", " ", regex=True).to_numpy(),
            "image_type": lookup("image_type").replace("", "(not recorded)").to_numpy(),
        }
    )


def _classes(facts: pd.DataFrame, config: Mapping[str, Any]) -> list[str]:
    named = {str(c) for c in (config.get("class_map") or {}).values() if c}
    return sorted(named | set(facts["label"]))


def _license_order(present: Iterable[str]) -> list[str]:
    present = set(present)
    known = [name for name in LICENSES if name in present]
    others = sorted(name for name in present if name and name not in LICENSES)
    return known + others + ([""] if "" in present else [])


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------


def _cell(value: object) -> str:
    return str(value).replace("\n", " ").replace("|", "\\|")


def _table(header: Sequence[str], rows: Iterable[Sequence[object]], numeric: range | None = None) -> list[str]:
    """A markdown table; columns in ``numeric`` (default: all but the first) are right-aligned."""
    numeric = numeric if numeric is not None else range(1, len(header))
    align = ["---:" if i in numeric else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _sources_section(sources: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["## Sources", ""]
    if not sources:
        return lines + ["No sources were given.", ""]
    rows = []
    for source in sorted(sources, key=lambda s: str(s.get("name", ""))):
        details = [
            f"{key}: {_plain(value)}"
            for key, value in sorted(source.items())
            if key not in ("name", "format") and not _SECRET_KEY.search(key)
        ]
        rows.append([source.get("name", ""), source.get("format", ""), "; ".join(details)])
    return lines + _table(["source", "format", "details"], rows, numeric=range(0)) + [""]


def _plain(value: object) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


def _counts_section(facts: pd.DataFrame, classes: list[str]) -> list[str]:
    rows = []
    for split in [*SPLITS, "all"]:
        part = facts if split == "all" else facts[facts["split"] == split]
        counts = [int((part["label"] == c).sum()) for c in classes]
        rows.append([split, *counts, len(part), int(part["augmented"].sum())])
    lines = ["## Images per split and class", ""]
    lines += _table(["split", *classes, "total", "of which augmented"], rows)
    lines += [
        "",
        (
            "Augmented copies (train only) are adaptations of the original named in `manifest.csv` "
            "(`augmented_from`); they carry its licence and attribution, and sharing one means saying "
            "that the image was changed."
        ),
        "",
    ]
    return lines


def _balance_section(facts: pd.DataFrame, classes: list[str]) -> list[str]:
    rows = []
    for split in SPLITS:
        part = facts[facts["split"] == split]
        counts = [int((part["label"] == c).sum()) for c in classes]
        total = sum(counts)
        shares = [f"{100.0 * n / total:.1f}%" if total else "-" for n in counts]
        present = [n for n in counts if n]
        ratio = f"{max(present) / min(present):.2f} : 1" if len(present) >= 2 else "-"
        rows.append([split, *shares, ratio])
    lines = ["## Class balance", ""]
    lines += _table(["split", *classes, "majority : minority"], rows)
    return lines + [""]


def _image_types_section(facts: pd.DataFrame) -> list[str]:
    """Files per image type and split: dermoscopy and ISIC 2024's TBP tiles look nothing alike."""
    counts = facts.groupby(["image_type", "split"]).size().unstack(fill_value=0).reindex(columns=list(SPLITS),
                                                                                        fill_value=0)
    rows = [[name, *(int(counts.loc[name, s]) for s in SPLITS), int(counts.loc[name].sum())]
            for name in sorted(counts.index)]
    lines = ["## Image types", ""]
    lines += _table(["image type", *SPLITS, "total"], rows, numeric=range(1, len(SPLITS) + 2))
    return [*lines, ""]


def _licenses_section(facts: pd.DataFrame) -> list[str]:
    rows = []
    order = _license_order(facts["license"])
    for license_ in order:
        mask = facts["license"] == license_
        per_split = [int((mask & (facts["split"] == s)).sum()) for s in SPLITS]
        text = f"`{LICENSES_DIR}/{license_}.txt`" if license_ in LICENSES else "none"
        rows.append([license_ or NO_LICENSE, *per_split, int(mask.sum()), text])
    lines = ["## Licences", ""]
    lines.append("Counted over every image file of the splits; an augmented copy counts under its original's licence.")
    lines.append("")
    lines += _table(["licence", *SPLITS, "total", "text"], rows, numeric=range(1, len(SPLITS) + 2))
    lines.append("")
    for license_ in order:
        info = LICENSES.get(license_)
        if info is not None:
            lines.append(f"- **{license_}**: {info.name} ({info.legal_code}); {info.obligations}.")
        elif license_:
            lines.append(f"- **{license_}**: not an ISIC licence tag; check its terms before sharing these images.")
        else:
            lines.append(f"- **{NO_LICENSE}**: these images have no licence in the metadata; do not "
                         "redistribute them before finding it.")
    lines += [
        "",
        (
            "ISIC writes the licence tags without a version; CC-BY and CC-BY-NC are taken as the 4.0 "
            "licences the ISIC challenge pages link, CC-0 as CC0 1.0 (its only version)."
        ),
        "",
    ]
    return lines


def _attributions_section(facts: pd.DataFrame) -> list[str]:
    originals = facts.drop_duplicates("original")
    counts = Counter(a for a in originals["attribution"] if a)
    lines = ["## Attributions", ""]
    lines.append(
        "Ordered as the ISIC Archive orders them: most images first, then by name, `Anonymous` last. "
        "Counts are distinct original images."
    )
    lines.append("")
    for number, name in enumerate(order_attributions(counts.elements()), start=1):
        plural = "" if counts[name] == 1 else "s"
        lines.append(f"{number}. {name} ({counts[name]} image{plural})")
    missing = int((originals["attribution"] == "").sum())
    if missing:
        lines += ["", f"{missing} image{'' if missing == 1 else 's'} have no attribution recorded."]
    return lines + [""]


def _config_section(config: Mapping[str, Any]) -> list[str]:
    seed = config.get("seed", "not recorded")
    return [
        "## Split configuration",
        "",
        f"Seed: `{seed}`",
        "",
        *_prevalence_note(config),
        "```json",
        json.dumps(dict(config), indent=2, sort_keys=True, default=str, ensure_ascii=False),
        "```",
        "",
    ]


def _folds_section(manifest: pd.DataFrame, classes: list[str]) -> list[str]:
    """Original images per cross-validation fold and class, when folds were made."""
    counts = fold_class_counts(manifest, classes)
    if counts.empty:
        return []
    lines = [
        "## Cross-validation folds",
        "",
        (
            "The `fold` column (manifest.csv and each split's metadata) divides train+validation into "
            "folds of whole leakage groups, stratified by class; test images have fold -1. Original images "
            "per fold (augmented copies follow their original's fold):"
        ),
        "",
    ]
    rows = [[str(fold), *[int(v) for v in row], int(row.sum())] for fold, row in counts.iterrows()]
    lines += _table(["fold", *classes, "total"], rows)
    return lines + [""]


def _evaluation_section(evaluation: Mapping[str, Any] | None) -> list[str]:
    """The official evaluation sets held out, and how many training images left the pool for them."""
    if not evaluation or not evaluation.get("evaluation_images"):
        return []
    lines = [
        "## Evaluation sets held out",
        "",
        (
            "Images of the selected evaluation sources are in `evaluation_data/<source>/<class>/`, not in "
            "these splits. Every image sharing a patient, lesion, content, listed duplicate or near-duplicate "
            "with one of them was left out of train/validation/test; each is listed in "
            "`evaluation_data/evaluation_overlap.csv` with the evaluation image and the reason."
        ),
        "",
    ]
    lines += _table(["evaluation source", "images"], sorted(evaluation.get("per_source", {}).items()), range(1, 2))
    lines += ["", f"Images held out of training in total: {evaluation.get('held_out_of_training', 0)}.", ""]
    reasons = [(r, n) for r, n in evaluation.get("overlap_by_reason", {}).items() if n]
    if reasons:
        lines += _table(["overlap reason", "images"], reasons, range(1, 2))
    return lines + [""]


def render_dataset_card(manifest: pd.DataFrame, metadata: pd.DataFrame, config: Mapping[str, Any],
                        sources: Sequence[Mapping[str, Any]], evaluation: Mapping[str, Any] | None = None) -> str:
    """The card's markdown (see :func:`write_dataset_card`); a pure function of its inputs."""
    facts = _file_facts(manifest, metadata)
    classes = _classes(facts, config)
    lines = [
        "# Dataset card",
        "",
        (
            "Written by isic-assets from the split manifest (`manifest.csv`) and the merged ISIC metadata. "
            "Each image keeps the licence and attribution of its source; the licence texts are in "
            f"`{LICENSES_DIR}/`."
        ),
        "",
    ]
    lines += _sources_section(sources)
    lines += _counts_section(facts, classes)
    lines += _balance_section(facts, classes)
    lines += _folds_section(manifest, classes)
    lines += _evaluation_section(evaluation)
    lines += _image_types_section(facts)
    lines += _licenses_section(facts)
    lines += _attributions_section(facts)
    lines += _config_section(config)
    return "\n".join(lines).rstrip("\n") + "\n"


def write_dataset_card(manifest: pd.DataFrame, metadata: pd.DataFrame, out_dir: Path,
                       config: Mapping[str, Any], sources: Sequence[Mapping[str, Any]],
                       evaluation: Mapping[str, Any] | None = None) -> Path:
    """Write ``out_dir/DATASET_CARD.md`` and ``out_dir/licenses/<licence>.txt``; return the card's path.

    ``manifest`` is the split plan's manifest (``isic_id, split, label``, and ``is_augmented``/
    ``augmented_from`` when there are augmented copies); ``metadata`` has ``isic_id``,
    ``copyright_license`` and ``attribution`` per original image; ``config`` is the split config as a
    dict (``SplitConfig.as_dict()``, with ``seed``); ``sources`` are dicts with ``name``, ``format``
    and any details to show (keys that look like secrets are left out). Files already holding the
    right bytes are not rewritten; texts of licences no longer present are removed.
    """
    out_dir = Path(out_dir)
    card = render_dataset_card(manifest, metadata, config, sources, evaluation)
    facts_licenses = set(_file_facts(manifest, metadata)["license"])
    folder = out_dir / LICENSES_DIR
    for license_ in LICENSES:
        path = folder / f"{license_}.txt"
        if license_ in facts_licenses:
            folder.mkdir(parents=True, exist_ok=True)
            write_bytes_if_changed(path, license_text(license_).encode("utf-8"))
        else:
            path.unlink(missing_ok=True)
    path = out_dir / CARD_NAME
    write_bytes_if_changed(path, card.encode("utf-8"))
    return path


def _prevalence_note(config: Mapping[str, Any]) -> list[str]:
    """Which class ratio validation and test have, and what that means for the metrics measured on them."""
    strategy, balance = config.get("strategy"), config.get("balance", "all_splits")
    if strategy == "undersample" and balance == "all_splits":
        text = ("Validation and test are balanced like train (`undersample`, `balance: all_splits`). "
                "Accuracy, sensitivity and specificity measured on them carry over; precision (PPV) and "
                "NPV do not: they depend on prevalence, and malignant lesions are far rarer in practice. "
                "Use `balance: train_only` for evaluation at the natural class ratio.")
    else:
        text = ("Validation and test keep the natural class ratio of the merged data (whole groups), so "
                "precision (PPV) and NPV measured on them hold at that prevalence.")
    return [text, ""]
