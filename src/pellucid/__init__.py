"""pellucid: a local LLM runtime you can see through.

import pellucid
llm = pellucid.load("smollm2-135m")          # a catalog name, a store name, or a .gguf path
print(llm.chat([{"role": "user", "content": "Hi"}], temperature=0).result().text)
"""

from pellucid.paths import use_compile_cache

__version__ = "0.1.0"

use_compile_cache()  # before torch is imported: see pellucid.paths


def load(model=None, **kwargs):
    """Load a model for generation; see pellucid.api.load (imported lazily: torch loads only when needed)."""
    from pellucid.api import load as _load

    return _load(model, **kwargs)
