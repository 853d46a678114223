"""SmolLM3: llama with no RoPE on every fourth layer ("NoPE" layers: 3, 7, 11, ... counting from 0).

Those layers see positions only through the causal mask. config.json lists the choice per layer
(`no_rope_layers`: 1 = rotate, 0 = not); llama.cpp's GGUF files state nothing and it skips RoPE on every
fourth layer, as here. Tensor names and the GGUF RoPE permutation are llama's.
"""

from typing import Any

from pellucid.model.families import Family, TensorNames


def hf_config(text: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    flags = text.get("no_rope_layers")
    if flags is None:
        every = int(text.get("no_rope_layer_interval", 4))
        return {"rope_layers": [(i + 1) % every != 0 for i in range(fields["n_layers"])]}
    return {"rope_layers": [bool(x) for x in flags]}


FAMILY = Family(
    name="smollm3",
    architectures=("smollm3",),
    gguf_names=TensorNames(),
    hf_model_types=("smollm3",),
    defaults={"no_rope_every": 4},
    gguf_defaults={"rope_style": "interleaved"},
    hf_config=hf_config,
)
