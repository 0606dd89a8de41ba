"""
Synthetic moments: small videos whose events are known exactly, with every annotation VTimeLLM trains and is
evaluated on.

Each video shows a dark, muted, low-contrast background on which one to three large, saturated shapes ("a red
circle", "a blue square", ...) appear and disappear. Event times are drawn independently of the shapes, so a
model can only answer "when" by looking at the frames. From the same draw, `generate_synthetic_moments` writes
the videos, ActivityNet Captions annotations, a held-out split, and the training records of the three VTimeLLM
stages (LCS-558K style stills for stage 1, dialogues with `<sK>`/`<eK>` placeholders for stages 2 and 3).

Timestamps are chosen on the grid VTimeLLM writes them on: every boundary is a whole number of hundredths of the
duration, so `min(round(seconds / duration * 100), 99)` gives back the intended index without rounding ties.
The same seed gives byte-identical annotation files and identical decoded frames.
"""

import colorsys
import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

# VTimeLLM writes moments as indices into 100 sampled frames; boundaries are drawn on this grid of the duration.
NUM_TIME_BINS = 100

# Saturated colours, far from the dark, muted backgrounds of `_draw_background`.
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
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six")

ANNOTATIONS_FILE = "annotations.json"
SPLITS_FILE = "splits.json"
STAGE1_FILE = "stage1.json"
STAGE2_FILE = "stage2.json"
STAGE3_FILE = "stage3.json"
GROUNDING_VAL_FILE = "grounding_val.jsonl"
DENSE_CAPTIONING_VAL_FILE = "dense_captioning_val.json"
CONFIG_FILE = "synthetic_config.json"
VIDEO_DIR = "videos"
IMAGE_DIR = "images"
_OUTPUT_NAMES = (
    ANNOTATIONS_FILE,
    SPLITS_FILE,
    STAGE1_FILE,
    STAGE2_FILE,
    STAGE3_FILE,
    GROUNDING_VAL_FILE,
    DENSE_CAPTIONING_VAL_FILE,
    CONFIG_FILE,
    VIDEO_DIR,
    IMAGE_DIR,
)
SOURCE_NAME = "synthetic"

