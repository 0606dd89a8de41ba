"""
What the synthetic videos and stills show, drawn before anything is rendered: every random draw of a scene is here,
so that rendering ([`rendering`]) is a pure function of a scene.

A video shows a dark, muted, low-contrast background on which one to three large, saturated shapes ("a red circle",
"a blue square", ...) appear and disappear. Event times are drawn independently of the shapes, so a model can only
answer "when" by looking at the frames. Every boundary is a whole number of hundredths of the duration, the grid
VTimeLLM writes times on, so `min(round(seconds / duration * 100), 99)` gives back the intended index without
rounding ties.

With `sounds_per_video` above zero (the family demo's data; off by default, when the videos are silent and the data
those of VTimeLLM), a video also has an audio track: tones or a noise ("a beep sounds", "a low hum starts") that
start and stop on the same grid, drawn after (and independently of) the shapes, so that no shape marks when they
sound: a model can only answer "when" about them by listening.
"""

import colorsys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# VTimeLLM writes moments as indices into 100 sampled frames; boundaries are drawn on this grid of the duration.
NUM_TIME_BINS = 100

# Saturated colours, far from the dark, muted backgrounds of `Background`.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (40, 195, 60),
    "blue": (35, 70, 235),
    "yellow": (245, 220, 35),
    "purple": (155, 45, 210),
    "cyan": (35, 210, 225),
    "orange": (250, 135, 20),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "bar")
