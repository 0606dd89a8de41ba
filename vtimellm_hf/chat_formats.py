"""The chat template of each backbone, with the `<video>` placeholder, as the processor's default template.

Each is its LLM's own chat format (special tokens, roles, default system message), rendering a video block as
`<video>\\n` before the text as VTimeLLM's Vicuna template does, and marking each answer with its end-of-turn token
as `{% generation %}`, the tokens the loss is taken on. Stage 1 keeps the processor's `"plain"` template on every
backbone (`<video>` and the caption, as the original's LLaVA pre-training). A processor saves its templates in its
folder (`chat_template.jinja`), so a checkpoint loads with its own: this module does not travel to the Hub.

Timestamps in the answers stay two-digit frame indices ("from 05 to 23") whatever the backbone.
"""

from .model.chat_templates_vtime import (
    MESSAGE_CONTENT_JINJA,
    SYSTEM_MESSAGE_JINJA,
    UNKNOWN_ROLE_JINJA,
    VICUNA_V1_CHAT_TEMPLATE,
)


def _chatml_template(default_system: str, answer_prefix: str) -> str:
    """ChatML (`<|im_start|>role\\n...<|im_end|>\\n`), as Qwen2, Qwen2.5 and Qwen3 write it."""
    system = f"{{{{- '<|im_start|>system\\n{default_system}<|im_end|>\\n' -}}}}" if default_system else ""
    return (
        "{%- set loop_messages = messages -%}"
        "{%- if messages[0]['role'] == 'system' -%}"
        f"{SYSTEM_MESSAGE_JINJA}"
        "{{- '<|im_start|>system\\n' + system_message + '<|im_end|>\\n' -}}"
        "{%- set loop_messages = messages[1:] -%}"
        f"{'{%- else -%}' + system if system else ''}"
        "{%- endif -%}"
        "{%- for message in loop_messages -%}"
        f"{MESSAGE_CONTENT_JINJA}"
        "{%- if message['role'] == 'user' -%}"
        "{{- '<|im_start|>user\\n' + content + '<|im_end|>\\n' -}}"
        "{%- elif message['role'] == 'assistant' -%}"
        f"{{{{- '<|im_start|>assistant\\n{answer_prefix}' -}}}}"
        "{%- generation -%}{{- content + '<|im_end|>' -}}{%- endgeneration -%}{{- '\\n' -}}"
        "{%- else -%}"
        f"{UNKNOWN_ROLE_JINJA}"
        "{%- endif -%}"
        "{%- endfor -%}"
        f"{{%- if add_generation_prompt -%}}{{{{- '<|im_start|>assistant\\n{answer_prefix}' -}}}}{{%- endif -%}}"
    )


# Qwen3's template with thinking off (`enable_thinking=False`): every answer follows an empty thinking block, in every
# turn, so that a trained turn reads as the prompt that generates it; no default system message
QWEN3_CHAT_TEMPLATE = _chatml_template("", "<think>\\n\\n</think>\\n\\n")
# Qwen2.5's template: its default system message
QWEN2_5_CHAT_TEMPLATE = _chatml_template("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.", "")

# Llama 3's template (Meta-Llama-3-8B-Instruct): header tokens, `<|eot_id|>` ends each turn, contents trimmed. The
# BOS token is the tokenizer's (the processor adds it), not the template's.
LLAMA3_CHAT_TEMPLATE = (
    "{%- set loop_messages = messages -%}"
    "{%- if messages[0]['role'] == 'system' -%}"
    f"{SYSTEM_MESSAGE_JINJA}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + system_message | trim + '<|eot_id|>' -}}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    f"{MESSAGE_CONTENT_JINJA}"
    "{%- if message['role'] == 'user' -%}"
    "{{- '<|start_header_id|>user<|end_header_id|>\\n\\n' + content | trim + '<|eot_id|>' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}"
    "{%- generation -%}{{- content | trim + '<|eot_id|>' -}}{%- endgeneration -%}"
    "{%- else -%}"
    f"{UNKNOWN_ROLE_JINJA}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)

# Mistral's instruct template (Mistral-7B-Instruct-v0.3): `[INST] question[/INST] answer</s>`; a system message is
# written before the first question, as its v0.1 template did. The BOS token is the tokenizer's.
MISTRAL_CHAT_TEMPLATE = (
    "{%- set loop_messages = messages -%}"
    "{%- set system_message = '' -%}"
    "{%- if messages[0]['role'] == 'system' -%}"
    f"{SYSTEM_MESSAGE_JINJA}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    f"{MESSAGE_CONTENT_JINJA}"
    "{%- if message['role'] == 'user' -%}"
    "{%- if loop.first and system_message -%}{%- set content = system_message + '\\n\\n' + content -%}{%- endif -%}"
    "{{- '[INST] ' + content + '[/INST]' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- ' ' -}}{%- generation -%}{{- content | trim + eos_token -}}{%- endgeneration -%}"
    "{%- else -%}"
    f"{UNKNOWN_ROLE_JINJA}"
    "{%- endif -%}"
    "{%- endfor -%}"
)

# The chat format a recipe names (`chat_format`) -> the processor's default chat template
CHAT_FORMATS = {
    "vicuna_v1": VICUNA_V1_CHAT_TEMPLATE,
    "qwen3": QWEN3_CHAT_TEMPLATE,
    "qwen2.5": QWEN2_5_CHAT_TEMPLATE,
    "llama3": LLAMA3_CHAT_TEMPLATE,
    "mistral": MISTRAL_CHAT_TEMPLATE,
}


def chat_template_of(chat_format: str) -> str:
    """The default chat template of a chat format of [`CHAT_FORMATS`]; a `ValueError` naming them otherwise."""
    if chat_format not in CHAT_FORMATS:
        raise ValueError(f"Unknown chat_format {chat_format!r}; choose one of {', '.join(CHAT_FORMATS)}.")
    return CHAT_FORMATS[chat_format]


__all__ = [
    "CHAT_FORMATS",
    "LLAMA3_CHAT_TEMPLATE",
    "MISTRAL_CHAT_TEMPLATE",
    "QWEN2_5_CHAT_TEMPLATE",
    "QWEN3_CHAT_TEMPLATE",
    "chat_template_of",
]
