"""The synthetic inputs of benchmarks/bench_ttd_step.py: deterministic captions with a known
number of candidate tags, and random uint8 images already on the device."""
import random
from typing import List

import torch

# Deterministic caption material. Content words are common concrete nouns and adjectives, none
# of them an NLTK stopword; joiners are made of stopwords only, so a caption built from k
# distinct content words has exactly k candidate tags (checked by the smoke test).
CONTENT_WORDS = tuple(
    """
    dog cat horse cow sheep bird duck chicken goat pig rabbit mouse fish shark whale dolphin
    elephant giraffe zebra lion tiger bear monkey deer fox wolf snake turtle frog butterfly bee
    spider owl eagle parrot penguin camel kangaroo squirrel man woman child boy girl baby person
    people crowd player chef doctor soldier student farmer tourist dancer singer car truck bus
    bicycle motorcycle train airplane boat ship tractor scooter taxi van helicopter rocket
    skateboard surfboard snowboard kite ball racket bat glove helmet umbrella backpack handbag
    suitcase bottle cup glass bowl plate fork knife spoon pizza sandwich burger cake donut apple
    banana orange lemon grape strawberry carrot tomato potato broccoli salad bread cheese egg
    coffee tea wine beer chair table sofa bed desk lamp clock vase mirror window door curtain
    pillow blanket carpet shelf book laptop computer keyboard phone camera television remote
    guitar piano violin drum microphone house building tower bridge church castle temple barn
    fence wall roof stairs road street sidewalk highway tunnel station airport harbor beach
    ocean lake river waterfall mountain hill valley forest tree flower grass garden park field
    desert island cave rock sand snow ice cloud sky sun moon star rainbow storm fog sunset
    sunrise night city village market shop restaurant kitchen bathroom bedroom office classroom
    stadium museum library red blue green yellow black white purple pink brown gray golden
    silver wooden metal plastic ceramic old new small large tiny huge tall short long round
    square bright dark colorful vintage modern rustic cozy sunny rainy snowy foggy wet dry
    empty busy quiet beautiful happy smiling sleeping running jumping flying swimming sitting
    standing walking eating playing reading cooking painting
    """.split()
)
ARTICLES = ("a", "the", "a", "the", "")
JOINERS = ("and", "with", "on", "in", "at", "by", "of", "over", "under", "from", "into", "and then")


def make_captions(batch_size: int, tags_per_caption: int, seed: int, step: int) -> List[str]:
    """``batch_size`` captions of ``tags_per_caption`` distinct content words each, joined by
    stopwords, e.g. "a dog with the red umbrella on a beach ..." (deterministic per seed/step)."""
    if not 0 < tags_per_caption <= len(CONTENT_WORDS):
        raise ValueError(f"--tags-per-caption must be in [1, {len(CONTENT_WORDS)}]")
    rng = random.Random(f"{seed}-{step}")
    captions = []
    for _ in range(batch_size):
        words = rng.sample(CONTENT_WORDS, tags_per_caption)
        parts = []
        for i, word in enumerate(words):
            if i:
                parts.append(rng.choice(JOINERS))
            article = rng.choice(ARTICLES)
            parts.append(f"{article} {word}" if article else word)
        captions.append(" ".join(parts) + ".")
    return captions


def make_images(batch_size: int, size: int, device: torch.device, seed: int) -> List[torch.Tensor]:
    """Random uint8 RGB images [3, size, size], already on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch_size, 3, size, size), generator=gen, dtype=torch.uint8)
    return list(images.to(device).unbind(0))
