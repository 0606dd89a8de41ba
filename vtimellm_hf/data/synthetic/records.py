"""
The annotations and training records of the synthetic scenes ([`scenes`]), in the originals' formats.

The raw annotations are ActivityNet Captions (`{video_id: {"duration", "timestamps", "sentences"}}`, one sentence
an event, "A red circle appears."): what the synthetic data adds to the real datasets ends there, and everything
the real ones go through is built from them by [`~vtimellm_hf.data.converters`]: the stage-2 dialogues
(`videos_to_dialogues`), the held-out grounding queries and dense-captioning references. What no converter builds
is written here, with the converters' turn builder ([`~vtimellm_hf.data.dialogues.DialogueTurns`]) and record
layout wherever they apply: LCS-558K style stage-1 records on the stills, and stage-3 dialogues about the shapes
(counting, order, overlap), whose grounding turns ask as stage 2 asks.
"""

from collections.abc import Sequence

from ..converters import videos_to_dialogues
from ..dialogues import DialogueTurns, dialogue_record
from ..raw_annotations import Event, Video
from .scenes import SyntheticEvent, SyntheticMomentsConfig, SyntheticStill, SyntheticVideo, capitalize

# The records' `source` field.
SOURCE_NAME = "synthetic"

IMAGE_CAPTIONING_TEMPLATES = (
    "Describe the image briefly.",
    "Give a brief description of the image.",
    "What is in this picture?",
    "Write a terse but informative summary of the picture.",
    "Render a clear and concise summary of the photo.",
    "Share a concise interpretation of the image provided.",
    "Summarize the visual content of the image.",
    "What does this image show?",
    "Provide a short caption for this image.",
    "Briefly describe what you see.",
)
# Stage-3 questions about the shapes. `{thing}` is a definite noun phrase ("the red circle"), `{start}`/`{end}` the
# placeholders of one event.
DIALOGUE_GROUNDING_TEMPLATES = (
    "When is {thing} visible?",
    "At what point does {thing} show up, and when does it go away?",
    "Can you tell me when {thing} is on screen?",
    "During which part of the video can I see {thing}?",
    "Find the segment that shows {thing}.",
    "I am looking for {thing}. When is it there?",
    "From which frame to which frame is {thing} shown?",
    "Between which frames is {thing} in view?",
    "When does {thing} appear and disappear?",
    "Locate {thing} in the video.",
)
# Answers keep the "from XX to YY" form that the grounding evaluation parses.
DIALOGUE_GROUNDING_ANSWERS = (
    "{Thing} is visible from {start} to {end}.",
    "From {start} to {end}.",
    "It is on screen from {start} to {end}.",
    "You can see {thing} from {start} to {end}.",
)
# Events may overlap: these ask for the event that spans exactly the given segment.
DIALOGUE_CAPTIONING_TEMPLATES = (
    "What appears at {start} and disappears at {end}?",
    "Which shape shows up at {start} and goes away at {end}?",
    "What event spans exactly from {start} to {end}?",
    "Tell me what comes on screen at {start} and leaves at {end}.",
    "Which shape is visible exactly from {start} to {end}?",
)
COUNTING_TEMPLATES = (
    "How many shapes appear in this video?",
    "How many different shapes show up?",
    "Count the shapes that appear in the video.",
    "How many objects can be seen over the course of the video?",
)
FIRST_EVENT_TEMPLATES = (
    "Which shape appears first?",
    "What is the first thing to show up in the video?",
    "What appears earliest?",
)
LAST_EVENT_TEMPLATES = (
    "Which shape is the last to appear?",
    "What shows up last in the video?",
    "What is the final shape to appear?",
)
OVERLAP_TEMPLATES = (
    "Are {first} and {second} ever on screen at the same time?",
    "Do {first} and {second} overlap in time?",
    "Is {second} visible while {first} is shown?",
)
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")


def raw_annotation(video: SyntheticVideo) -> Video:
    """
    The video as its ActivityNet Captions annotation has it: duration, and each event's times and sentence, the
    shapes' then the sounds' (so that a shape's index is the same with or without a sound track).
    """
    events = tuple(Event(event.start, event.end, event.sentence) for event in (*video.events, *(video.sounds or ())))
    return Video(video.video_id, video.duration, events)


def stage1_records(stills: Sequence[SyntheticStill], image_paths: Sequence[str], seed: int) -> list[dict]:
    """LCS-558K style records: a captioning prompt about the still at `image_paths[i]`, answered by its caption."""
    prompts = DialogueTurns((), seed)
    return [
        {
            "id": still.image_id,
            "image": image_path,
            "conversations": [
                {"from": "human", "value": f"<image>\n{prompts.pick(IMAGE_CAPTIONING_TEMPLATES)}"},
                {"from": "gpt", "value": still.caption},
            ],
        }
        for still, image_path in zip(stills, image_paths)
    ]


def stage2_records(videos: Sequence[Video], dense_share: float, seeds: Sequence[int]) -> list[dict]:
    """VTimeLLM stage-2 dialogues: one round of the converter's dialogues over `videos` per seed."""
    return [
        record
        for seed in seeds
        for record in videos_to_dialogues(videos, SOURCE_NAME, dense_share=dense_share, seed=seed)
    ]


