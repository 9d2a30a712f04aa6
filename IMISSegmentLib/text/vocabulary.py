"""Free text -> a known structure category (offline: a fixed vocabulary with synonyms, no text model).

:meth:`Vocabulary.resolve` maps "Left Kidney", "kidney_left", "L kidney", "kidneys, left" or IMIS-Net's
"A segmentation area of a left kidney." to the same :class:`TextCode` (category id, side id). Matching is
on the multiset of normalised words, so case, separators, word order and plurals do not matter; a name more
specific than the categories ("lung_lower_lobe_right", "vertebrae_L1", "rib_left_7") falls back to its
category and the dropped words are reported in ``TextCode.detail``. Text that names nothing known raises
:class:`~IMISSegmentLib.errors.UnknownTextError` with the closest known names.

A model bundle ships its vocabulary (``text_vocabulary.json``: :meth:`Vocabulary.to_dict`) with the
categories its network was trained on (``trained``); the others resolve but the network has not learnt them.
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError, UnknownTextError
from .anatomy import CATEGORIES, DETAIL_WORDS, FILLER_WORDS, PLURALS, SIDE_WORDS, SIDES

VOCABULARY_FORMAT = 1
_LEVEL = re.compile(r"^([ctls]\d{1,2}|\d+)$")   # vertebra levels (L1, T12, C7, S1) and numbers (rib 7)


@dataclass(frozen=True)
class Category:
    id: int
    name: str
    sided: bool = False
    synonyms: tuple = ()
    trained: bool = False          # the network saw this category in training
    trained_sides: bool = False    # ... with left / right told apart


@dataclass(frozen=True)
class TextCode:
    """What a text prompt means to the network: ``category`` (id, 0 = no text) and ``side`` (0 none,
    1 left, 2 right), plus the display name and the words that were dropped (``detail``)."""

    category: int
    side: int
    name: str
    detail: str = ""
    trained: bool = False
    side_ignored: bool = False   # a side was named, but the network does not tell the sides of this category apart
    category_name: str = ""      # the category without a side ("lung" for "left lung")

    @property
    def as_input(self) -> tuple:
        return (self.category, self.side)


NO_TEXT = TextCode(0, 0, "")


def _words(text: str, known: set) -> list:
    """Lower-case words of ``text`` (separators: anything but letters and digits), plurals made singular."""
    words = []
    for word in re.split(r"[^a-z0-9]+", text.lower()):
        if not word:
            continue
        word = PLURALS.get(word, word)
        if word not in known and word.endswith("s") and word[:-1] in known:
            word = word[:-1]
        words.append(word)
    return words


def _key(words) -> str:
    return " ".join(sorted(words))


class Vocabulary:
    """Categories with synonyms; see the module docstring."""

    def __init__(self, categories) -> None:
        categories = list(categories)
        self.categories = {c.id: c for c in categories}
        if len(self.categories) != len(categories) or 0 in self.categories:
            raise InputError("vocabulary: category ids must be unique and >= 1")
        self._known = set(PLURALS.values()) | set(DETAIL_WORDS)
        for category in self.categories.values():
            for term in (category.name, *category.synonyms):
                self._known.update(re.split(r"[^a-z0-9]+", term.lower()))
        self._index = {}
        for category in self.categories.values():
            for term in (category.name, *category.synonyms):
                words = [w for w in _words(term, self._known) if w not in FILLER_WORDS]
                self._index.setdefault(_key(words), category.id)

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def default(cls) -> "Vocabulary":
        """The built-in anatomy (IMISSegmentLib.text.anatomy), nothing marked trained."""
        return cls([Category(i, name, sided, tuple(synonyms)) for i, name, sided, synonyms in CATEGORIES])

    @classmethod
    def from_dict(cls, data: dict, source: str = "vocabulary") -> "Vocabulary":
        if not isinstance(data, dict) or data.get("format_version") != VOCABULARY_FORMAT:
            raise InputError(f"{source}: not a text vocabulary (expected format_version {VOCABULARY_FORMAT})")
        try:
            return cls([Category(int(c["id"]), str(c["name"]), bool(c.get("sided", False)),
                                 tuple(c.get("synonyms", ())), bool(c.get("trained", False)),
                                 bool(c.get("trained_sides", False))) for c in data["categories"]])
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"{source}: malformed category entry ({type(error).__name__}: {error})") from None

    @classmethod
    def load(cls, path) -> "Vocabulary":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read the text vocabulary {path}: {error}") from None
        return cls.from_dict(data, str(path))

    def to_dict(self) -> dict:
        return {"format_version": VOCABULARY_FORMAT, "sides": list(SIDES),
                "categories": [{"id": c.id, "name": c.name, "sided": c.sided, "synonyms": list(c.synonyms),
                                "trained": c.trained, "trained_sides": c.trained_sides}
                               for c in sorted(self.categories.values(), key=lambda c: c.id)]}

    def with_training(self, trained: dict) -> "Vocabulary":
        """A copy marking the categories a network was trained on: ``{category id: trained with sides}``."""
        return Vocabulary([Category(c.id, c.name, c.sided, c.synonyms, c.id in trained, bool(trained.get(c.id)))
                           for c in self.categories.values()])

    def limited(self, rows: int) -> "Vocabulary":
        """The categories an embedding of ``rows`` rows has (ids below ``rows``): a network trained before later
        categories were appended (ids are stable and only ever appended)."""
        return Vocabulary([c for c in self.categories.values() if c.id < int(rows)])

    @property
    def size(self) -> int:
        """Rows of the network's category embedding (ids 1..max, row 0 = no text)."""
        return max(self.categories) + 1

    # -- matching -----------------------------------------------------------------------------------
    def resolve(self, text: str) -> TextCode:
        """The category and side ``text`` names; UnknownTextError (with the closest names) if none."""
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"text must be a non-empty structure name, got {text!r}")
        words = [w for w in _words(text, self._known) if w not in FILLER_WORDS]
        sides = {SIDE_WORDS[w] for w in words if w in SIDE_WORDS}
        words = [w for w in words if w not in SIDE_WORDS]
        if len(sides) > 1:
            raise InputError(f"'{text}' names both sides (left and right); name one structure")
        side = sides.pop() if sides else ""
        category_id = self._index.get(_key(words))
        detail = []
        if category_id is None:   # a finer name than the categories: drop levels, numbers and lobe words
            detail = [w for w in words if w in DETAIL_WORDS or _LEVEL.match(w)]
            category_id = self._index.get(_key(w for w in words if w not in detail))
        if category_id is None:
            suggestions = self.suggest(text)
            hint = f"; closest known names: {', '.join(suggestions)}" if suggestions else ""
            raise UnknownTextError(f"'{text}' names no known structure{hint}", suggestions)
        category = self.categories[category_id]
        if side and not category.sided:
            detail.append(side)
            side = ""
        name = f"{side} {category.name}".strip()
        side_id = SIDES.index(side) if category.trained_sides else 0
        return TextCode(category.id, side_id, name, " ".join(detail), category.trained,
                        side_ignored=bool(side) and not category.trained_sides, category_name=category.name)

    def suggest(self, text: str, count: int = 5) -> list:
        """Up to ``count`` known names closest to ``text`` (category names, with sides where they have them)."""
        words = [w for w in _words(text, self._known) if w not in FILLER_WORDS and w not in SIDE_WORDS]
        query = " ".join(words) or text.lower()
        terms = {}
        for category in self.categories.values():
            for term in (category.name, *category.synonyms):
                terms.setdefault(term.lower(), category)
        found = []
        for term in difflib.get_close_matches(query, list(terms), n=3 * count, cutoff=0.5):
            category = terms[term]
            for name in ([f"left {category.name}", f"right {category.name}"] if category.sided else [category.name]):
                if name not in found:
                    found.append(name)
        return found[:count]

    def code_name(self, category: int, side: int = 0) -> str:
        """The display name of a (category id, side id) code: "left heart ventricle", "liver"."""
        return f"{SIDES[int(side)]} {self.categories[int(category)].name}".strip()

    def names(self, trained_only: bool = False) -> list:
        """Category names (sorted), optionally only those the network was trained on."""
        return sorted(c.name for c in self.categories.values() if c.trained or not trained_only)


VOCABULARY_FILE = "text_vocabulary.json"


def load_bundle_vocabulary(bundle_dir, info: dict) -> Vocabulary:
    """The vocabulary a bundle ships (``info["text"]["vocabulary"]``: file and sha256, checked by
    ``read_bundle_info``)."""
    entry = (info.get("text") or {}).get("vocabulary") or {}
    if not entry.get("file"):
        raise InputError(f"{bundle_dir}: the bundle's 'text' entry names no vocabulary file")
    return Vocabulary.load(Path(bundle_dir) / entry["file"])
