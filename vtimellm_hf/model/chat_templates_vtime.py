"""VTimeLLM's chat templates: the Vicuna v1 prompt of the original and its stage-1 `"plain"` template, the named
templates a [`VTimeProcessor`] holds, and the Jinja pieces every backbone's template is built from
(`vtimellm_hf.chat_formats`).

This file travels to the Hub with every checkpoint (`trust_remote_code=True`), imported by `processing_vtime.py`,
which re-exports its public names: it imports nothing.
"""

# Pieces of the chat templates, shared by every backbone's (`vtimellm_hf.chat_formats`). A message's text: a string,
# or blocks where each video or image is `<video>\n` and text blocks follow in order
MESSAGE_CONTENT_JINJA = (
    "{%- if message['content'] is string -%}"
    "{%- set content = message['content'] -%}"
    "{%- else -%}"
    "{%- set parts = namespace(text='') -%}"
    "{%- for block in message['content'] -%}"
    "{%- if block['type'] in ['video', 'image'] -%}{%- set parts.text = parts.text + '<video>\\n' -%}"
    "{%- elif block['type'] == 'text' -%}{%- set parts.text = parts.text + block['text'] -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- set content = parts.text -%}"
    "{%- endif -%}"
)
SYSTEM_MESSAGE_JINJA = (
    "{%- set system_message = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'][0]['text'] -%}"
)
UNKNOWN_ROLE_JINJA = (
    "{{- raise_exception('VTimeLLM conversations hold user and assistant turns after an optional system message, "
    "got role ' + message['role']) -}}"
)

# The Vicuna v1 prompt of the original, byte for byte: "SYSTEM USER: <video>\n... ASSISTANT: answer</s>USER: ...".
# The `generation` markers let `apply_chat_template(return_assistant_tokens_mask=True)` find the trained tokens.
VICUNA_V1_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' -%}"
    + SYSTEM_MESSAGE_JINJA
    + "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set system_message = 'A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user\\'s questions.' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{{- system_message + ' ' -}}"
    "{%- for message in loop_messages -%}"
    + MESSAGE_CONTENT_JINJA
    + "{%- if message['role'] == 'user' -%}"
    "{{- 'USER: ' + content + ' ' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- 'ASSISTANT: ' -}}{%- generation -%}{{- content + eos_token -}}{%- endgeneration -%}"
    "{%- else -%}"
    + UNKNOWN_ROLE_JINJA
    + "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

# Stage 1 of the original ("plain" template): the input is the visual placeholder alone, the question is dropped,
# and the target is the caption followed by a newline. The processor holds it as its chat template named "plain".
PLAIN_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- '<video>' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '\\n' -}}{%- endgeneration -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


def named_chat_templates(chat_template: str | dict[str, str] | None) -> dict[str, str]:
    """
    The processor's named templates from its `chat_template` argument (one template, named ones, or `None`): the
    default (Vicuna v1 where none is given) and `"plain"` (the stage-1 template where none is named so).
    """
    templates = dict(chat_template) if isinstance(chat_template, dict) else {"default": chat_template}
    templates["default"] = templates.get("default") or VICUNA_V1_CHAT_TEMPLATE
    templates.setdefault("plain", PLAIN_CHAT_TEMPLATE)
    return templates


__all__ = ["PLAIN_CHAT_TEMPLATE", "VICUNA_V1_CHAT_TEMPLATE"]