# Question templates. `{event}` is a clause ("a red circle appears"), `{thing}` a definite noun phrase ("the red
# circle"), `{start}`/`{end}` the placeholders of one event.
DENSE_CAPTIONING_TEMPLATES = (
    "Describe the events in the video and when they happen.",
    "Could you list everything that happens in this video, with its start and end frames?",
    "Provide a detailed account of the video, giving the time of each event.",
    "What happens in this video? Give the start and end frame of each event.",
    "Break the video down into its events and their time spans.",
    "List the events of the video in order, with timestamps.",
    "Write a dense caption of the video: every event with its start and end.",
    "Walk me through the video event by event, with times.",
    "Which events occur in this video, and when?",
    "Give a timeline of the events in the video.",
)
EVENT_CAPTIONING_TEMPLATES = (
    "What happens from {start} to {end}?",
    "Describe the event between {start} and {end}.",
    "What can be seen in the video from {start} to {end}?",
    "Tell me what is going on between {start} and {end}.",
    "Explain what happens during frames {start} to {end}.",
    "What takes place in the segment from {start} to {end}?",
    "Can you describe the moment from {start} to {end}?",
    "Summarize the segment between {start} and {end}.",
    "What event occurs from {start} to {end}?",
    "Give a caption for the part of the video from {start} to {end}.",
)
GROUNDING_TEMPLATES = (
    "During which frames does this happen: {event}?",
    "Find the moment when {event}.",
    'Give the start and end of the event "{event}".',
    "Localize the segment in which {event}.",
    "Can you tell me when {event}?",
    "Identify the time span during which {event}.",
    "Which frames show the moment where {event}?",
    "Tell me the start and end frames of the part where {event}.",
    "Point out when {event} in the video.",
    "Locate the clip where {event}.",
)
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
EMPTY_STILL_CAPTION = "an empty background"
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
            Stage-2 records drawn per training video.
        stage3_dialogues_per_video (`int`, defaults to 4):
            Stage-3 records drawn per training video.
        stage3_grounding_shares (`tuple[float, float]`, defaults to `(0.5, 0.2)`):
            Shares of the stage-3 event turns that ground the event as stage 2 asks it (about its sentence, "a red
            circle appears") and as a dialogue asks it (about the shape, "the red circle"); the rest caption it.
            Without the first kind, instruction tuning on other phrasings can teach the model to answer stage 2's
            grounding questions with a caption.
        dense_captioning_share (`float`, defaults to 0.2):
            Share of stage-2 records that are single-turn dense captioning (the rest are multi-turn event
            captioning and grounding), as in VTimeLLM.
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
    stage3_dialogues_per_video: int = 4
    stage3_grounding_shares: tuple[float, float] = (0.5, 0.2)
    dense_captioning_share: float = 0.2
    num_workers: int = 2

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
        for name in ("shape_extent_range", "shared_width_range"):
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
        for name in ("num_images", "stage2_dialogues_per_video", "stage3_dialogues_per_video"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}.")
        if self.num_workers < 1:
            raise ValueError(f"num_workers must be at least 1, got {self.num_workers}.")


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
    box: tuple[int, int, int, int]

    def mask(self, width: int, height: int) -> np.ndarray:
        """Boolean `(height, width)` mask of the pixels the shape covers in a `width` x `height` frame."""
        return _shape_mask(self.shape, self.box, width, height)

    @property
    def noun_phrase(self) -> str:
        """`"a red circle"`, `"an orange bar"`."""
        return _indefinite_noun_phrase(self.colour, self.shape)

    @property
    def definite_noun_phrase(self) -> str:
        """`"the red circle"`, to refer back to the shape in a dialogue."""
        return f"the {self.colour} {self.shape}"

    @property
    def caption(self) -> str:
        """`"a red circle appears"`: the grounding query and the clause used inside questions."""
        return f"{self.noun_phrase} appears"

    @property
    def sentence(self) -> str:
        """`"A red circle appears."`: the ActivityNet Captions sentence and the captioning answer."""
        return _capitalize(self.caption) + "."


@dataclass(frozen=True)
class SyntheticVideo:
    """One generated video: `num_frames = duration * fps` frames of `width` x `height`, events by start time."""

    video_id: str
    split: str
    duration: float
    fps: int
    width: int
    height: int
    events: tuple[SyntheticEvent, ...]

    @property
    def num_frames(self) -> int:
        return round(self.duration * self.fps)

    def event_frame_range(self, event: SyntheticEvent) -> range:
        """Frames on which `event` is drawn: `start <= i / fps < end`, in exact integer arithmetic."""
        first = -(-event.start_bin * self.num_frames // NUM_TIME_BINS)
        stop = -(-event.end_bin * self.num_frames // NUM_TIME_BINS)
        return range(first, stop)

    @property
    def placeholder_seconds(self) -> dict[str, float]:
        """`{"<s0>": start, "<e0>": end, ...}` for the events in start order: the stage-2/3 `meta.token`."""
        token = {}
        for index, event in enumerate(self.events):
            token[f"<s{index}>"] = event.start
            token[f"<e{index}>"] = event.end
        return token


@dataclass(frozen=True)
class SyntheticDataset:
    """
    What `generate_synthetic_moments` wrote under `root`. Paths in the records are relative to `root`.

    Args:
        root: the output folder.
        seed: the seed everything was drawn from.
        config: the generation settings.
        videos: every video, training ones first.
        num_stage1_records, num_stage2_records, num_stage3_records: records in each stage file.
    """

    root: Path
    seed: int
    config: SyntheticMomentsConfig
    videos: tuple[SyntheticVideo, ...]
    num_stage1_records: int
    num_stage2_records: int
    num_stage3_records: int
    annotations_file: Path = field(init=False)
    splits_file: Path = field(init=False)
    stage1_file: Path = field(init=False)
    stage2_file: Path = field(init=False)
    stage3_file: Path = field(init=False)
    grounding_val_file: Path = field(init=False)
    dense_captioning_val_file: Path = field(init=False)
    video_dir: Path = field(init=False)
    image_dir: Path = field(init=False)

    def __post_init__(self):
        # The dataclass is frozen: derived paths are set through object.__setattr__ once, here.
        for name, relative in (
            ("annotations_file", ANNOTATIONS_FILE),
            ("splits_file", SPLITS_FILE),
            ("stage1_file", STAGE1_FILE),
            ("stage2_file", STAGE2_FILE),
            ("stage3_file", STAGE3_FILE),
            ("grounding_val_file", GROUNDING_VAL_FILE),
            ("dense_captioning_val_file", DENSE_CAPTIONING_VAL_FILE),
            ("video_dir", VIDEO_DIR),
            ("image_dir", IMAGE_DIR),
        ):
            object.__setattr__(self, name, self.root / relative)

    @property
    def train_video_ids(self) -> list[str]:
        return [video.video_id for video in self.videos if video.split == "train"]

    @property
    def val_video_ids(self) -> list[str]:
        return [video.video_id for video in self.videos if video.split == "val"]

    def video_path(self, video_id: str) -> Path:
        return self.video_dir / f"{video_id}.mp4"


def generate_synthetic_moments(
    output_dir: str | Path,
    num_videos: int = 64,
    num_val_videos: int = 16,
    seed: int = 0,
    config: SyntheticMomentsConfig | None = None,
    overwrite: bool = False,
) -> SyntheticDataset:
    """
    Writes the synthetic moments dataset to `output_dir`.

    Layout (all paths inside the records are relative to `output_dir`):

    - `videos/{video_id}.mp4`: H.264 videos.
    - `annotations.json`: every video in the ActivityNet Captions format
      `{video_id: {"duration", "timestamps", "sentences"}}`.
    - `splits.json`: `{"train": [video_id, ...], "val": [...]}`; held-out videos appear in no training record.
    - `stage1.json`: LCS-558K style records on the stills `images/{id}.png` (none, one or two shapes), captioned.
    - `stage2.json`: VTimeLLM stage-2 dialogues on training videos (dense captioning, or event captioning and
      grounding), with `<sK>`/`<eK>` placeholders resolved by `meta.token`.
    - `stage3.json`: VTimeLLM stage-3 dialogues on training videos (grounding, captioning, counting, order and
      overlap questions).
    - `grounding_val.jsonl`: one held-out grounding query a line: `video_id`, `query`, `start`, `end`, `duration`.
    - `dense_captioning_val.json`: the held-out videos in the ActivityNet Captions format.
    - `synthetic_config.json`: the seed, counts and configuration, to regenerate the same data.

    Args:
        output_dir: folder to write to; created if needed.
        num_videos: videos in all, held-out ones included.
        num_val_videos: videos held out for evaluation (the last ones generated).
        seed: seed of every random draw; the same seed gives byte-identical annotation files and identical frames.
        config: drawing settings; `SyntheticMomentsConfig()` when omitted.
        overwrite: replace the outputs of an earlier run in `output_dir` instead of refusing.

    Returns:
        [`SyntheticDataset`]: the videos, their events and the paths written.
    """
    config = config or SyntheticMomentsConfig()
    if not 0 <= num_val_videos < num_videos:
        raise ValueError(
            f"num_val_videos must leave at least one training video: got {num_val_videos} of {num_videos} videos."
        )
    output_dir = Path(output_dir)
    _prepare_output_dir(output_dir, overwrite)

    # Independent streams: videos, stills and dialogues can change without shifting each other's draws.
    video_seeds, image_seed, dialogue_seed = np.random.SeedSequence(seed).spawn(3)
    num_train_videos = num_videos - num_val_videos
    plans = [
        _plan_video(
            video_id=f"v_synthetic_{index:04d}",
            split="train" if index < num_train_videos else "val",
            config=config,
            rng=np.random.default_rng(video_seed),
        )
        for index, video_seed in enumerate(video_seeds.spawn(num_videos))
    ]
    videos = tuple(video for video, _ in plans)

    (output_dir / VIDEO_DIR).mkdir()
    with ThreadPoolExecutor(max_workers=config.num_workers) as pool:
        # list() re-raises the first encoding error here.
        list(pool.map(lambda plan: _write_video(output_dir / VIDEO_DIR, *plan), plans))

    (output_dir / IMAGE_DIR).mkdir()
    stage1 = _write_stage1_images(output_dir, config, np.random.default_rng(image_seed))
    train_videos = [video for video in videos if video.split == "train"]
    val_videos = [video for video in videos if video.split == "val"]
    dialogue_rng = np.random.default_rng(dialogue_seed)
    stage2 = _stage2_records(train_videos, config, dialogue_rng)
    stage3 = _stage3_records(train_videos, config, dialogue_rng)

    _write_json(output_dir / ANNOTATIONS_FILE, _activitynet_annotations(videos))
    _write_json(output_dir / DENSE_CAPTIONING_VAL_FILE, _activitynet_annotations(val_videos))
    _write_json(
        output_dir / SPLITS_FILE,
        {"train": [video.video_id for video in train_videos], "val": [video.video_id for video in val_videos]},
    )
    _write_json(output_dir / STAGE1_FILE, stage1)
    _write_json(output_dir / STAGE2_FILE, stage2)
    _write_json(output_dir / STAGE3_FILE, stage3)
    grounding_lines = [
        json.dumps(
            {
                "video_id": video.video_id,
                "query": event.caption,
                "start": event.start,
                "end": event.end,
                "duration": video.duration,
            }
        )
        for video in val_videos
        for event in video.events
    ]
    (output_dir / GROUNDING_VAL_FILE).write_text("".join(line + "\n" for line in grounding_lines))
    _write_json(
        output_dir / CONFIG_FILE,
        {"seed": seed, "num_videos": num_videos, "num_val_videos": num_val_videos, "config": asdict(config)},
    )
    return SyntheticDataset(
        root=output_dir,
        seed=seed,
        config=config,
        videos=videos,
        num_stage1_records=len(stage1),
        num_stage2_records=len(stage2),
        num_stage3_records=len(stage3),
    )


def _prepare_output_dir(output_dir: Path, overwrite: bool) -> None:
    existing = [output_dir / name for name in _OUTPUT_NAMES if (output_dir / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} already exists: pass overwrite=True to replace the synthetic dataset in {output_dir}."
        )
    # Only the names this function writes are removed, so that stale videos of a larger earlier run go away
    # while anything else kept in the folder survives.
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    output_dir.mkdir(parents=True, exist_ok=True)


# Planning: every random draw of a video, made before anything is rendered.


def _plan_video(
    video_id: str, split: str, config: SyntheticMomentsConfig, rng: np.random.Generator
) -> tuple[SyntheticVideo, np.ndarray]:
    """Draws a video's timing, size, events and background; returns it with its static background image."""
    duration = int(rng.integers(config.duration_range[0], config.duration_range[1] + 1))
    fps = int(rng.choice(config.fps_choices))
    width, height = config.frame_sizes[int(rng.integers(len(config.frame_sizes)))]
    num_events = int(rng.integers(config.events_per_video[0], config.events_per_video[1] + 1))
    spans = sorted(_draw_event_bins(num_events, config, rng, video_id))
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
    video = SyntheticVideo(
        video_id=video_id,
        split=split,
        duration=float(duration),
        fps=fps,
        width=width,
        height=height,
        events=events,
    )
    return video, _draw_background(width, height, rng)


def _draw_event_bins(
    num_events: int, config: SyntheticMomentsConfig, rng: np.random.Generator, video_id: str
) -> list[tuple[int, int]]:
    """
    Event spans on the 100-bin grid, each boundary at least `min_boundary_gap` away from the others', and never
    more than two events at the same time.
    """
    shortest = max(1, round(config.event_span_range[0] * NUM_TIME_BINS))
    longest = max(shortest, round(config.event_span_range[1] * NUM_TIME_BINS))
    gap = round(config.min_boundary_gap * NUM_TIME_BINS)
    # Rejection sampling: with the default settings about one draw in eight is accepted for three events.
    for _ in range(10_000):
        lengths = rng.integers(shortest, longest + 1, size=num_events)
        starts = [int(rng.integers(0, NUM_TIME_BINS - length + 1)) for length in lengths]
        spans = [(start, start + int(length)) for start, length in zip(starts, lengths)]
        boundaries_apart = all(
            abs(boundary - other_boundary) >= gap
            for index, span in enumerate(spans)
            for other in spans[index + 1 :]
            for boundary in span
            for other_boundary in other
        )
        # The busiest moment starts with some event: count the events running then.
        most_at_once = max(sum(start <= moment < end for start, end in spans) for moment, _ in spans)
        if boundaries_apart and most_at_once <= 2:
            return spans
    raise ValueError(
        f"Cannot place {num_events} events in {video_id} with lengths {config.event_span_range} of the video and "
        f"boundaries {config.min_boundary_gap} apart, at most two at once: lower min_boundary_gap or "
        "events_per_video."
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
) -> tuple[int, int, int, int]:
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


def _draw_background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """
    A dark, muted, low-contrast float image: a gradient between two greyish colours along a random direction,
    plus smooth blotches, far from the saturated shapes.

    Dark on purpose: a mid grey sits near CLIP's normalisation mean, so its normalised pixels are close to zero
    and the layer norms of a randomly initialised encoder (as in tests and demos) blow the background's small
    flicker up into embedding changes as large as an event's. Dark pixels normalise far from zero and stay put.
    """
    hue = rng.uniform()
    first = colorsys.hsv_to_rgb(hue, rng.uniform(0.08, 0.25), rng.uniform(0.15, 0.3))
    second = colorsys.hsv_to_rgb((hue + rng.uniform(-0.1, 0.1)) % 1.0, rng.uniform(0.08, 0.25), rng.uniform(0.2, 0.35))
    angle = rng.uniform(0, 2 * np.pi)
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = np.cos(angle) * columns / width + np.sin(angle) * rows / height
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    image = (1 - ramp[..., None]) * np.array(first) * 255 + ramp[..., None] * np.array(second) * 255
    # Blotches: a coarse 4x4 random field, upsampled bilinearly, so the texture is smooth and cheap to encode.
    coarse = rng.normal(0.0, 6.0, size=(4, 4)).astype(np.float32)
    row_positions = np.linspace(0, 3, height)
    column_positions = np.linspace(0, 3, width)
    blotches = np.stack([np.interp(column_positions, np.arange(4), line) for line in coarse])
    blotches = np.stack([np.interp(row_positions, np.arange(4), blotches[:, column]) for column in range(width)], 1)
    return (image + blotches[..., None]).astype(np.float32)


# Rendering.


def _shape_mask(shape: str, box: tuple[int, int, int, int], width: int, height: int) -> np.ndarray:
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


def _render_video_frames(video: SyntheticVideo, background: np.ndarray) -> np.ndarray:
    """
    The frames of `video` as a uint8 array `(num_frames, height, width, 3)`.

    The background breathes slowly (a few grey levels over several seconds) so that frames outside events are
    not all identical; events are drawn in start order, so a later shape covers an earlier one where they meet.
    """
    times = np.arange(video.num_frames, dtype=np.float32) / video.fps
    breathing = 4.0 * np.sin(2 * np.pi * times / 6.0)
    frames = background[None] + breathing[:, None, None, None]
    for event in video.events:
        mask = event.mask(video.width, video.height)
        frame_range = video.event_frame_range(event)
        frames[frame_range.start : frame_range.stop, mask] = COLOURS[event.colour]
    return np.clip(np.rint(frames), 0, 255).astype(np.uint8)


def _write_video(video_dir: Path, video: SyntheticVideo, background: np.ndarray) -> None:
    path = video_dir / f"{video.video_id}.mp4"
    frames = _render_video_frames(video, background)
    encode_mp4(path, frames, video.fps)


def encode_mp4(path: str | Path, frames: np.ndarray, fps: int) -> None:
    """
    Encodes uint8 RGB `frames` `(num_frames, height, width, 3)` to an H.264 mp4 with the ffmpeg binary of
    `imageio-ffmpeg`, piping raw frames to it.

    One encoder thread and bit-exact flags keep the file identical from run to run.
    """
    try:
        import imageio_ffmpeg
    except ImportError as error:
        raise ImportError(
            f"Writing {path} needs the ffmpeg binary of imageio-ffmpeg: `pip install imageio-ffmpeg`."
        ) from error
    num_frames, height, width, channels = frames.shape
    if frames.dtype != np.uint8 or channels != 3:
        raise ValueError(f"{path}: expected uint8 RGB frames, got dtype {frames.dtype} with {channels} channels.")
    if width % 2 or height % 2:
        raise ValueError(f"{path}: H.264 in yuv420p needs an even frame size, got {width}x{height}.")
    command = [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-y",
        "-loglevel", "error",
        "-f", "rawvideo",
        "-pix_fmt", "rgb24",
        "-s", f"{width}x{height}",
        "-framerate", str(fps),
        "-i", "pipe:0",
        "-c:v", "libx264",
        "-preset", "veryfast",
        "-crf", "18",
        "-pix_fmt", "yuv420p",
        "-threads", "1",
        "-map_metadata", "-1",
        "-fflags", "+bitexact",
        "-flags", "+bitexact",
        str(path),
    ]  # fmt: skip
    result = subprocess.run(command, input=frames.tobytes(), capture_output=True)
    if result.returncode != 0:
        raise RuntimeError(f"ffmpeg failed to write {path}: {result.stderr.decode(errors='replace').strip()}")


def _write_stage1_images(output_dir: Path, config: SyntheticMomentsConfig, rng: np.random.Generator) -> list[dict]:
    """
    Writes `images/{id}.png` stills drawn as video frames are (see `SyntheticMomentsConfig.num_images`) and returns
    their LCS-558K style records, whose caption names every shape shown.
    """
    combinations = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    cycle: list[int] = []
    records = []
    for index in range(config.num_images):
        num_shapes = int(rng.choice(3, p=config.shapes_per_image))
        shapes = []
        if num_shapes:
            # Every colour-shape pair leads a still once per cycle, in a fresh order each cycle.
            if not cycle:
                cycle = rng.permutation(len(combinations)).tolist()
            shapes.append(combinations[cycle.pop()])
        if num_shapes == 2:
            colour, shape = shapes[0]
            shapes.append(
                (str(rng.choice([c for c in COLOURS if c != colour])), str(rng.choice([s for s in SHAPES if s != shape])))
            )
        width, height = config.frame_sizes[int(rng.integers(len(config.frame_sizes)))]
        image = _draw_background(width, height, rng)
        first_side = int(rng.integers(2))
        for position, (colour, shape) in enumerate(shapes):
            side = None if num_shapes == 1 else (first_side + position) % 2
            image[_shape_mask(shape, _draw_box(shape, width, height, side, config, rng), width, height)] = COLOURS[colour]
        image_id = f"synthetic_image_{index:04d}"
        relative_path = f"{IMAGE_DIR}/{image_id}.png"
        Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8)).save(output_dir / relative_path)
        prompt = IMAGE_CAPTIONING_TEMPLATES[int(rng.integers(len(IMAGE_CAPTIONING_TEMPLATES)))]
        caption = " and ".join(_indefinite_noun_phrase(colour, shape) for colour, shape in shapes) or EMPTY_STILL_CAPTION
        records.append(
            {
                "id": image_id,
                "image": relative_path,
                "conversations": [
                    {"from": "human", "value": f"<image>\n{prompt}"},
                    {"from": "gpt", "value": caption},
                ],
            }
        )
    return records


# Records.


def _activitynet_annotations(videos: list[SyntheticVideo] | tuple[SyntheticVideo, ...]) -> dict:
    return {
        video.video_id: {
            "duration": video.duration,
            "timestamps": [[event.start, event.end] for event in video.events],
            "sentences": [event.sentence for event in video.events],
        }
        for video in videos
    }


def _stage2_records(videos: list[SyntheticVideo], config: SyntheticMomentsConfig, rng: np.random.Generator) -> list:
    """VTimeLLM stage-2 records: a `dense_captioning_share` of single-turn dense captioning, the rest multi-turn."""
    slots = [video for video in videos for _ in range(config.stage2_dialogues_per_video)]
    num_dense = round(config.dense_captioning_share * len(slots))
    dense_slots = set(rng.permutation(len(slots))[:num_dense].tolist())
    records = []
    for slot, video in enumerate(slots):
        if slot in dense_slots:
            answer = " ".join(
                f"From <s{index}> to <e{index}>, {event.caption}." for index, event in enumerate(video.events)
            )
            turns = [(_pick(DENSE_CAPTIONING_TEMPLATES, rng), answer)]
        else:
            # One turn per event, in random order, each either event captioning or grounding.
            turns = []
            for index in rng.permutation(len(video.events)).tolist():
                event = video.events[index]
                start, end = f"<s{index}>", f"<e{index}>"
                if rng.uniform() < 0.5:
                    question = _pick(EVENT_CAPTIONING_TEMPLATES, rng).format(start=start, end=end)
                    turns.append((question, event.sentence))
                else:
                    question = _pick(GROUNDING_TEMPLATES, rng).format(event=event.caption)
                    turns.append((question, f"From {start} to {end}."))
        records.append(_dialogue_record(video, turns))
    return records


def _stage3_records(videos: list[SyntheticVideo], config: SyntheticMomentsConfig, rng: np.random.Generator) -> list:
    """
    VTimeLLM stage-3 style dialogues: an optional count of the shapes, then grounding (asked as stage 2 asks it, or
    as a dialogue does; `config.stage3_grounding_shares`) or captioning of each event, then order and overlap
    questions when the video has several events.
    """
    records = []
    for video in videos:
        for _ in range(config.stage3_dialogues_per_video):
            events = video.events
            turns = []
            if rng.uniform() < 0.5:
                count = _NUMBER_WORDS[len(events)]
                listing = _join_english([event.noun_phrase for event in events])
                answer = f"{_capitalize(count)} shape{'s' if len(events) > 1 else ''} "
                answer += f"{'appear' if len(events) > 1 else 'appears'}: {listing}."
                turns.append((_pick(COUNTING_TEMPLATES, rng), answer))
            body = []
            for index in rng.permutation(len(events)).tolist():
                event = events[index]
                start, end = f"<s{index}>", f"<e{index}>"
                sentence_share, dialogue_share = config.stage3_grounding_shares
                draw = rng.uniform()
                if draw < sentence_share:
                    # As VTimeLLM's stage-3 dialogues ground ActivityNet and DiDeMo sentences
                    question = _pick(GROUNDING_TEMPLATES, rng).format(event=event.caption)
                    answer = f"From {start} to {end}."
                elif draw < sentence_share + dialogue_share:
                    thing = event.definite_noun_phrase
                    question = _pick(DIALOGUE_GROUNDING_TEMPLATES, rng).format(thing=thing)
                    answer = _pick(DIALOGUE_GROUNDING_ANSWERS, rng).format(
                        thing=thing, Thing=_capitalize(thing), start=start, end=end
                    )
                else:
                    question = _pick(DIALOGUE_CAPTIONING_TEMPLATES, rng).format(start=start, end=end)
                    answer = event.sentence
                body.append((question, answer))
            if len(events) > 1:
                if rng.uniform() < 0.5:
                    body.append((_pick(FIRST_EVENT_TEMPLATES, rng), _order_answer(events, 0, "first")))
                else:
                    body.append((_pick(LAST_EVENT_TEMPLATES, rng), _order_answer(events, len(events) - 1, "last")))
                first_index, second_index = sorted(rng.choice(len(events), size=2, replace=False).tolist())
                body.append(_overlap_turn(events, first_index, second_index, rng))
            turns.extend(body[index] for index in rng.permutation(len(body)).tolist())
            records.append(_dialogue_record(video, turns))
    return records


def _order_answer(events: tuple[SyntheticEvent, ...], index: int, position: str) -> str:
    thing = _capitalize(events[index].definite_noun_phrase)
    return f"{thing} appears {position}, from <s{index}> to <e{index}>."


def _overlap_turn(
    events: tuple[SyntheticEvent, ...], first_index: int, second_index: int, rng: np.random.Generator
) -> tuple[str, str]:
    """A question on whether two events share screen time; events are in start order, so `first` starts first."""
    first, second = events[first_index], events[second_index]
    question = _pick(OVERLAP_TEMPLATES, rng).format(
        first=first.definite_noun_phrase, second=second.definite_noun_phrase
    )
    if second.start_bin < first.end_bin:
        shared_end = f"<e{first_index}>" if first.end_bin < second.end_bin else f"<e{second_index}>"
        answer = f"Yes, both are visible from <s{second_index}> to {shared_end}."
    else:
        answer = (
            f"No. {_capitalize(first.definite_noun_phrase)} disappears at <e{first_index}>, "
            f"before {second.definite_noun_phrase} appears at <s{second_index}>."
        )
    return question, answer


def _dialogue_record(video: SyntheticVideo, turns: list[tuple[str, str]]) -> dict:
    """A stage-2/3 record: the first question starts with `<video>\\n`, as in VTimeLLM."""
    conversations = []
    for index, (question, answer) in enumerate(turns):
        conversations.append({"from": "human", "value": ("<video>\n" if index == 0 else "") + question})
        conversations.append({"from": "gpt", "value": answer})
    return {
        "source": SOURCE_NAME,
        "id": video.video_id,
        "conversations": conversations,
        "meta": {"duration": video.duration, "token": video.placeholder_seconds},
    }


# Small helpers.


def _indefinite_noun_phrase(colour: str, shape: str) -> str:
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape}"


