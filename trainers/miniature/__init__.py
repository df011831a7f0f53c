"""The miniature world: renders, captions, teacher, classifier and evaluator. Importing it registers the
``miniature`` prompt source (the world's training captions) with the training core."""

from trainers.core.prompts import register_prompt_source


def _captions(n: int, seed: int) -> list[str]:
    from trainers.miniature.text import training_captions

    return training_captions(n, seed)


register_prompt_source("miniature", _captions)
