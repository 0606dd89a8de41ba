"""Inference with VTimeLLM: ground a query, caption a video, chat about it, and answer in batches.

From the command line (registered by [`add_subcommand`]):

    vtimellm-hf ground VIDEO "the man cracks an egg" --model CHECKPOINT [--window S E] [--plot out.png] [--verbose]
    vtimellm-hf caption VIDEO --model CHECKPOINT [--plot out.png]
    vtimellm-hf chat VIDEO --model CHECKPOINT

`--verbose` after `ground` or `caption` prints the model's raw answer; `-v` before the command
(`vtimellm-hf -v ground ...`) shows log messages instead (see [`vtimellm_hf.cli`]).

Answers name moments as two-digit indices into the 100 sampled frames. Grounding answers become seconds by the
original grounding convention (start = s/100, end = e/100 of the duration), dense captions by the captioning one
(end = (e + 1)/100 of the duration); see [`indices_to_seconds`].

Speed: every video is decoded and encoded once, whatever the number of questions about it, and questions are
answered in batches. When a batch holds several questions about one video, the prompt start they share (system
prompt and video rows, most of the prompt) runs once per video and its KV cache serves all of them.

The evaluations over a benchmark (`evaluate_grounding`, `evaluate_captioning` and their loaders) live in
[`vtimellm_hf.evaluation_runs`]; their names here are deprecated aliases.
"""

import argparse
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from pathlib import Path
from typing import Any

import torch

from ._deprecated import moved_names
from .checkpoints import DTYPES, load_model_and_processor
from .cli import NO_ANSWER, finite_float, positive_int, reports_errors
from .model import (
    CAPTIONING,
    GROUNDING,
    VTimeProcessor,
    get_video_duration,
    indices_to_seconds,
    parse_event_indices,
    parse_grounding_answer,
    parse_moments,
)

__all__ = [
    "CAPTIONING_QUESTION",
    "GROUNDING_QUESTION",
    "Moment",
    "add_generation_arguments",
    "add_question_argument",
    "add_trust_remote_code_argument",
    "add_subcommand",
    "caption",
    "caption_events",
    "generate_answers",
    "generation_kwargs_from_args",
    "ground",
    "grounding_question",
    "load_model_and_processor",
    "merge_repeated_events",
    "user_turn",
]

logger = logging.getLogger(__name__)

# The grounding question of the original evaluation
GROUNDING_QUESTION = "During which frames can we see {query}?"
# The dense-captioning question of the original evaluation, which asks for JSON. The original prompt is
# "<video>\n " + question: the leading space is kept, so that the tokens are those the released model was scored on.
CAPTIONING_QUESTION = (
    " Could you please describe the events in the video in detail? Be specific about the activities of individuals, "
    "their surroundings, and interactions with others. The output should be in JSON format, structured as follows: "
    '{"event": "xx", "timestamps": "from xx to xx"}.'
)
# Tokens generated per answer unless told otherwise: a grounding answer ("From 05 to 23.") takes about a dozen, a
# dense description of a few minutes of video a few hundred. Batched generation runs until its longest answer ends,
# so the bound also caps what one runaway answer costs its batch.
GROUNDING_MAX_NEW_TOKENS = 64
CAPTIONING_MAX_NEW_TOKENS = 512
# The evaluations moved to `vtimellm_hf.evaluation_runs`; their old names here still work, with a warning
__getattr__ = moved_names(__name__, {
    **{name: f"vtimellm_hf.evaluation_runs:{name}"
       for name in ("FeatureLoader", "captioning_answers_file", "evaluate_captioning", "evaluate_grounding",
                    "feature_store_loader", "keyed", "read_finished_keys", "read_jsonl_records",
                    "video_folder_loader")},
    "find_video": "vtimellm_hf.data.media:find_video",
})  # fmt: skip


@dataclass(frozen=True)
class Moment:
    """A grounded moment in seconds (`None` when the answer did not parse) and the raw answer."""

    start: float | None
    end: float | None
    answer: str


def grounding_question(query: str, question: str = GROUNDING_QUESTION) -> str:
    """
    `question` about `query`, the query put as the original evaluation puts it: stripped, lower-cased, without a
    final full stop (annotations write sentences, "Person turns a light on.", the question wants a phrase).
    """
    query = query.strip().lower()
    return question.format(query=query.removesuffix("."))


