"""
The turns of VTimeLLM's stage-2 dialogues: the question and answer templates, [`DialogueTurns`] (every choice drawn
from one seeded generator) and [`dialogue_record`] (turns laid out as a record). The converters and the synthetic
data ask their turns here, so that a grounding turn is asked the same way everywhere.
"""

import random
import re
from collections.abc import Iterable, Sequence
from typing import Any

from ..model.processing_vtime import VIDEO_TOKEN
from .raw_annotations import Video

__all__ = [
    "DENSE_CAPTIONING_QUESTIONS",
    "EVENT_CAPTIONING_QUESTIONS",
    "GROUNDING_ANSWERS",
    "GROUNDING_QUESTIONS",
    "DialogueTurns",
    "dialogue_record",
]

# Odds that a turn of a multi-turn dialogue is event captioning rather than grounding.
_EVENT_CAPTIONING_ODDS = 0.5

# Dense captioning: a question about the whole video, answered by every event in time order.
DENSE_CAPTIONING_QUESTIONS = (
    "Could you describe each event in the video, along with when it starts and ends?",
    "Give me a play-by-play of this video, with the start and end of every event.",
    "What goes on in this video? Please mark when each part begins and ends.",
    "Describe the video one event at a time, with the time span of each.",
    "List the things that happen in the video and the frames they occupy.",
    "Narrate the video in order, saying when each event takes place.",
    "Summarize the video as a sequence of timed events.",
    "Write down every event you see in the video together with its start and end frames.",
    "Please produce a dense caption of this video, each sentence tagged with its time span.",
    "Tell me what happens over the course of this video and at which moments.",
)
# Event captioning: `{start}` and `{end}` are the placeholders of one event.
EVENT_CAPTIONING_QUESTIONS = (
    "What is happening between {start} and {end}?",
    "Describe what the video shows from {start} to {end}.",
    "Can you tell me what goes on from {start} to {end}?",
    "What takes place in the video from frame {start} until frame {end}?",
    "Caption the segment that runs from {start} to {end}.",
    "Explain the action seen between {start} and {end}.",
    "What does the part of the video from {start} to {end} show?",
    "Briefly describe the clip between {start} and {end}.",
    "What event occupies the span from {start} to {end}?",
    "Summarize what happens from {start} through {end}.",
)
# Grounding: `{event}` is the event's sentence as a clause, without its final stop ("a man cracks an egg").
GROUNDING_QUESTIONS = (
    "When does this happen in the video: {event}?",
    "At which frames does the following take place: {event}?",
    "Find the start and end of the moment where {event}.",
    "Can you locate the part of the video in which {event}?",
    "During what span of the video does this occur: {event}?",
    "Point me to the segment where {event}.",
    'Give the time span of the event "{event}".',
    "Between which frames does the video show that {event}?",
    "Tell me when {event} in this video.",
    'Which part of the video matches the description "{event}"?',
)
# Grounding answers keep the two indices joined by "to" or "and", the form the grounding evaluation parses.
GROUNDING_ANSWERS = (
    "From {start} to {end}.",
    "It happens from {start} to {end}.",
    "This takes place from {start} to {end}.",
    "The moment spans from {start} to {end}.",
    "Between {start} and {end}.",
)

# Where a sentence becomes a clause inside another one ("From <s0> to <e0>, a man ..."), its first word loses its
# capital if it is a common word: one of these openers, or a word the annotations also write in lower case inside a
# sentence. Any other first word, such as a name, keeps its capital.
_LOWERCASE_OPENERS = frozenset(
    "a an the this that these those there he she it they we his her its their some several many another one two "
    "three four five someone somebody people person".split()
)
_WORDS = re.compile(r"[^\W\d_]+")


