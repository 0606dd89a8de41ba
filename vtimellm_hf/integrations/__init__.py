"""Bridges to the tools where video LLMs are compared and tried: lmms-eval (`lmms_eval`, `lmms_eval_model`).

Each bridge needs its optional extra (`pip install vtimellm-hf[lmms-eval]`) only where the other tool calls it;
this package imports without them.
"""
