"""Tool calling in the models' own syntax: which format a chat template uses, the calls (and reasoning) parsed
out of a reply as it streams, grammars that constrain a reply to valid calls, and the prompt and message
folding for models whose template has no tool syntax.

    fmt = detect_format(template.source)
    parser = fmt.parser(reasoning=True)
    for piece in generated_text:  events = parser.feed(piece)   # text / reasoning / tool_call events
    events = parser.finish()

formats.py names the formats and detects them; parse.py reads replies; grammar.py writes grammars;
generic.py serves template-less models.
"""

from pellucid.tools.calls import Event, ToolCall, new_call_id
from pellucid.tools.formats import (
    FORMATS,
    GENERIC,
    ToolFormat,
    detect_format,
    generation_prompt_opens_thinking,
    parse_reply,
    template_supports_tools,
)
from pellucid.tools.generic import generic_tools_prompt, messages_for_generic
from pellucid.tools.parse import HarmonyParser, ReplyParser

__all__ = [
    "FORMATS",
    "GENERIC",
    "Event",
    "HarmonyParser",
    "ReplyParser",
    "ToolCall",
    "ToolFormat",
    "detect_format",
    "generation_prompt_opens_thinking",
    "generic_tools_prompt",
    "messages_for_generic",
    "new_call_id",
    "parse_reply",
    "template_supports_tools",
]