def stage2_grounding_records(videos: Sequence[SyntheticVideo], per_video: int, seed: int) -> list[dict]:
    """
    `per_video` single-turn grounding records per video, asked as the stage-2 dialogues ask (`DialogueTurns.grounding`),
    each about one event drawn at random: a sound as often as a shape where the video has both.
    """
    annotations = [raw_annotation(video) for video in videos]
    turns = DialogueTurns((event.sentence for video in annotations for event in video.events), seed)
    records = []
    for video, annotation in zip(videos, annotations):
        shapes = range(len(video.events))
        sounds = range(len(video.events), len(annotation.events))
        for _ in range(per_video):
            events = sounds if sounds and (not shapes or turns.random() < 0.5) else shapes
            number = events[int(turns.random() * len(events))]
            turn = turns.grounding(number, annotation.events[number].sentence)
            records.append(dialogue_record(annotation, SOURCE_NAME, [turn]))
    return records


def stage3_records(videos: Sequence[SyntheticVideo], config: SyntheticMomentsConfig, seed: int) -> list[dict]:
    """
    VTimeLLM stage-3 style dialogues, `config.stage3_dialogues_per_video` per video: an optional count of the
    shapes, then grounding (asked as stage 2 asks it, or as a dialogue does; `config.stage3_grounding_shares`) or
    captioning of each event, then order and overlap questions when the video has several events; each sound
    grounded as stage 2 asks it, among them.
    """
    sentences = (event.sentence for video in videos for event in (*video.events, *(video.sounds or ())))
    turns = DialogueTurns(sentences, seed)
    records = []
    for video in videos:
        for _ in range(config.stage3_dialogues_per_video):
            events = video.events
            dialogue = []
            if turns.random() < 0.5:
                dialogue.append((turns.pick(COUNTING_TEMPLATES), _count_answer(events)))
            body = [_event_turn(index, event, config, turns) for index, event in enumerate(events)]
            # Sounds follow the shapes in the annotation
            sounds = video.sounds or ()
            body += [turns.grounding(len(events) + index, sound.sentence) for index, sound in enumerate(sounds)]
            if len(events) > 1:
                if turns.random() < 0.5:
                    body.append((turns.pick(FIRST_EVENT_TEMPLATES), _order_answer(events, 0, "first")))
                else:
                    body.append((turns.pick(LAST_EVENT_TEMPLATES), _order_answer(events, len(events) - 1, "last")))
                first_index, second_index = sorted(turns.shuffled(range(len(events)))[:2])
                body.append(_overlap_turn(events, first_index, second_index, turns))
            dialogue.extend(turns.shuffled(body))
            records.append(dialogue_record(raw_annotation(video), SOURCE_NAME, dialogue))
    return records


def _event_turn(
    index: int, event: SyntheticEvent, config: SyntheticMomentsConfig, turns: DialogueTurns
) -> tuple[str, str]:
    start, end = f"<s{index}>", f"<e{index}>"
    sentence_share, dialogue_share = config.stage3_grounding_shares
    draw = turns.random()
    if draw < sentence_share:
        # As VTimeLLM's stage-3 dialogues ground ActivityNet and DiDeMo sentences
        return turns.grounding(index, event.sentence)
    if draw < sentence_share + dialogue_share:
        thing = event.definite_noun_phrase
        question = turns.pick(DIALOGUE_GROUNDING_TEMPLATES).format(thing=thing)
        answer = turns.pick(DIALOGUE_GROUNDING_ANSWERS)
        return question, answer.format(thing=thing, Thing=capitalize(thing), start=start, end=end)
    return turns.pick(DIALOGUE_CAPTIONING_TEMPLATES).format(start=start, end=end), event.sentence


def _count_answer(events: Sequence[SyntheticEvent]) -> str:
    listing = _join_english([event.noun_phrase for event in events])
    count = capitalize(_NUMBER_WORDS[len(events)])
    return f"{count} shapes appear: {listing}." if len(events) > 1 else f"{count} shape appears: {listing}."


def _order_answer(events: Sequence[SyntheticEvent], index: int, position: str) -> str:
    thing = capitalize(events[index].definite_noun_phrase)
    return f"{thing} appears {position}, from <s{index}> to <e{index}>."


def _overlap_turn(
    events: Sequence[SyntheticEvent], first_index: int, second_index: int, turns: DialogueTurns
) -> tuple[str, str]:
    """A question on whether two events share screen time; events are in start order, so `first` starts first."""
    first, second = events[first_index], events[second_index]
    question = turns.pick(OVERLAP_TEMPLATES).format(
        first=first.definite_noun_phrase, second=second.definite_noun_phrase
    )
    if second.start_bin < first.end_bin:
        shared_end = f"<e{first_index}>" if first.end_bin < second.end_bin else f"<e{second_index}>"
        answer = f"Yes, both are visible from <s{second_index}> to {shared_end}."
    else:
        answer = (
            f"No. {capitalize(first.definite_noun_phrase)} disappears at <e{first_index}>, "
            f"before {second.definite_noun_phrase} appears at <s{second_index}>."
        )
    return question, answer


def _join_english(items: list[str]) -> str:
    """`["a", "b", "c"]` -> `"a, b and c"`."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
