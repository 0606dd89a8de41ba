"""Publishing VTimeLLM checkpoints: a clean-room load check, and the upload.

- [`check_remote_loading`]: loads a folder in a fresh interpreter where `vtimellm_hf` cannot be imported, as a Hub
  user would, and runs one forward pass.
- [`push_folder`] (`vtimellm-hf push`): checks the folder that way, refuses one whose settings name paths of this
  machine or that links out of itself ([`check_publishable`]), then `create_repo` + `upload_folder` of exactly the
  files [`list_upload_files`] lists (no training leftovers, secrets or logs unless named). The training recipes call
  it at the end of training.

The conversion of the original release (`convert-original`) is [`vtimellm_hf.conversion`]; reading and writing
checkpoint files is [`vtimellm_hf.checkpoints`].
"""

import argparse
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ._deprecated import moved_names
from .checkpoints import ADAPTER_SUBFOLDER
from .cli import USAGE_ERRORS, reports_errors
from .files import read_json
from .model_card import render_model_card

# Training leftovers that do not belong in a model repository; `training_args.bin` is a pickle of arbitrary objects
DEFAULT_IGNORE_PATTERNS = [
    "training_args.bin",
    "trainer_state.json",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state*.pth",
    "checkpoint-*",
    "runs/*",
    "*__pycache__*",
    "*.pyc",
]
# Secrets and logs, never uploaded unless `include` names them: credentials, keys, experiment trackers' folders
SECRET_PATTERNS = [
    *[prefix + name for prefix in ("", "*/") for name in
      (".env", ".env.*", ".netrc", ".git-credentials", "id_rsa*", "id_ed25519*", ".ssh/*", ".aws/*", ".huggingface/*",
       "wandb/*", "mlruns/*", "logs/*")],
    "*.env", "*.pem", "*.key", "*.p12", "*credentials*", "*secret*", "*.log", "*events.out.tfevents*",
]  # fmt: skip
# A string value of a JSON file that can only name a file of this machine: an absolute or home path, or a relative one
_LOCAL_PATH = re.compile(r"^(?:/|~|\.{1,2}[/\\]|[A-Za-z]:[/\\]|\\\\)")

class PushError(RuntimeError):
    """A push that did not happen; the message says why and what to do."""


class NoTokenError(PushError):
    """No Hugging Face token was found."""


class OfflineModeError(PushError):
    """`HF_HUB_OFFLINE` is set, so the Hub cannot be reached."""


class HubConnectionError(PushError):
    """The Hub could not be reached (no network, DNS, proxy, timeout)."""


class HubRequestError(PushError):
    """The Hub answered with an error (rejected token, no write access, ...)."""


class FolderNotLoadableError(PushError):
    """The folder does not load with `trust_remote_code=True` where `vtimellm_hf` is absent."""


class UnpublishableFolderError(PushError):
    """The folder holds what must not go to the Hub: a machine-local path in its settings, a link leading out of it."""


@dataclass
class LoadCheck:
    """
    The outcome of [`check_remote_loading`].

    Attributes:
        ok: whether config, model (and adapter), processor and one forward pass all worked.
        stage: what failed: "layout", "import", "config", "model", "adapter", "processor", "forward" or "timeout".
        error: why.
        classes: the classes built (all from the folder's code when `ok`).
        video_features: the features of the forward pass, `(1, num_frames, mm_hidden_size)`.
        input_ids: the prompt's ids.
        logits: the logits at the prompt's last position.
    """

    ok: bool
    stage: str | None = None
    error: str | None = None
    classes: dict[str, str] = field(default_factory=dict)
    video_features: torch.Tensor | None = None
    input_ids: list[int] | None = None
    logits: torch.Tensor | None = None

    def describe(self) -> str:
        if self.ok:
            built = ", ".join(name.rsplit(".", 1)[-1] for name in self.classes.values())
            return f"loads with trust_remote_code=True without vtimellm_hf ({built} from the folder's code)"
        return f"does not load with trust_remote_code=True without vtimellm_hf: {self.stage} failed: {self.error}"