def user_turn(question: str, with_video: bool = True) -> dict:
    """A user message; the first one of a conversation carries the video, ahead of the question as in training."""
    content = [{"type": "video"}] if with_video else []
    return {"role": "user", "content": [*content, {"type": "text", "text": question}]}


def assistant_turn(answer: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": answer}]}


@torch.no_grad()
def generate_answers(
    model,
    processor: VTimeProcessor,
    conversations: Sequence[list[dict]],
    features: Sequence[torch.Tensor],
    batch_size: int = 8,
    sanitize_control_tokens: bool = True,
    **generation_kwargs,
) -> list[str]:
    """
    Answers to conversations (the last turn a user's), each about one video given by its features
    `(rows, mm_hidden_size)` on the CPU, generated `batch_size` at a time. Greedy unless `generation_kwargs` (those of
    `generate`) say otherwise; at most 64 new tokens unless `max_new_tokens` says otherwise.

    The text of the turns is the user's, not the prompt's: with `sanitize_control_tokens` (the default; transformers'
    `apply_chat_template(..., sanitize_control_tokens=True)`), a `</s>`, `<s>` or `<video>` written in a question or
    an answer is tokenized as those characters, not as the token, so that it neither ends a turn nor asks for a
    second video. Text without such tokens gets the same ids either way.

    Prompts are left-padded, with position ids that skip the padding, so that a prompt's answer does not depend on
    the batch it was in. Where several conversations of a batch share one features tensor (the same object: several
    questions about one video) and their prompts share everything up to the video rows, that prompt start runs
    once per video and its KV cache is copied to each conversation, which then pads between that start and the rest
    of its prompt. The prompt start is the system prompt and the video rows, most of a grounding prompt.
    """
    if len(conversations) != len(features):
        raise ValueError(
            f"Got {len(conversations)} conversations but {len(features)} features; pass one per conversation."
        )
    generation_kwargs = {"max_new_tokens": GROUNDING_MAX_NEW_TOKENS, "do_sample": False, **generation_kwargs}
    answers = []
    for start in range(0, len(conversations), batch_size):
        batch_features = list(features[start : start + batch_size])
        # Unpadded ids: the padding depends on whether the prompt start is shared, decided below
        encoded = processor.apply_chat_template(
            list(conversations[start : start + batch_size]), add_generation_prompt=True, tokenize=True,
            return_dict=True, sanitize_control_tokens=sanitize_control_tokens,
            processor_kwargs={"video_features": batch_features, "padding": False},
        )  # fmt: skip
        rows = encoded["input_ids"]
        rows_features = [torch.as_tensor(feature) for feature in encoded["video_features"]]
        first_rows, video_of_row = _distinct_videos(batch_features)
        shared_length = 0
        if len(first_rows) < len(rows) and _can_reuse_a_cache(model, generation_kwargs):
            shared_length = _shared_prefix_length(rows, processor.video_token_id)
        input_ids, attention_mask, position_ids = _pad(rows, processor.tokenizer.pad_token_id, shared_length)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        inputs = {name: tensor.to(model.device) for name, tensor in inputs.items()}
        if shared_length:
            videos = torch.stack([rows_features[row] for row in first_rows])
            inputs["cache"] = _prefix_cache(model, input_ids[:1, :shared_length], videos, video_of_row)
        else:
            inputs["video_features"] = torch.stack(rows_features).to(model.device)
        output = model.generate(**inputs, **generation_kwargs)
        answers += processor.batch_decode(output[:, input_ids.shape[1] :], skip_special_tokens=True)
    return [answer.strip() for answer in answers]


def _distinct_videos(features: Sequence) -> tuple[list[int], list[int]]:
    """
    The videos of a batch, told apart by the identity of their features (a loader returns one object per video):
    the first row of each video, and the video of each row.
    """
    index_of: dict[int, int] = {}
    first_rows, video_of_row = [], []
    for row, feature in enumerate(features):
        if id(feature) not in index_of:
            index_of[id(feature)] = len(first_rows)
            first_rows.append(row)
        video_of_row.append(index_of[id(feature)])
    return first_rows, video_of_row


def _can_reuse_a_cache(model, generation_kwargs: Mapping[str, Any]) -> bool:
    """Whether `model.generate` can start from a KV cache made here: beam search widens the batch inside `generate`,
    where a given cache does not follow."""
    num_beams = generation_kwargs.get("num_beams") or getattr(model.generation_config, "num_beams", 1) or 1
    return num_beams == 1


def _shared_prefix_length(rows: Sequence[list[int]], video_token_id: int) -> int:
    """Length of the prompt start, up to the last video row, that all rows share; 0 when they share none."""
    first = rows[0]
    if video_token_id not in first:
        return 0
    length = len(first) - first[::-1].index(video_token_id)
    return length if all(row[:length] == first[:length] for row in rows) else 0


def _pad(rows: Sequence[list[int]], pad_token_id: int, shared_length: int = 0):
    """
    `(input_ids, attention_mask, position_ids)` of prompts padded to one length: each row is its first
    `shared_length` ids, padding, then the rest of it (plain left padding when `shared_length` is 0). Position ids
    count real tokens only, so every prompt sees the positions it would see alone.
    """
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for index, row in enumerate(rows):
        rest = len(row) - shared_length
        input_ids[index, :shared_length] = torch.tensor(row[:shared_length], dtype=torch.long)
        input_ids[index, width - rest :] = torch.tensor(row[shared_length:], dtype=torch.long)
        attention_mask[index, :shared_length] = 1
        attention_mask[index, width - rest :] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


def _prefix_cache(model, prefix_ids: torch.Tensor, videos: torch.Tensor, video_of_row: Sequence[int]):
    """
    The KV cache of the shared prompt start `prefix_ids` `(1, length)`, computed once for each video of `videos`
    `(num_videos, rows, D)` and copied to the rows of each video.
    """
    output = model(
        input_ids=prefix_ids.to(model.device).expand(len(videos), -1),
        video_features=videos.to(model.device),
        use_cache=True,
        # Only the cache is wanted: the LM head runs on one position instead of the whole prefix
        logits_to_keep=1,
    )
    cache = output.cache
    cache.batch_select_indices(torch.tensor(video_of_row, device=model.device))
    return cache


def ground(
    model,
    processor,
    video,
    query: str,
    question: str = GROUNDING_QUESTION,
    window: Sequence[float] | None = None,
    **generation_kwargs,
) -> Moment:
    """
    The moment of `query` in `video` (a path), in seconds of the video by the original grounding convention. With
    `window` (`(start_s, end_s)`), only that part of the video is shown to the model and the moment is placed inside
    it.
    """
    features, duration = processor.encode_video(video, window)
    answer = generate_answers(
        model, processor, [[user_turn(grounding_question(query, question))]], [features], **generation_kwargs
    )[0]
    moment = parse_grounding_answer(answer, duration, processor.num_frames)
    if moment is None:
        return Moment(None, None, answer)
    offset = window[0] if window is not None else 0.0
    return Moment(moment[0] + offset, moment[1] + offset, answer)


def caption(model, processor, video, question: str = CAPTIONING_QUESTION, **generation_kwargs):
    """Dense captions of `video`: `(events [(start, end, sentence)] in seconds, raw answer)`."""
    features, duration = processor.encode_video(video)
    generation_kwargs = {"max_new_tokens": CAPTIONING_MAX_NEW_TOKENS, **generation_kwargs}
    answer = generate_answers(model, processor, [[user_turn(question)]], [features], **generation_kwargs)[0]
    return caption_events(answer, duration, processor.num_frames), answer


def merge_repeated_events(events: Sequence[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """
    `(start_index, end_index, sentence)` events with each run of one caption over touching moments made one event,
    as the original's captioning evaluation merges them before scoring: an event starts within one index of the
    previous one's end and its caption is nearly the same (difflib ratio above 0.98); the first caption is kept.
    """
    merged: list[tuple[int, int, str]] = []
    for start, end, sentence in events:
        if merged:
            run_start, run_end, run_sentence = merged[-1]
            if -1 <= start - run_end <= 1 and SequenceMatcher(None, run_sentence, sentence).ratio() > 0.98:
                merged[-1] = (run_start, end, run_sentence)
                continue
        merged.append((start, end, sentence))
    return merged


def caption_events(answer: str, duration: float, num_frames: int = 100) -> list[tuple[float, float, str]]:
    """The events of a dense-captioning answer, repeats merged ([`merge_repeated_events`]), in seconds by the
    captioning convention."""
    return [
        (*indices_to_seconds(start, end, duration, CAPTIONING, num_frames), sentence)
        for start, end, sentence in merge_repeated_events(parse_event_indices(answer))
    ]


# Command line

# The subcommand's own --verbose; `vtimellm-hf -v` (before the command) is the log level, see `vtimellm_hf.cli`
_VERBOSE_HELP = "also print the model's raw answer (the log messages: `vtimellm-hf -v COMMAND`)"


def add_generation_arguments(parser: argparse.ArgumentParser, max_new_tokens: int) -> None:
    """The model and generation options shared by every command that generates."""
    group = parser.add_argument_group("model and generation")
    group.add_argument("--model", required=True, metavar="NAME_OR_PATH", help="VTimeLLM checkpoint: a folder or Hub id")
    add_trust_remote_code_argument(group)
    group.add_argument("--device", default=None, help="device of the model (default: cuda if available, else cpu)")
    group.add_argument(
        "--dtype", choices=("auto", *DTYPES), default="auto",
        help="model dtype (default: %(default)s, the checkpoint's)",
    )  # fmt: skip
    group.add_argument(
        "--max-new-tokens", type=positive_int, default=max_new_tokens, help="tokens per answer (default: %(default)s)"
    )
    group.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    group.add_argument("--temperature", type=float, default=None, help="with --do-sample (the original: 0.05)")
    group.add_argument("--top-p", type=float, default=None, help="with --do-sample: nucleus sampling mass")


def add_trust_remote_code_argument(parser) -> None:
    """`--trust-remote-code`: what a `--model` of another type than VTimeLLM's needs to run the code it carries."""
    parser.add_argument(
        "--trust-remote-code", action="store_true",
        help="run the code a --model of another type than VTimeLLM's carries (a VTimeLLM checkpoint is loaded with "
        "this package's classes, its code files never run)",
    )  # fmt: skip


def add_question_argument(parser: argparse.ArgumentParser, task: str) -> None:
    """`--question`, the original's question by default: for `task` [`GROUNDING`], a template that must hold
    `{query}`; for [`CAPTIONING`], the question itself."""
    if task == GROUNDING:
        parser.add_argument("--question", type=_query_template, default=GROUNDING_QUESTION,
                            help="question template with {query} (default: %(default)r)")  # fmt: skip
    else:
        parser.add_argument(
            "--question", default=CAPTIONING_QUESTION, help="the question asked (default: the original's)"
        )


def _query_template(text: str) -> str:
    if "{query}" not in text:
        raise argparse.ArgumentTypeError(f"must hold {{query}}, got {text!r}")
    try:
        text.format(query="")
    except (KeyError, IndexError, ValueError) as error:
        raise argparse.ArgumentTypeError(
            f"{{query}} is its only field (write other braces twice: {{{{ }}}}), got {text!r} ({error!r})"
        ) from None
    return text


def generation_kwargs_from_args(args: argparse.Namespace) -> dict:
    """`generate` keyword arguments from [`add_generation_arguments`] options; unset ones keep generate's defaults."""
    kwargs = {"max_new_tokens": args.max_new_tokens, "do_sample": args.do_sample}
    if args.do_sample:
        kwargs.update({name: value for name in ("temperature", "top_p") if (value := getattr(args, name)) is not None})
    elif args.temperature is not None or args.top_p is not None:
        raise ValueError("--temperature and --top-p apply to sampling; add --do-sample.")
    return kwargs


def add_subcommand(subparsers) -> None:
    """Registers `ground`, `caption` and `chat` on an argparse `subparsers` object (each sets `run(args) -> status`)."""
    parser = subparsers.add_parser(
        "ground",
        help="find when something happens in a video",
        description="Print the moment of QUERY in VIDEO in seconds.",
    )
    parser.add_argument("video", metavar="VIDEO", help="video file")
    parser.add_argument("query", metavar="QUERY", help='what to find, e.g. "the man cracks an egg"')
    parser.add_argument(
        "--window", nargs=2, type=finite_float, metavar=("START", "END"),
        help="look only at this part of the video (seconds)",
    )
    add_question_argument(parser, GROUNDING)
    parser.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)
    parser.add_argument("--plot", metavar="PNG", help="draw the moment on the video's timeline into this file")
    add_generation_arguments(parser, GROUNDING_MAX_NEW_TOKENS)
    parser.set_defaults(run=_run_ground)

    parser = subparsers.add_parser(
        "caption", help="describe the events of a video with their times", description="Dense captions of VIDEO."
    )
    parser.add_argument("video", metavar="VIDEO", help="video file")
    add_question_argument(parser, CAPTIONING)
    parser.add_argument("--verbose", action="store_true", help=_VERBOSE_HELP)
    parser.add_argument("--plot", metavar="PNG", help="draw the events on the video's timeline into this file")
    add_generation_arguments(parser, CAPTIONING_MAX_NEW_TOKENS)
    parser.set_defaults(run=_run_caption)

    parser = subparsers.add_parser(
        "chat",
        help="talk about a video in the terminal",
        description="Multi-turn chat about VIDEO: one question a line on stdin, until end of input or 'exit'. "
        "Frame indices in the answers are also given in seconds.",
    )
    parser.add_argument("video", metavar="VIDEO", help="video file")
    add_generation_arguments(parser, CAPTIONING_MAX_NEW_TOKENS)
    parser.set_defaults(run=_run_chat)


@reports_errors("ground")
def _run_ground(args: argparse.Namespace) -> int:
    kwargs = generation_kwargs_from_args(args)
    model, processor = load_model_and_processor(args.model, args.device, args.dtype, args.trust_remote_code)
    moment = ground(model, processor, args.video, args.query, args.question, args.window, **kwargs)
    if args.verbose or moment.start is None:
        print(f"answer: {moment.answer}")
    if moment.start is None:
        print("ground: the answer names no moment", file=sys.stderr)
        return NO_ANSWER
    print(f"{moment.start:.2f} s - {moment.end:.2f} s")
    _plot(args, [(args.query, moment.start, moment.end)])
    return 0


@reports_errors("caption")
def _run_caption(args: argparse.Namespace) -> int:
    kwargs = generation_kwargs_from_args(args)
    model, processor = load_model_and_processor(args.model, args.device, args.dtype, args.trust_remote_code)
    events, answer = caption(model, processor, args.video, args.question, **kwargs)
    if args.verbose or not events:
        print(f"answer: {answer}")
    if not events:
        print("caption: the answer names no event", file=sys.stderr)
        return NO_ANSWER
    for start, end, sentence in events:
        print(f"{start:7.2f} s - {end:7.2f} s  {sentence}")
    _plot(args, [(sentence, start, end) for start, end, sentence in events])
    return 0


def _plot(args: argparse.Namespace, moments: Sequence[tuple[str, float, float]]) -> None:
    """With `--plot`, draws `(label, start, end)` moments, one row each, on the timeline of `args.video`."""
    if not args.plot:
        return
    from .plotting import TimelineRow, plot_timeline

    duration = get_video_duration(args.video)
    rows = [TimelineRow(label, duration, [(start, end)]) for label, start, end in moments]
    print(f"timeline: {plot_timeline(rows, args.plot, title=Path(args.video).name)}", file=sys.stderr)


@reports_errors("chat")
def _run_chat(args: argparse.Namespace) -> int:
    kwargs = generation_kwargs_from_args(args)
    model, processor = load_model_and_processor(args.model, args.device, args.dtype, args.trust_remote_code)
    features, duration = processor.encode_video(args.video)
    interactive = sys.stdin.isatty()
    print(
        f"{Path(args.video).name}: {duration:.1f} s. Ask about it; 'exit' or end of input (Ctrl-D) ends.",
        file=sys.stderr,
    )
    conversation: list[dict] = []
    while True:
        if interactive:
            print("> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line or line.strip().lower() == "exit":
            return 0
        question = line.strip()
        if not question:
            continue
        # The video goes with the first question only; the conversation so far is the context of the next answer
        conversation.append(user_turn(question, with_video=not conversation))
        answer = generate_answers(model, processor, [conversation], [features], **kwargs)[0]
        conversation.append(assistant_turn(answer))
        moments = parse_moments(answer, duration, GROUNDING, processor.num_frames)
        seconds = f"  [{', '.join(f'{start:.1f}-{end:.1f} s' for start, end in moments)}]" if moments else ""
        print(f"{answer}{seconds}", flush=True)

