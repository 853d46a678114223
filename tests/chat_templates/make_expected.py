"""Regenerate expected.json: each template in this folder rendered by transformers (the oracle).

    .venv/bin/pip install transformers && .venv/bin/python tests/chat_templates/make_expected.py

transformers is not a pellucid dependency; the JSON it writes is committed so the tests run without it.
"""

import json
from pathlib import Path

from transformers.utils.chat_template_utils import render_jinja_template

HERE = Path(__file__).parent

# (bos_token, eos_token) as in each model's tokenizer_config.json
SPECIAL_TOKENS = {
    "llama-3.1-instruct": ("<|begin_of_text|>", "<|eot_id|>"),
    "qwen2.5-instruct": ("", "<|im_end|>"),
    "gemma-3-it": ("<bos>", "<eos>"),
    "mistral-v3": ("<s>", "</s>"),
    "phi-3.5-mini-instruct": ("<s>", "<|endoftext|>"),
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name, e.g. Zürich"}},
            "required": ["city"],
        },
    },
}
CONVERSATIONS = {
    "chat": {
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Name three primary colors."},
            {"role": "assistant", "content": "  Red, yellow, blue.  "},
            {"role": "user", "content": "And in German? Ä ö ü."},
        ],
    },
    "user_only": {"messages": [{"role": "user", "content": "Hello!"}]},
    "no_generation_prompt": {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
        "add_generation_prompt": False,
    },
    "tools": {
        "messages": [
            {"role": "user", "content": "What's the weather in Zürich?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call12345",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": {"city": "Zürich"}},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call12345", "content": '{"temp_c": 21}'},
        ],
        "tools": [WEATHER_TOOL],
    },
}
TOOL_TEMPLATES = {"llama-3.1-instruct", "qwen2.5-instruct", "mistral-v3"}


def main() -> None:
    expected = {}
    for path in sorted(HERE.glob("*.jinja")):
        bos, eos = SPECIAL_TOKENS[path.stem]
        for case, conversation in CONVERSATIONS.items():
            if case == "tools" and path.stem not in TOOL_TEMPLATES:
                continue
            rendered, _ = render_jinja_template(
                conversations=[conversation["messages"]],
                tools=conversation.get("tools"),
                chat_template=path.read_text(),
                add_generation_prompt=conversation.get("add_generation_prompt", True),
                bos_token=bos,
                eos_token=eos,
                date_string="26 Jul 2024",
            )
            expected[f"{path.stem}/{case}"] = rendered[0]
    out = {"special_tokens": SPECIAL_TOKENS, "conversations": CONVERSATIONS, "expected": expected}
    (HERE / "expected.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
