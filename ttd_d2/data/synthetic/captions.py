"""Web-like captions for synthetic scenes.

A caption is a template whose ``{objects}`` slot is a list of class words with articles and
connectors ("a circle near a star and a moon"), and whose optional ``{background}`` slot
describes the actual background texture ("on a striped background"). Filler words
(:data:`FILLER_WORDS`, the templates' words, connectors, background words) never contain a
class word.

- Training captions (:func:`training_caption`, for the image-text layout), from any of
  :data:`TEMPLATES`, background slot included (web-like): the dominant object is named first,
  always correctly; each secondary object is omitted with probability ``omit_prob`` (0.3),
  replaced by a class word absent from the image with probability ``replace_prob`` (0.3),
  otherwise named correctly. Secondary words follow the dominant one in object order. A
  single-object scene's caption names just that object.
- Evaluation captions (:func:`evaluation_caption`, for the captions layout), from
  :data:`EVALUATION_TEMPLATES` only: every object is named correctly, dominant first then the
  secondaries in object order; the tags are those words in the same order. They **never name
  the background** (no word of :data:`BACKGROUND_VOCABULARY`), so the caption's ground-truth
  region, the union of its objects, is everything the caption names. (A caption that says
  "on a striped background" names the background too: a model that rightly finds those
  words in the image would be penalised against a region that excludes it.)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from .render import CLASSES, ObjectSpec

__all__ = [
    "TEMPLATES",
    "EVALUATION_TEMPLATES",
    "CONNECTORS",
    "BACKGROUND_WORDS",
    "BACKGROUND_VOCABULARY",
    "FILLER_WORDS",
    "Caption",
    "objects_phrase",
    "fill_template",
    "training_caption",
    "evaluation_caption",
    "caption_words",
]

TEMPLATES: Tuple[str, ...] = (
    "a photo of {objects}",
    "a photo of {objects} on a {background} background",
    "{objects} on a {background} background",
    "nice picture showing {objects}",
    "{objects}",
    "a close view of {objects}",
    "there is {objects} in this picture",
    "my favourite drawing of {objects}",
    "{objects}, vector clipart",
    "simple illustration with {objects}",
    "look at {objects} on this {background} background",
    "stock image of {objects} for your design",
)
# The templates of evaluation captions: those without the background slot.
EVALUATION_TEMPLATES: Tuple[str, ...] = tuple(t for t in TEMPLATES if "{background}" not in t)
CONNECTORS: Tuple[str, ...] = ("and", "with", "near", "next to", "beside")
BACKGROUND_WORDS = {
    "noisy": ("noisy", "blurry"),
    "striped": ("striped",),
    "gradient": ("gradient", "smooth"),
}
# Every word that describes the background: the texture words and "background" itself (the
# word of the templates' background slot). Evaluation captions contain none of them.
BACKGROUND_VOCABULARY = frozenset({"background", *(w for words in BACKGROUND_WORDS.values() for w in words)})

OMITTED, REPLACED, NAMED = "omitted", "replaced", "named"


def caption_words(text: str) -> Tuple[str, ...]:
    """Lower-cased words of a caption (runs of letters and digits), punctuation dropped."""
    return tuple(re.findall(r"[a-z0-9]+", text.lower()))


def _filler_vocabulary() -> Tuple[str, ...]:
    words = set()
    for text in TEMPLATES + CONNECTORS:
        words.update(caption_words(text.replace("{objects}", " ").replace("{background}", " ")))
    for choices in BACKGROUND_WORDS.values():
        words.update(choices)
    words.update(("a", "an"))
    return tuple(sorted(words))


FILLER_WORDS: Tuple[str, ...] = _filler_vocabulary()


@dataclass(frozen=True)
class Caption:
    """A caption and how it was built.

    Attributes:
        text: the caption.
        words: the class words it names, in caption order (for evaluation captions: the tags).
        secondary_outcomes: per secondary object, in object order: "named", "omitted" or
            "replaced" (always "named" for evaluation captions).
    """

    text: str
    words: Tuple[str, ...]
    secondary_outcomes: Tuple[str, ...]


def _with_article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def objects_phrase(words: Sequence[str], rng: np.random.Generator) -> str:
    """"a circle", "a circle near a star", "a circle with a star and an arrow"."""
    phrases = [_with_article(w) for w in words]
    if len(phrases) == 1:
        return phrases[0]
    connector = CONNECTORS[int(rng.integers(len(CONNECTORS)))]
    head = f"{phrases[0]} {connector} {phrases[1]}"
    return " and ".join([head] + phrases[2:])


def fill_template(
    words: Sequence[str], background: Optional[str], rng: np.random.Generator, templates: Sequence[str] = TEMPLATES
) -> str:
    """A random template of ``templates`` filled with ``words`` (in order) and, when it has a
    background slot, a word for ``background`` (one of the render module's background kinds).
    ``background`` None: ``templates`` must have no background slot."""
    template = templates[int(rng.integers(len(templates)))]
    phrase = objects_phrase(words, rng)
    if background is None:
        if "{background}" in template:
            raise ValueError(f"template {template!r} names the background, but no background was given")
        return template.format(objects=phrase)
    background_choices = BACKGROUND_WORDS[background]
    background_word = background_choices[int(rng.integers(len(background_choices)))]
    return template.format(objects=phrase, background=background_word)


def training_caption(
    objects: Sequence[ObjectSpec],
    background: str,
    rng: np.random.Generator,
    omit_prob: float = 0.3,
    replace_prob: float = 0.3,
) -> Caption:
    """A noisy web-like caption: dominant first and correct, secondaries omitted / replaced
    by an absent class with the given probabilities (see the module docstring)."""
    if omit_prob < 0.0 or replace_prob < 0.0 or omit_prob + replace_prob > 1.0:
        raise ValueError(f"bad caption noise: omit_prob={omit_prob}, replace_prob={replace_prob}")
    present = {o.category for o in objects}
    words = [objects[0].category]
    outcomes = []
    for obj in objects[1:]:
        draw = rng.random()
        if draw < omit_prob:
            outcomes.append(OMITTED)
            continue
        if draw < omit_prob + replace_prob:
            absent = [c for c in CLASSES if c not in present and c not in words]
            words.append(absent[int(rng.integers(len(absent)))])
            outcomes.append(REPLACED)
        else:
            words.append(obj.category)
            outcomes.append(NAMED)
    return Caption(fill_template(words, background, rng), tuple(words), tuple(outcomes))


def evaluation_caption(objects: Sequence[ObjectSpec], rng: np.random.Generator) -> Caption:
    """A caption naming every object correctly, dominant first, and nothing of the background
    (a template of :data:`EVALUATION_TEMPLATES`); ``words`` are the tags."""
    words = tuple(o.category for o in objects)
    text = fill_template(words, None, rng, EVALUATION_TEMPLATES)
    return Caption(text, words, tuple(NAMED for _ in objects[1:]))