# Shapes drawn in a square box, so that a circle stays round and a square stays square.
_SQUARE_SHAPES = frozenset({"circle", "square", "diamond"})
# The sounds of the audio track: each kind's sentence as a clause, and its waveform (`rendering.sound_waveform`): a
# 1 kHz tone, a 120 Hz hum with its first overtone, and white noise, distinct to any spectral front end.
SOUNDS: dict[str, str] = {"beep": "a beep sounds", "hum": "a low hum starts", "hiss": "a hiss starts"}
# The caption of a still without a shape.
EMPTY_STILL_CAPTION = "an empty background"

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class SyntheticMomentsConfig:
    """
    How the synthetic videos and records are drawn.

    Args:
        duration_range (`tuple[int, int]`, defaults to `(8, 30)`):
            Smallest and largest video duration, in whole seconds (whole seconds keep every timestamp a short
            decimal and every frame count `duration * fps` exact).
        fps_choices (`tuple[int, ...]`, defaults to `(5, 6, 8, 10, 12)`):
            Frame rates a video is drawn from.
        frame_sizes (`tuple[tuple[int, int], ...]`, defaults to `((64, 64), (96, 72), (128, 96))`):
            `(width, height)` pairs a video or still is drawn from; both even, as H.264 in yuv420p needs.
        events_per_video (`tuple[int, int]`, defaults to `(1, 3)`):
            Smallest and largest number of events in a video; shapes and colours never repeat within a video.
            Events may overlap in time, but at most two are on screen at once, so that both stay visible.
        event_span_range (`tuple[float, float]`, defaults to `(0.15, 0.6)`):
            Smallest and largest event length, as a share of the video; the smallest keeps every event on at
            least 15 of the 100 frames VTimeLLM samples.
        min_boundary_gap (`float`, defaults to `0.05`):
            Any two boundaries (starts and ends) of different events are at least this share of the video apart,
            so that every boundary is a visible change of its own.
        shape_extent_range (`tuple[float, float]`, defaults to `(0.75, 0.95)`):
            Side of a shape's box as a share of the frame's height (and width, for non-square shapes, when the
            shape has the screen to itself): the box covers at least 40% of the frame, large enough to dominate a
            CLIP embedding.
        shared_width_range (`tuple[float, float]`, defaults to `(0.45, 0.6)`):
            Width of a shape's box, as a share of the frame's width, while it shares the screen with another
            shape: the two sit at opposite sides and cover each other on at most a fifth of the frame's width, so
            that both are seen appearing and disappearing.
        num_images (`int`, defaults to 192):
            Stage-1 stills, drawn like video frames: each colour-shape pair in turn, now and then beside a second
            shape (as when two events overlap) or left out (a frame between events).
        shapes_per_image (`tuple[float, float, float]`, defaults to `(0.25, 0.45, 0.3)`):
            Shares of the stills that show no shape, one shape and two shapes side by side.
        stage2_dialogues_per_video (`int`, defaults to 4):
            Stage-2 records per training video: as many rounds of the converter's dialogues over the training
            videos, each with a seed of its own.
        stage2_grounding_per_video (`int`, defaults to 0):
            Single-turn grounding records per training video added to stage 2 after its dialogues, asked as the
            dialogues ask, each about one event drawn at random: a sound as often as a shape where the video has both.
            A dialogue gives the times of its video's sound about once among some 30 answer tokens: on the
            dialogues alone the LongVALE demo's tiny model learnt to hear in about half its runs of 1,000 steps; with
            three such records a video beside one dialogue, within 750 (README's LongVALE demo).
        stage3_dialogues_per_video (`int`, defaults to 4):
            Stage-3 records drawn per training video.
        stage3_grounding_shares (`tuple[float, float]`, defaults to `(0.5, 0.2)`):
            Shares of the stage-3 event turns that ground the event as stage 2 asks it (about its sentence, "a red
            circle appears") and as a dialogue asks it (about the shape, "the red circle"); the rest caption it.
            Without the first kind, instruction tuning on other phrasings can teach the model to answer stage 2's
            grounding questions with a caption.
        dense_captioning_share (`float`, defaults to 0.2):
            Share of each round of stage-2 records that is single-turn dense captioning (the rest are multi-turn
            event captioning and grounding), as in VTimeLLM.
        sounds_per_video (`tuple[int, int]`, defaults to `(0, 0)`):
            Smallest and largest number of sounds on a video's audio track, of distinct kinds (`SOUNDS`), never two
            at once. `(0, 0)`, the default, writes silent videos without an audio track; otherwise every video has
            one (silent where no sound plays).
        sound_span_range (`tuple[float, float]`, defaults to `(0.2, 0.5)`):
            Smallest and largest sound length, as a share of the video; boundaries of two sounds are at least
            `min_boundary_gap` apart.
        audio_sampling_rate (`int`, defaults to 16000):
            Samples per second of the audio track (that of LongVALE's encoders).
        num_workers (`int`, defaults to 2):
            Videos encoded at the same time; each ffmpeg process uses one thread, so the output does not depend
            on this number.
    """

    duration_range: tuple[int, int] = (8, 30)
    fps_choices: tuple[int, ...] = (5, 6, 8, 10, 12)
    frame_sizes: tuple[tuple[int, int], ...] = ((64, 64), (96, 72), (128, 96))
    events_per_video: tuple[int, int] = (1, 3)
    event_span_range: tuple[float, float] = (0.15, 0.6)
    min_boundary_gap: float = 0.05
    shape_extent_range: tuple[float, float] = (0.75, 0.95)
    shared_width_range: tuple[float, float] = (0.45, 0.6)
    num_images: int = 192
    shapes_per_image: tuple[float, float, float] = (0.25, 0.45, 0.3)
    stage2_dialogues_per_video: int = 4
    stage2_grounding_per_video: int = 0
    stage3_dialogues_per_video: int = 4
    stage3_grounding_shares: tuple[float, float] = (0.5, 0.2)
    dense_captioning_share: float = 0.2
    sounds_per_video: tuple[int, int] = (0, 0)
    sound_span_range: tuple[float, float] = (0.2, 0.5)
    audio_sampling_rate: int = 16000
    num_workers: int = 2

    @property
    def has_sound(self) -> bool:
        """Whether the videos have an audio track."""
        return self.sounds_per_video[1] > 0

    def __post_init__(self):
        shortest, longest = self.duration_range
        if not 1 <= shortest <= longest:
            raise ValueError(f"duration_range must hold whole seconds 1 <= min <= max, got {self.duration_range}.")
        if not self.fps_choices or min(self.fps_choices) < 1:
            raise ValueError(f"fps_choices must hold positive frame rates, got {self.fps_choices}.")
        for width, height in self.frame_sizes:
            if width < 2 or height < 2 or width % 2 or height % 2:
                raise ValueError(f"frame_sizes must be even (width, height) pairs for H.264, got {(width, height)}.")
        if not self.frame_sizes:
            raise ValueError("frame_sizes must hold at least one (width, height) pair.")
        fewest, most = self.events_per_video
        if not 1 <= fewest <= most <= len(SHAPES):
            raise ValueError(f"events_per_video must satisfy 1 <= min <= max <= {len(SHAPES)}, got {(fewest, most)}.")
        shortest_span, longest_span = self.event_span_range
        if not 0 < shortest_span <= longest_span <= 1:
            raise ValueError(f"event_span_range must satisfy 0 < min <= max <= 1, got {self.event_span_range}.")
        if not 0 <= self.min_boundary_gap < 1:
            raise ValueError(f"min_boundary_gap must lie in [0, 1), got {self.min_boundary_gap}.")
        fewest_sounds, most_sounds = self.sounds_per_video
        if not 0 <= fewest_sounds <= most_sounds <= len(SOUNDS):
            raise ValueError(
                f"sounds_per_video must satisfy 0 <= min <= max <= {len(SOUNDS)}, got {self.sounds_per_video}."
            )
        if self.audio_sampling_rate < 1000:
            raise ValueError(f"audio_sampling_rate must be at least 1000, got {self.audio_sampling_rate}.")
        for name in ("shape_extent_range", "shared_width_range", "sound_span_range"):
            smallest, largest = getattr(self, name)
            if not 0 < smallest <= largest <= 1:
                raise ValueError(f"{name} must satisfy 0 < min <= max <= 1, got {(smallest, largest)}.")
        if not 0 <= self.dense_captioning_share <= 1:
            raise ValueError(f"dense_captioning_share must lie in [0, 1], got {self.dense_captioning_share}.")
        if min(self.stage3_grounding_shares) < 0 or sum(self.stage3_grounding_shares) > 1 + 1e-6:
            raise ValueError(
                f"stage3_grounding_shares must be two non-negative shares summing to at most 1, got "
                f"{self.stage3_grounding_shares}."
            )
        shares = self.shapes_per_image
        if len(shares) != 3 or min(shares) < 0 or abs(sum(shares) - 1) > 1e-6:
            raise ValueError(f"shapes_per_image must be three non-negative shares summing to 1, got {shares}.")
        for name in ("num_images", "stage2_dialogues_per_video", "stage2_grounding_per_video",
                     "stage3_dialogues_per_video"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}.")
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {self.num_workers}.")


