"""`vtimellm-hf app --model DIR`: a web page to try a checkpoint on a video (the `[app]` extra: gradio).

Upload a video, or pick one of `--examples`, and describe an event: the model answers, the moment is drawn on a
timeline under the player and the player jumps to its start. "Describe the events" asks for a dense description
and lists its events on the timeline. Each request runs the model once: a video is decoded and encoded when it is
uploaded, and its features are kept for the questions that follow (the last `FEATURES_KEPT` videos). Requests run
one at a time, in the order they come: other users wait in gradio's queue and see their place in it. A file that
is not a video this package can decode is refused with a message naming it.

It runs on a CPU, and never reaches the network: gradio's analytics are off, and the page, its scripts and its
fonts are served by the app itself. It listens on 127.0.0.1 unless `--host` says otherwise.
"""

import argparse
import html
import logging
import os
import sys
from collections import OrderedDict
from pathlib import Path

from . import parse_grounding_answer
from .checkpoints import load_model_and_processor
from .data.media import VIDEO_EXTENSIONS
from .inference import (
    CAPTIONING_MAX_NEW_TOKENS,
    CAPTIONING_QUESTION,
    add_trust_remote_code_argument,
    caption_events,
    generate_answers,
    grounding_question,
    user_turn,
)

__all__ = ["FEATURES_KEPT", "add_subcommand", "build_app", "timeline_html"]

logger = logging.getLogger(__name__)

FEATURES_KEPT = 8
_COLOURS = ("#e76f51", "#2a9d8f", "#e9c46a", "#8e7dbe", "#f4a261", "#457b9d")


def timeline_html(duration: float | None, moments=()) -> str:
    """
    The timeline under the player: a bar over `duration` seconds with each `(start, end, label)` moment in `moments`
    drawn on it (`.vtime-moment`, its times in `data-start` and `data-end`) and listed below it. Plain HTML with
    inline styles, so that nothing is fetched.
    """
    if not duration:
        return '<div class="vtime-timeline"><em>Upload or pick a video.</em></div>'
    spans, items = [], []
    for number, (start, end, label) in enumerate(moments):
        colour = _COLOURS[number % len(_COLOURS)]
        left, width = 100 * start / duration, max(100 * (end - start) / duration, 0.5)
        text = html.escape(f"{start:.1f} s - {end:.1f} s: {label}")
        spans.append(
            f'<div class="vtime-moment" data-start="{start!r}" data-end="{end!r}" title="{text}" style="position:'
            f"absolute;top:0;bottom:0;left:{left:.3f}%;width:{width:.3f}%;background:{colour};opacity:0.85;"
            'border-radius:3px"></div>'
        )
        items.append(f'<li><span style="color:{colour}">&#9632;</span> {text}</li>')
    return (
        '<div class="vtime-timeline">'
        '<div style="position:relative;height:22px;background:#e5e7eb;border-radius:4px">' + "".join(spans) + "</div>"
        '<div style="display:flex;justify-content:space-between;font-size:12px;color:#6b7280">'
        f"<span>0 s</span><span>{duration:.1f} s</span></div>"
        f'<ul style="list-style:none;padding:0;margin:4px 0;font-size:14px">{"".join(items)}</ul></div>'
    )