def _pick(templates: tuple[str, ...], rng: np.random.Generator) -> str:
    return templates[int(rng.integers(len(templates)))]


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _join_english(items: list[str]) -> str:
    """`["a", "b", "c"]` -> `"a, b and c"`."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _write_json(path: Path, content) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")


def add_subcommand(subparsers) -> None:
    """`vtimellm-hf synth OUTPUT_DIR`: writes the synthetic moments dataset."""
    parser = subparsers.add_parser("synth", help="write the synthetic moments dataset (videos, annotations, records)")
    parser.add_argument("output_dir", help="folder to write into")
    parser.add_argument("--num-videos", type=int, default=64, help="videos in all, held-out ones included")
    parser.add_argument("--num-val-videos", type=int, default=16, help="held-out videos")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier dataset in OUTPUT_DIR")
    parser.set_defaults(run=_run_subcommand)


def _run_subcommand(args) -> int:
    dataset = generate_synthetic_moments(
        args.output_dir,
        num_videos=args.num_videos,
        num_val_videos=args.num_val_videos,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(
        f"{len(dataset.train_video_ids)} training and {len(dataset.val_video_ids)} held-out videos, "
        f"{dataset.num_stage1_records} stage-1, {dataset.num_stage2_records} stage-2 and "
        f"{dataset.num_stage3_records} stage-3 records in {dataset.root}"
    )
    return 0


__all__ = [
    "COLOURS",
    "EMPTY_STILL_CAPTION",
    "SHAPES",
    "SyntheticDataset",
    "SyntheticEvent",
    "SyntheticMomentsConfig",
    "SyntheticVideo",
    "encode_mp4",
    "generate_synthetic_moments",
]
