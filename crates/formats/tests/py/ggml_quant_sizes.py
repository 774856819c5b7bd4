"""Print gguf-py's ggml type table: {"ID": ["NAME", block_size, type_size]} for every member of
GGMLQuantizationType (null sizes when GGML_QUANT_SIZES lacks the type)."""
import json

import gguf

out = {}
for t in gguf.GGMLQuantizationType:
    sizes = gguf.GGML_QUANT_SIZES.get(t)
    out[str(int(t))] = [t.name, *(sizes if sizes else (None, None))]
print(json.dumps(out))