# Runs in a fresh interpreter where importing vtimellm_hf fails, as on a machine that has only transformers (and
# peft for a folder with a separate adapter); it writes a JSON report instead of raising.
_LOAD_CHECK_SCRIPT = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class HidePackage(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "vtimellm_hf" or name.startswith("vtimellm_hf."):
                raise ImportError(f"{name} is not importable here: the folder must load with its own code")

    sys.meta_path.insert(0, HidePackage())
    folder, features_file, report_file, adapter_subfolder = sys.argv[1:5]
    report = {"ok": False, "stage": "import"}
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

        report["stage"] = "config"
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        report["stage"] = "model"
        model, info = AutoModelForCausalLM.from_pretrained(
            folder, trust_remote_code=True, dtype="auto", output_loading_info=True
        )
        mismatches = {key: [str(item) for item in info[key]] for key in
                      ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(key)}
        if mismatches:
            raise RuntimeError(f"the weights do not match the model: {mismatches}")
        classes = {"config": type(config).__module__ + "." + type(config).__name__,
                   "model": type(model).__module__ + "." + type(model).__name__}
        if adapter_subfolder:
            report["stage"] = "adapter"
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, folder, subfolder=adapter_subfolder)
        report["stage"] = "processor"
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        classes["processor"] = type(processor).__module__ + "." + type(processor).__name__
        report["stage"] = "forward"
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model.to(device).eval()
        features = torch.load(features_file, weights_only=True)
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "When does it happen?"}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(text=prompt, video_features=features, return_tensors="pt").to(device)
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1].float().cpu()
        if not torch.isfinite(logits).all():
            raise RuntimeError("the logits of the forward pass are not finite")
        leaked = sorted(name for name in sys.modules if name.startswith("vtimellm_hf"))
        if leaked:
            raise RuntimeError(f"vtimellm_hf modules were imported: {leaked}")
        report.update(ok=True, stage=None, classes=classes, input_ids=inputs["input_ids"][0].tolist(),
                      logits=logits.tolist())
    except Exception as error:
        report["error"] = f"{type(error).__name__}: {error}"
    with open(report_file, "w") as handle:
        json.dump(report, handle)
    """
)


def check_remote_loading(folder: str | Path, timeout: float = 3600) -> LoadCheck:
    """
    Loads `folder` as a Hub user would, in a fresh Python process where `vtimellm_hf` cannot be imported and the
    Hub is offline: `AutoConfig`, `AutoModelForCausalLM` (every weight must match), the separate stage-3 adapter
    with PEFT when there is one, `AutoProcessor`, all with `trust_remote_code=True`, then one forward pass on
    random features (seed 0) through the chat template. The modules cache is a fresh folder, so stale copies of the
    code cannot hide a broken file.

    Never raises for a broken folder: the returned [`LoadCheck`] says what failed.
    """
    folder = Path(folder).resolve()
    config_file = folder / "config.json"
    if not config_file.is_file():
        if (folder / "adapter_config.json").is_file():
            return LoadCheck(False, "layout", f"{folder} holds only a LoRA adapter; build a full folder with "
                             "`vtimellm-hf convert-original` (its --stage3 takes this adapter)")  # fmt: skip
        return LoadCheck(False, "layout", f"{folder} holds no config.json")
    try:
        config = read_json(config_file)
    except ValueError as error:
        return LoadCheck(False, "config", str(error))
    if not isinstance(config, dict) or "mm_hidden_size" not in config:
        return LoadCheck(False, "config", f"{config_file} is not a VTimeLLM config (no mm_hidden_size)")
    adapter = ADAPTER_SUBFOLDER if (folder / ADAPTER_SUBFOLDER / "adapter_config.json").is_file() else ""
    features = torch.randn(
        1, config.get("num_frames", 100), config["mm_hidden_size"], generator=torch.Generator().manual_seed(0)
    )
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        torch.save(features, scratch / "features.pt")
        environment = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "HF_MODULES_CACHE": str(scratch / "modules"),
            "TRANSFORMERS_VERBOSITY": "error",
        }
        command = [sys.executable, "-c", _LOAD_CHECK_SCRIPT, str(folder), str(scratch / "features.pt"),
                   str(scratch / "report.json"), adapter]  # fmt: skip
        try:
            result = subprocess.run(
                command, env=environment, cwd=scratch, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return LoadCheck(False, "timeout", f"loading and one forward pass took more than {timeout:.0f} s")
        report_file = scratch / "report.json"
        if not report_file.is_file():
            return LoadCheck(False, "import", f"the process died (status {result.returncode}): {result.stderr[-2000:]}")
        report = json.loads(report_file.read_text())
    if not report["ok"]:
        return LoadCheck(False, report["stage"], report.get("error"))
    return LoadCheck(
        True,
        classes=report["classes"],
        video_features=features,
        input_ids=report["input_ids"],
        logits=torch.tensor(report["logits"]),
    )


def list_upload_files(
    folder: str | Path, ignore_patterns: list[str] | None = None, include: list[str] | None = None
) -> list[tuple[str, int]]:
    """
    `(path in repo, size in bytes)` of every file [`push_folder`] sends from `folder`: all but those of
    `ignore_patterns` (default [`DEFAULT_IGNORE_PATTERNS`]: training leftovers), of [`SECRET_PATTERNS`] (secrets and
    logs) and of huggingface_hub's own (`.git`, caches), unless a pattern of `include` names them.
    """
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS as HUB_IGNORE_PATTERNS
    from huggingface_hub.utils import filter_repo_objects

    folder = Path(folder).resolve()
    patterns = [*(DEFAULT_IGNORE_PATTERNS if ignore_patterns is None else ignore_patterns), *SECRET_PATTERNS,
                *HUB_IGNORE_PATTERNS]  # fmt: skip
    files = {path.relative_to(folder).as_posix(): path for path in sorted(folder.glob("**/*")) if path.is_file()}
    kept = set(filter_repo_objects(files, ignore_patterns=patterns))
    if include:
        # huggingface_hub never sends its own ignored files (.git, caches), named or not
        kept |= set(filter_repo_objects(files, allow_patterns=include, ignore_patterns=HUB_IGNORE_PATTERNS))
    return [(name, files[name].stat().st_size) for name in sorted(kept)]


def check_publishable(folder: str | Path, files: list[tuple[str, int]]) -> None:
    """
    Refuses a folder that would publish what a Hub user cannot use or must not see: a link (a file or a folder)
    leading out of the folder, whose target would be uploaded, or a settings file that loading reads
    (`*config.json`: `processor_config.json`, `config.json`, `adapter_config.json`, ...) naming a machine-local path
    (absolute, home or relative, or a path of this machine under a `*_path` or `*name_or_path` key), such as a frame
    encoder saved by absolute path.

    Raises:
        UnpublishableFolderError: naming each problem and what to do.
    """
    folder = Path(folder).resolve()
    problems = []
    for root, directories, names in os.walk(folder):
        for name in [*directories, *names]:
            path = Path(root) / name
            if path.is_symlink() and not path.resolve().is_relative_to(folder):
                problems.append(f"{path.relative_to(folder)} links to {path.resolve()}, outside the folder")
    for name, _ in files:
        # The settings a Hub user's loading reads (a record such as vtimellm_conversion.json only informs)
        if name.endswith("config.json"):
            try:
                content = read_json(folder / name)
            except ValueError:
                continue  # the load check names what does not load
            problems += [f"{name}: {key} names the machine-local path {value!r}"
                         for key, value in _local_paths(content)]  # fmt: skip
    if problems:
        raise UnpublishableFolderError(
            f"Refusing to push {folder}: " + "; ".join(problems) + ". A Hub user has none of these: name Hub ids "
            "(a frame encoder such as openai/clip-vit-large-patch14) and copy linked files into the folder."
        )


def _local_paths(content, key: str = "") -> list[tuple[str, str]]:
    """`(key, value)` of the string values of a JSON document that name a path of this machine."""
    if isinstance(content, dict):
        return [found for name, value in content.items() for found in _local_paths(value, f"{key}.{name}".strip("."))]
    if isinstance(content, list):
        return [found for index, value in enumerate(content) for found in _local_paths(value, f"{key}[{index}]")]
    if not isinstance(content, str) or len(content) > 4096:
        return []
    names_a_path = key.endswith(("_path", "name_or_path")) and content and os.path.exists(content)
    return [(key, content)] if _LOCAL_PATH.match(content) or names_a_path else []


def _exactly(names: list[str]) -> list[str]:
    """Patterns that match these paths and nothing else."""
    return [re.sub(r"([*?\[])", r"[\1]", name) for name in names]


@dataclass
class PushResult:
    """
    What [`push_folder`] did, or would do with `dry_run=True`.

    Attributes:
        repo_id: the repository.
        files: `(path in repo, size in bytes)` of the uploaded files.
        load_check: the clean-room load check the folder passed.
        card_written: whether a model card was written (the folder had no README.md).
        warnings: things the caller should know (a card that loads another model id, say).
        dry_run: nothing was sent.
        commit_url, pr_url: the commit, and the pull request when one was opened.
    """

    repo_id: str
    files: list[tuple[str, int]]
    load_check: LoadCheck
    card_written: bool
    warnings: list[str]
    dry_run: bool
    commit_url: str | None = None
    pr_url: str | None = None


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    ignore_patterns: list[str] | None = None,
    include: list[str] | None = None,
) -> PushResult:
    """
    Uploads a checkpoint folder (model, processor, code files, card) to the Hub, after checking that it loads with
    `trust_remote_code=True` in a fresh process where `vtimellm_hf` is absent ([`check_remote_loading`]).

    A folder without README.md gets a model card first ([`write_model_card`], with `repo_id` in its usage code).
    Call it from the main process only.

    Args:
        folder: a saved checkpoint (from `save_pretrained` + the processor's, or `build_hub_folder`).
        repo_id: `org/name` (or `name` in the token owner's namespace).
        private: create the repository private (an existing one keeps its visibility).
        revision: a branch to push to, created from the default branch when missing.
        create_pr: open a pull request against the default branch instead of committing to it.
        dry_run: check the folder and list what would be uploaded, without any network call.
        token: a write token; defaults to `HF_TOKEN` or the one `hf auth login` saved.
        commit_message: defaults to "Upload VTimeLLM checkpoint".
        ignore_patterns: files to leave out; default [`DEFAULT_IGNORE_PATTERNS`] (training leftovers). Secrets and
            logs ([`SECRET_PATTERNS`]) are always left out,
        include: unless a pattern of `include` names them. Exactly the files [`list_upload_files`] lists are sent.

    Raises:
        NoTokenError, OfflineModeError, HubConnectionError, HubRequestError: the push could not happen (checked
            before the folder when the cause is known without it).
        UnpublishableFolderError: the folder names machine-local paths or links out of itself
            ([`check_publishable`]); nothing was sent.
        FolderNotLoadableError: the folder does not load; nothing was sent.
        FileNotFoundError, ValueError: a missing folder, a malformed repo id, `revision` with `create_pr`.
    """
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
    from huggingface_hub.utils import validate_repo_id

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"No folder at {folder}.")
    validate_repo_id(repo_id)
    if create_pr and revision is not None:
        raise ValueError("A pull request is opened against the default branch: pass either revision or create_pr.")
    if not dry_run:
        token = token or get_token()
        if token is None:
            raise NoTokenError(
                "No Hugging Face token found: set HF_TOKEN to a write token or run `hf auth login` (nothing was sent)."
            )
        if constants.is_offline_mode():
            raise OfflineModeError("HF_HUB_OFFLINE is set, so the Hub cannot be reached: unset it to push.")

    check_publishable(folder, list_upload_files(folder, ignore_patterns, include))
    load_check = check_remote_loading(folder)
    if not load_check.ok:
        raise FolderNotLoadableError(f"Refusing to push {folder}: it {load_check.describe()}")

    warnings = []
    card_path = folder / "README.md"
    card_written = not card_path.exists()
    if card_written:
        card_text = str(render_model_card(folder, repo_id=repo_id))
        if not dry_run:
            card_path.write_text(card_text, encoding="utf-8")
    elif f'"{repo_id}"' not in card_path.read_text(encoding="utf-8"):
        warnings.append(
            f"{card_path}'s usage code does not load {repo_id!r}; "
            f"`vtimellm-hf model-card {folder} --repo-id {repo_id}` writes one that does."
        )
    files = list_upload_files(folder, ignore_patterns, include)
    if dry_run and card_written:
        files = sorted([*files, ("README.md", len(card_text.encode("utf-8")))])
    result = PushResult(repo_id, files, load_check, card_written, warnings, dry_run)
    if dry_run:
        return result

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            revision=revision,
            create_pr=create_pr,
            commit_message=commit_message or "Upload VTimeLLM checkpoint",
            allow_patterns=_exactly([name for name, _ in files]),
        )
    except OfflineModeIsEnabled as error:
        message = f"HF_HUB_OFFLINE is set, so the Hub cannot be reached: unset it to push ({error})."
        raise OfflineModeError(message) from error
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        reason = {
            401: "the Hub rejected the token (401): check HF_TOKEN or run `hf auth login`",
            403: f"the token may not write to {repo_id} (403): use a write token with access to its namespace",
        }.get(status, f"the Hub refused the request ({status})")
        raise HubRequestError(f"Could not push to {repo_id}: {reason}: {error}") from error
    except _transport_errors() as error:
        raise HubConnectionError(
            f"Could not reach the Hub to push {repo_id}: no network connection, or a proxy or firewall in the way "
            f"({type(error).__name__}: {error})."
        ) from error
    result.commit_url = commit.commit_url
    result.pr_url = commit.pr_url
    return result


def _transport_errors() -> tuple[type[BaseException], ...]:
    """
    The exceptions of an unreachable Hub: huggingface_hub talks HTTP through httpx (1.x) or its fork httpx2 (2.x),
    whose `TransportError` covers DNS failures, refused connections and timeouts.
    """
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module_name in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module_name).TransportError)
        except ImportError:
            continue
    return tuple(errors)


def _human_size(size: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def add_subcommand(subparsers) -> None:
    """Registers `push` (exit status 0; 1 when the push did not happen; 2 on unusable arguments)."""
    push = subparsers.add_parser(
        "push",
        help="upload a checkpoint folder to the Hub after checking it loads without vtimellm_hf",
        description="Check that DIR loads with trust_remote_code=True in a fresh process where vtimellm_hf is "
        "absent, write its model card if it has none, then create the repository and upload the folder.",
    )
    push.add_argument("folder", metavar="DIR", help="a saved checkpoint folder")
    push.add_argument("repo_id", metavar="ORG/NAME", help="Hub repository")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--revision", default=None, metavar="BRANCH", help="branch to push to (created if missing)")
    push.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    push.add_argument("--commit-message", default=None)
    push.add_argument("--dry-run", action="store_true", help="check and list the files, send nothing")
    push.add_argument(
        "--include", nargs="+", default=None, metavar="PATTERN",
        help="also upload the files these patterns name, although they look like secrets or logs (.env, wandb/, "
        "*.log, keys) or training leftovers, which are left out otherwise",
    )  # fmt: skip
    push.set_defaults(run=_run_push)


@reports_errors("push", {PushError: 1, USAGE_ERRORS: 2})
def _run_push(args: argparse.Namespace) -> int:
    result = push_folder(
        args.folder,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        create_pr=args.create_pr,
        dry_run=args.dry_run,
        commit_message=args.commit_message,
        include=args.include,
    )
    for warning in result.warnings:
        print(f"push: warning: {warning}", file=sys.stderr)
    print(f"push: {args.folder} {result.load_check.describe()}")
    total = sum(size for _, size in result.files)
    verb = "would upload" if result.dry_run else "uploaded"
    target = args.repo_id + (f" (branch {args.revision})" if args.revision else "")
    target += " as a pull request" if args.create_pr else ""
    print(f"push: {verb} {len(result.files)} files ({_human_size(total)}) to {target}:")
    width = max((len(name) for name, _ in result.files), default=0)
    for name, size in result.files:
        print(f"  {name:<{width}}  {_human_size(size):>9}")
    if result.card_written:
        print("push: README.md: model card " + ("to be generated" if result.dry_run else "generated"))
    if result.pr_url or result.commit_url:
        print(f"push: {result.pr_url or result.commit_url}")
    return 0

__all__ = [
    "DEFAULT_IGNORE_PATTERNS",
    "FolderNotLoadableError",
    "HubConnectionError",
    "HubRequestError",
    "LoadCheck",
    "NoTokenError",
    "OfflineModeError",
    "PushError",
    "PushResult",
    "SECRET_PATTERNS",
    "UnpublishableFolderError",
    "add_subcommand",
    "check_publishable",
    "check_remote_loading",
    "list_upload_files",
    "push_folder",
]

# Names this module had before conversion and checkpoint files got their own modules
__getattr__ = moved_names(__name__, {
    "ORIGINAL_GENERATION_SETTINGS": "vtimellm_hf.checkpoints:ORIGINAL_GENERATION_SETTINGS",
    "NON_LORA_FILE": "vtimellm_hf.checkpoints:NON_LORA_FILE",
    "StageAdapter": "vtimellm_hf.checkpoints:StageAdapter",
    "original_generation_config": "vtimellm_hf.checkpoints:original_generation_config",
    "read_stage_adapter": "vtimellm_hf.checkpoints:read_stage_adapter",
    "read_state_dict": "vtimellm_hf.checkpoints:read_state_dict",
    "ConversionResult": "vtimellm_hf.conversion:ConversionResult",
    "build_hub_folder": "vtimellm_hf.conversion:build_hub_folder",
})  # fmt: skip