@dataclass(frozen=True)
class Background:
    """
    A dark, muted, low-contrast background: a gradient from `first` to `second` (RGB in [0, 1]) along `angle`
    (radians), plus smooth blotches, a coarse 4x4 field of grey levels (`blotches`) upsampled to the frame.

    Dark on purpose: a mid grey sits near CLIP's normalisation mean, so its normalised pixels are close to zero
    and the layer norms of a randomly initialised encoder (as in tests and demos) blow the background's small
    flicker up into embedding changes as large as an event's. Dark pixels normalise far from zero and stay put.
    """

    first: tuple[float, float, float]
    second: tuple[float, float, float]
    angle: float
    blotches: tuple[tuple[float, ...], ...]


@dataclass(frozen=True)
class SyntheticEvent:
    """
    One shape shown on frames `i` with `start <= i / fps < end`.

    Args:
        colour: a key of `COLOURS`.
        shape: one of `SHAPES`.
        start_bin, end_bin: boundaries in hundredths of the video's duration (`end_bin` may be 100).
        start, end: the same boundaries in seconds.
        box: `(left, top, right, bottom)` pixel box the shape is drawn in (right and bottom excluded).
    """

    colour: str
    shape: str
    start_bin: int
    end_bin: int
    start: float
    end: float
    box: Box

    def mask(self, width: int, height: int) -> np.ndarray:
        """Boolean `(height, width)` mask of the pixels the shape covers in a `width` x `height` frame."""
        return shape_mask(self.shape, self.box, width, height)

    @property
    def noun_phrase(self) -> str:
        """`"a red circle"`, `"an orange bar"`."""
        return indefinite_noun_phrase(self.colour, self.shape)

    @property
    def definite_noun_phrase(self) -> str:
        """`"the red circle"`, to refer back to the shape in a dialogue."""
        return f"the {self.colour} {self.shape}"

    @property
    def caption(self) -> str:
        """`"a red circle appears"`: the event's sentence as a clause."""
        return f"{self.noun_phrase} appears"

    @property
    def sentence(self) -> str:
        """`"A red circle appears."`: the event's ActivityNet Captions sentence."""
        return capitalize(self.caption) + "."


