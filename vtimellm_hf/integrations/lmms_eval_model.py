"""`--model vtimellm` of lmms-eval: the model class it loads (needs lmms-eval); see `lmms_eval.py` for what it does."""

import logging

from accelerate import PartialState
from lmms_eval.api.model import lmms
from tqdm import tqdm

from ..checkpoints import load_model_and_processor
from .lmms_eval import answer_requests, read_request

logger = logging.getLogger(__name__)


class VTimeLLM(lmms):
    """
    A VTimeLLM checkpoint as an lmms-eval model: `--model_args pretrained=DIR[,dtype=bfloat16]`, and lmms-eval's
    `--batch_size` and `--device` (default: this process's accelerator under `accelerate launch`, else CUDA where
    there is one, else the CPU). Several processes (`accelerate launch -m lmms_eval ...`) each answer their share.
    """

    def __init__(self, pretrained: str, dtype: str = "auto", batch_size: int | str = 8, device: str | None = None,
                 **ignored) -> None:  # fmt: skip
        super().__init__()
        ignored = {name: value for name, value in ignored.items() if value is not None}
        if ignored:
            logger.warning("vtimellm ignores these model arguments: %s", ", ".join(sorted(ignored)))
        state = PartialState()
        self._rank, self._world_size = state.process_index, state.num_processes
        if device is None and state.num_processes > 1:
            device = str(state.device)
        self.model, self.processor = load_model_and_processor(pretrained, device=device, dtype=dtype)
        if not str(batch_size).isdigit() or int(batch_size) < 1:
            raise ValueError(f"vtimellm needs a positive whole --batch_size, not {batch_size!r}")
        self.batch_size = int(batch_size)

    @property
    def device(self):
        return self.model.device

    def generate_until(self, requests) -> list[str]:
        read = []
        for text, generation_kwargs, doc_to_visual, doc_id, task, split in (request.args for request in requests):
            doc = self.task_dict[task][split][doc_id]
            try:
                read.append(read_request(text, generation_kwargs, doc_to_visual(doc), doc))
            except ValueError as error:
                raise ValueError(f"task {task}, {split} document {doc_id}: {error}") from None
        with tqdm(total=len(read), disable=self.rank != 0, desc="vtimellm answering") as bar:
            return answer_requests(self.model, self.processor, read, self.batch_size, progress=bar.update)

    def loglikelihood(self, requests):
        raise NotImplementedError("vtimellm generates answers; tasks that score log-likelihoods are not supported")

    def generate_until_multi_round(self, requests):
        raise NotImplementedError("vtimellm answers single-round tasks (generate_until) only")