def build_app(model, processor, examples=()):
    """The gradio page of `model` (see the module docstring), queued one request at a time; `examples` are video
    paths offered for picking."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read by gradio's own pages as well as by this one
    import gradio as gr

    features_of_video: OrderedDict[str, tuple] = OrderedDict()

    def features_and_duration(video: str | None) -> tuple:
        """`(features, duration)` of an uploaded video, kept for the questions that follow."""
        if not video:
            raise gr.Error("Upload or pick a video first.")
        if video not in features_of_video:
            try:
                features_of_video[video] = processor.encode_video(video)
            except (OSError, ValueError) as error:
                logger.warning("refused %s: %s", video, error)
                message = f"{Path(video).name} is not a video this app can read; upload a video (.mp4, .webm, ...)."
                raise gr.Error(html.escape(message), title="Not a video") from None
            if len(features_of_video) > FEATURES_KEPT:
                features_of_video.popitem(last=False)
        features_of_video.move_to_end(video)
        return features_of_video[video]

    def show_video(video):
        return timeline_html(features_and_duration(video)[1] if video else None), ""

    def find_moment(video, query):
        if not query.strip():
            raise gr.Error("Describe the event to find, for instance: a person turns a light on.")
        features, duration = features_and_duration(video)
        answer = generate_answers(model, processor, [[user_turn(grounding_question(query))]], [features])[0]
        moment = parse_grounding_answer(answer, duration, processor.num_frames)
        if moment is None:
            return f"{answer}\n(no moment in this answer)", timeline_html(duration), gr.update()
        start, end = moment
        text = f"{answer}\n{start:.1f} s - {end:.1f} s"
        return text, timeline_html(duration, [(start, end, query)]), gr.update(playback_position=start)

    def describe(video):
        features, duration = features_and_duration(video)
        conversation = [user_turn(CAPTIONING_QUESTION)]
        answer = generate_answers(
            model, processor, [conversation], [features], max_new_tokens=CAPTIONING_MAX_NEW_TOKENS
        )[0]
        events = caption_events(answer, duration, processor.num_frames)
        if not events:
            return f"{answer}\n(no event in this answer)", timeline_html(duration), gr.update()
        return answer, timeline_html(duration, events), gr.update(playback_position=events[0][0])

    with gr.Blocks(title="VTimeLLM", analytics_enabled=False) as app:
        gr.Markdown("# VTimeLLM\nUpload a video, then describe an event to find, or ask for its events.")
        with gr.Row():
            with gr.Column(scale=3):
                video = gr.Video(label="Video", sources=["upload"], elem_id="video")
                timeline = gr.HTML(timeline_html(None), elem_id="timeline")
            with gr.Column(scale=2):
                query = gr.Textbox(label="Event to find", placeholder="a person turns a light on", elem_id="query")
                find = gr.Button("Find the moment", variant="primary", elem_id="find")
                caption = gr.Button("Describe the events", elem_id="describe")
                answer = gr.Textbox(label="Answer", lines=4, interactive=False, elem_id="answer")
        if examples:
            gr.Examples([[str(path)] for path in examples], inputs=[video], label="Or pick a video")
        # One queue for every use of the model: whatever users ask, one request runs at a time
        video.change(show_video, [video], [timeline, answer], concurrency_id="model")
        asked = [answer, timeline, video]
        gr.on([find.click, query.submit], find_moment, [video, query], asked, concurrency_id="model")
        caption.click(describe, [video], asked, concurrency_id="model")
    return app.queue(default_concurrency_limit=1)


def add_subcommand(subparsers) -> None:
    """Registers `app` on an argparse `subparsers` object (it sets `run(args) -> status`)."""
    parser = subparsers.add_parser(
        "app",
        help="try a model in the browser",
        description="Serve a web page to upload a video, find moments in it and list its events "
        "(needs `pip install vtimellm-hf[app]`).",
    )
    parser.add_argument("--model", required=True, metavar="NAME_OR_PATH", help="VTimeLLM checkpoint: folder or Hub id")
    parser.add_argument("--examples", nargs="+", default=[], metavar="PATH",
                        help="videos, or folders of videos, offered for picking")  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default: %(default)s)")
    parser.add_argument("--device", default=None, help="device of the model (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default="auto", help="model dtype (default: %(default)s, the checkpoint's)")
    add_trust_remote_code_argument(parser)
    parser.set_defaults(run=_run_app)


def _run_app(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        print("app: error: the web page needs gradio: pip install 'vtimellm-hf[app]'", file=sys.stderr)
        return 2
    try:
        examples = _example_videos(args.examples)
        model, processor = load_model_and_processor(args.model, args.device, args.dtype, args.trust_remote_code)
    except (OSError, ValueError) as error:
        print(f"app: error: {error}", file=sys.stderr)
        return 2
    app = build_app(model, processor, examples)
    app.launch(server_name=args.host, server_port=args.port, allowed_paths=[str(path.parent) for path in examples])
    return 0


def _example_videos(paths) -> list[Path]:
    """The videos of `--examples`: files as given, folders by their video files (sorted)."""
    videos = []
    for path in map(Path, paths):
        if path.is_dir():
            videos += sorted(file for file in path.iterdir() if file.suffix.lower() in VIDEO_EXTENSIONS)
        elif path.is_file():
            videos.append(path)
        else:
            raise FileNotFoundError(f"--examples: {path} is neither a video nor a folder")
    return videos