@dataclass(frozen=True)
class SyntheticSound:
    """
    One sound of a video's audio track, heard on samples `i` with `start <= i / rate < end`; no shape marks it.

    Args:
        kind: a key of `SOUNDS`.
        start_bin, end_bin: boundaries in hundredths of the video's duration (`end_bin` may be 100).
        start, end: the same boundaries in seconds.
        seed: seed of the noise of a "hiss" (the waveform is a function of the sound).
    """

    kind: str
    start_bin: int
    end_bin: int
    start: float
    end: float
    seed: int

    @property
    def caption(self) -> str:
        """`"a beep sounds"`: the sound's sentence as a clause."""
        return SOUNDS[self.kind]

    @property
    def sentence(self) -> str:
        """`"A beep sounds."`: the sound's ActivityNet Captions sentence."""
        return capitalize(self.caption) + "."


@dataclass(frozen=True)
class SyntheticVideo:
    """
    One video: `num_frames = duration * fps` frames of `width` x `height`, events by start time; `sounds` by start
    time, or `None` for a video without an audio track.
    """

    video_id: str
    split: str
    duration: float
    fps: int
    width: int
    height: int
    events: tuple[SyntheticEvent, ...]
    background: Background
    sounds: tuple[SyntheticSound, ...] | None = None

    @property
    def num_frames(self) -> int:
        return round(self.duration * self.fps)

    def event_frame_range(self, event: SyntheticEvent) -> range:
        """Frames on which `event` is drawn: `start <= i / fps < end`, in exact integer arithmetic."""
        first = -(-event.start_bin * self.num_frames // NUM_TIME_BINS)
        stop = -(-event.end_bin * self.num_frames // NUM_TIME_BINS)
        return range(first, stop)


@dataclass(frozen=True)
class SyntheticStill:
    """A stage-1 still: `shapes` as `(colour, shape, box)`, none, one or two side by side, as on a video frame."""

    image_id: str
    width: int
    height: int
    shapes: tuple[tuple[str, str, Box], ...]
    background: Background

    @property
    def caption(self) -> str:
        """Every shape shown, `"a red circle and a blue bar"`, or `EMPTY_STILL_CAPTION`."""
        phrases = [indefinite_noun_phrase(colour, shape) for colour, shape, _ in self.shapes]
        return " and ".join(phrases) or EMPTY_STILL_CAPTION


def plan_video(video_id: str, split: str, config: SyntheticMomentsConfig, rng: np.random.Generator) -> SyntheticVideo:
    """Draws a video's timing, size, events and background."""
    duration = int(rng.integers(config.duration_range[0], config.duration_range[1] + 1))
    fps = int(rng.choice(config.fps_choices))
    width, height = config.frame_sizes[int(rng.integers(len(config.frame_sizes)))]
    num_events = int(rng.integers(config.events_per_video[0], config.events_per_video[1] + 1))
    spans = sorted(_draw_spans(num_events, config.event_span_range, config.min_boundary_gap, 2, rng, video_id))
    sides = _assign_sides(spans, rng)
    colours = rng.choice(list(COLOURS), size=num_events, replace=False)
    shapes = rng.choice(SHAPES, size=num_events, replace=False)
    # Spans are in start order, so the events are too, and a later event is drawn over an earlier one.
    events = tuple(
        SyntheticEvent(
            colour=str(colour),
            shape=str(shape),
            start_bin=start_bin,
            end_bin=end_bin,
            # start_bin * duration is an integer, so the seconds are exact short decimals.
            start=start_bin * duration / NUM_TIME_BINS,
            end=end_bin * duration / NUM_TIME_BINS,
            box=_draw_box(str(shape), width, height, side, config, rng),
        )
        for (start_bin, end_bin), side, colour, shape in zip(spans, sides, colours, shapes)
    )
    background = _draw_background(rng)
    # Drawn last, and only with a sound track: the silent videos' draws are those of VTimeLLM's data
    sounds = _draw_sounds(duration, config, rng, video_id) if config.has_sound else None
    return SyntheticVideo(video_id, split, float(duration), fps, width, height, events, background, sounds)


def _draw_sounds(
    duration: int, config: SyntheticMomentsConfig, rng: np.random.Generator, video_id: str
) -> tuple[SyntheticSound, ...]:
    num_sounds = int(rng.integers(config.sounds_per_video[0], config.sounds_per_video[1] + 1))
    spans = sorted(_draw_spans(num_sounds, config.sound_span_range, config.min_boundary_gap, 1, rng, video_id))
    kinds = rng.choice(list(SOUNDS), size=num_sounds, replace=False)
    return tuple(
        SyntheticSound(str(kind), start_bin, end_bin, start_bin * duration / NUM_TIME_BINS,
                       end_bin * duration / NUM_TIME_BINS, int(rng.integers(2**31)))
        for (start_bin, end_bin), kind in zip(spans, kinds)
    )  # fmt: skip


def plan_stills(config: SyntheticMomentsConfig, rng: np.random.Generator) -> Iterator[SyntheticStill]:
    """
    `config.num_images` stills, drawn as video frames are: no shape, one, or two side by side (shares
    `config.shapes_per_image`); every colour-shape pair leads a still once per cycle, in a fresh order each cycle.
    """
    combinations = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    cycle: list[int] = []
    for index in range(config.num_images):
        num_shapes = int(rng.choice(3, p=config.shapes_per_image))
        pairs = []
        if num_shapes:
            if not cycle:
                cycle = rng.permutation(len(combinations)).tolist()
            pairs.append(combinations[cycle.pop()])
        if num_shapes == 2:
            colour, shape = pairs[0]
            others = [c for c in COLOURS if c != colour], [s for s in SHAPES if s != shape]
            pairs.append((str(rng.choice(others[0])), str(rng.choice(others[1]))))
        width, height = config.frame_sizes[int(rng.integers(len(config.frame_sizes)))]
        background = _draw_background(rng)
        first_side = int(rng.integers(2))
        shapes = []
        for position, (colour, shape) in enumerate(pairs):
            side = None if num_shapes == 1 else (first_side + position) % 2
            shapes.append((colour, shape, _draw_box(shape, width, height, side, config, rng)))
        yield SyntheticStill(f"synthetic_image_{index:04d}", width, height, tuple(shapes), background)


def _draw_spans(
    count: int,
    span_range: tuple[float, float],
    min_gap: float,
    most_at_once: int,
    rng: np.random.Generator,
    video_id: str,
) -> list[tuple[int, int]]:
    """
    `count` spans on the 100-bin grid, lengths in `span_range` (shares of the video), each boundary at least
    `min_gap` away from the others', and never more than `most_at_once` at the same time.
    """
    if count == 0:
        return []
    shortest = max(1, round(span_range[0] * NUM_TIME_BINS))
    longest = max(shortest, round(span_range[1] * NUM_TIME_BINS))
    gap = round(min_gap * NUM_TIME_BINS)
    # Rejection sampling: with the default settings about one draw in eight is accepted for three events.
    for _ in range(10_000):
        lengths = rng.integers(shortest, longest + 1, size=count)
        starts = [int(rng.integers(0, NUM_TIME_BINS - length + 1)) for length in lengths]
        spans = [(start, start + int(length)) for start, length in zip(starts, lengths)]
        boundaries_apart = all(
            abs(boundary - other_boundary) >= gap
            for index, span in enumerate(spans)
            for other in spans[index + 1 :]
            for boundary in span
            for other_boundary in other
        )
        # The busiest moment starts with some span: count the spans running then.
        busiest = max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)
        if boundaries_apart and busiest <= most_at_once:
            return spans
    raise ValueError(
        f"Cannot place {count} spans in {video_id} with lengths {span_range} of the video and boundaries {min_gap} "
        f"apart, at most {most_at_once} at once: lower min_boundary_gap, events_per_video or sounds_per_video."
    )


def _assign_sides(spans: list[tuple[int, int]], rng: np.random.Generator) -> list[int | None]:
    """
    For spans in start order, at most two at once: `None` for an event that has the screen to itself, else the
    side (0 left, 1 right) it is drawn on, opposite to any event it overlaps.

    An event overlaps at most one earlier event (two would both run at its start, three at once), so giving it
    the other side of that one never conflicts.
    """
    sides: list[int | None] = []
    for index, (start, end) in enumerate(spans):
        overlapping = [
            other
            for other, (other_start, other_end) in enumerate(spans)
            if other != index and other_start < end and start < other_end
        ]
        if not overlapping:
            sides.append(None)
        elif overlapping[0] < index:
            sides.append(1 - sides[overlapping[0]])
        else:
            sides.append(int(rng.integers(2)))
    return sides


def _draw_box(
    shape: str, width: int, height: int, side: int | None, config: SyntheticMomentsConfig, rng: np.random.Generator
) -> Box:
    """
    `(left, top, right, bottom)` of a shape: anywhere in the frame when `side` is None, else flush against the
    left (0) or right (1) edge with a width from `shared_width_range`.
    """
    low, high = config.shape_extent_range
    box_height = round(rng.uniform(low, high) * height)
    if side is None:
        widest = width
        box_width = round(rng.uniform(low, high) * width)
    else:
        widest = round(config.shared_width_range[1] * width)
        box_width = round(rng.uniform(*config.shared_width_range) * width)
    if shape in _SQUARE_SHAPES:
        box_width = min(box_height, widest)
        box_height = box_width
    if side is None:
        left = int(rng.integers(0, width - box_width + 1))
    else:
        left = 0 if side == 0 else width - box_width
    top = int(rng.integers(0, height - box_height + 1))
    return left, top, left + box_width, top + box_height


def _draw_background(rng: np.random.Generator) -> Background:
    hue = rng.uniform()
    first = colorsys.hsv_to_rgb(hue, rng.uniform(0.08, 0.25), rng.uniform(0.15, 0.3))
    second = colorsys.hsv_to_rgb((hue + rng.uniform(-0.1, 0.1)) % 1.0, rng.uniform(0.08, 0.25), rng.uniform(0.2, 0.35))
    angle = float(rng.uniform(0, 2 * np.pi))
    blotches = rng.normal(0.0, 6.0, size=(4, 4)).astype(np.float32)
    return Background(first, second, angle, tuple(tuple(float(value) for value in row) for row in blotches))


def shape_mask(shape: str, box: Box, width: int, height: int) -> np.ndarray:
    """Boolean `(height, width)` mask of `shape` filling `box`."""
    left, top, right, bottom = box
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    # Box-relative coordinates of pixel centres: (0, 0) top left, (1, 1) bottom right.
    u = (columns + 0.5 - left) / (right - left)
    v = (rows + 0.5 - top) / (bottom - top)
    inside = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if shape == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if shape == "square":
        return inside
    if shape == "triangle":  # apex at the top centre, base along the bottom
        return inside & (np.abs(u - 0.5) <= v / 2)
    if shape == "diamond":
        return np.abs(u - 0.5) + np.abs(v - 0.5) <= 0.5
    if shape == "cross":
        return inside & ((np.abs(u - 0.5) <= 1 / 6) | (np.abs(v - 0.5) <= 1 / 6))
    if shape == "bar":  # a thick horizontal bar across the box
        return inside & (np.abs(v - 0.5) <= 0.25)
    raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")


def indefinite_noun_phrase(colour: str, shape: str) -> str:
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape}"


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]