class DialogueTurns:
    """
    The question-answer turns of VTimeLLM's dialogues, asked with this module's templates, every choice drawn from
    one generator seeded with `seed`. Each method takes the sentences of one record's events in start order: the
    K-th event's placeholders are `<sK>` and `<eK>` (see [`dialogue_record`]).

    Only `random()` of `random.Random` is used: it is the one method whose sequence Python promises to keep across
    versions for a given seed, so that the same seed gives the same records on any Python.

    Args:
        sentences: every sentence the turns may embed as a clause: a first word that these sentences also write in
            lower case, or a common opener ("A", "The"), loses its capital inside another sentence; a name keeps it.
        seed: seed of every random choice.
    """

    def __init__(self, sentences: Iterable[str], seed: int):
        self._rng = random.Random(seed)
        self._common_words = _common_words(sentences)

    def random(self) -> float:
        """A number drawn uniformly from [0, 1), for choices of the caller's own."""
        return self._rng.random()

    def pick(self, templates: Sequence[str]) -> str:
        """One of `templates`, drawn at random."""
        return templates[int(self._rng.random() * len(templates))]

    def shuffled(self, items: Iterable[Any]) -> list[Any]:
        """`items` in random order."""
        items = list(items)
        keys = [self._rng.random() for _ in items]
        return [items[position] for position in sorted(range(len(items)), key=keys.__getitem__)]

    def dense_captioning(self, sentences: Sequence[str]) -> tuple[str, str]:
        """A question about the whole video, answered by every event in time order: "From <s0> to <e0>, ..."."""
        answer = " ".join(
            f"From <s{number}> to <e{number}>, {self.clause(sentence)}." for number, sentence in enumerate(sentences)
        )
        return self.pick(DENSE_CAPTIONING_QUESTIONS), answer

    def multi_turn(self, sentences: Sequence[str]) -> list[tuple[str, str]]:
        """One turn per event, in random order, each event captioning or grounding with even odds."""
        turns = []
        for number in self.shuffled(range(len(sentences))):
            if self._rng.random() < _EVENT_CAPTIONING_ODDS:
                turns.append(self.event_captioning(number, sentences[number]))
            else:
                turns.append(self.grounding(number, sentences[number]))
        return turns

    def event_captioning(self, number: int, sentence: str) -> tuple[str, str]:
        """The question gives the event's placeholders; the answer is its sentence."""
        question = self.pick(EVENT_CAPTIONING_QUESTIONS).format(start=f"<s{number}>", end=f"<e{number}>")
        return question, _as_sentence(sentence)

    def grounding(self, number: int, sentence: str) -> tuple[str, str]:
        """The question gives the event's sentence as a clause; the answer its placeholders."""
        question = self.pick(GROUNDING_QUESTIONS).format(event=self.clause(sentence))
        return question, self.pick(GROUNDING_ANSWERS).format(start=f"<s{number}>", end=f"<e{number}>")

    def clause(self, sentence: str) -> str:
        """`"A man cracks an egg."` -> `"a man cracks an egg"`: a sentence to embed in another one."""
        clause = sentence.rstrip(" .!?")
        match = _WORDS.match(clause)
        if match is not None:
            word = match.group()
            # Only a capital initial before lower case is lowered: "TV" and "McDonald" keep theirs.
            if word.lower() in self._common_words and (len(word) == 1 or word[1:].islower()):
                clause = word.lower() + clause[len(word) :]
        return clause


def dialogue_record(
    video: Video, source: str, turns: Sequence[tuple[str, str]], split: tuple[float, float] | None = None
) -> dict[str, Any]:
    """
    A dialogue record (the format of the module's documentation) of `(question, answer)` turns about `video`, whose
    K-th event gives the times of `<sK>` and `<eK>` in `meta.token`; `split`, where given, is `meta.split`.
    """
    conversations = []
    for number, (question, answer) in enumerate(turns):
        # As in VTimeLLM's data: the video comes first, on a line of its own, in the first question only.
        prefix = f"{VIDEO_TOKEN}\n" if number == 0 else ""
        conversations.append({"from": "human", "value": prefix + question})
        conversations.append({"from": "gpt", "value": answer})
    token = {}
    for number, event in enumerate(video.events):
        token[f"<s{number}>"] = event.start
        token[f"<e{number}>"] = event.end
    meta: dict[str, Any] = {}
    if split is not None:
        meta["split"] = list(split)
    meta["duration"] = video.duration
    meta["token"] = token
    return {"source": source, "id": video.video_id, "conversations": conversations, "meta": meta}


def _common_words(sentences: Iterable[str]) -> frozenset[str]:
    """`_LOWERCASE_OPENERS` and every word written in lower case after the first word of a sentence."""
    words = set(_LOWERCASE_OPENERS)
    for sentence in sentences:
        words.update(word for word in _WORDS.findall(sentence)[1:] if word.islower())
    return frozenset(words)


def _as_sentence(text: str) -> str:
    """`"a man cracks an egg"` -> `"A man cracks an egg."`: a caption as an answer of its own."""
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."
