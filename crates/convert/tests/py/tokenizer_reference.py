#!/usr/bin/env python3
"""Independent reference for r1q's `tokenizer.*` GGUF metadata.

Usage: tokenizer_reference.py DIR VOCAB_SIZE OUT.json

Computes what llama.cpp's `convert_hf_to_gguf.py` (`TextModel.get_vocab_base`,
`get_vocab_base_pre`, `_set_vocab_gpt2`) writes for an HF tokenizer directory, with the HF
`tokenizers` runtime standing in for transformers' `AutoTokenizer` (not installed in the test
venv), and gguf-py's own `SpecialVocab` for merges, special ids, add flags and chat template.

`pre` is the probe-hash lookup of `get_vocab_base_pre` for the three DeepSeek families (the BOS
prepended the way `LlamaTokenizerFast` with `add_bos_token: true` does), or null when the hash is
not one of them (e.g. the generated fixtures' small vocabularies).
"""
import inspect
import json
import sys
from hashlib import sha256
from pathlib import Path

import gguf
from tokenizers import Tokenizer

CHKTXT = '\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, \'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL'

# From llama.cpp's generated get_vocab_base_pre (llama-cpp-python 0.3.36 vendored tree).
KNOWN_HASHES = {
    "877081d19cf6996e2c4ff0e1236341e9b7bde288f5311a56a937f0afbbb3aeb5": "deepseek-v3",
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
}


def does_token_look_special(token_text: str) -> bool:
    # Verbatim logic of TextModel.does_token_look_special.
    seems_special = token_text in ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
    seems_special = seems_special or (token_text.startswith("<|") and token_text.endswith("|>"))
    seems_special = seems_special or (token_text.startswith("<｜") and token_text.endswith("｜>"))
    seems_special = seems_special or (token_text.startswith("<unused") and token_text.endswith(">"))
    return seems_special


def content(entry):
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        return entry.get("content")
    return None


def main() -> None:
    d = Path(sys.argv[1])
    vocab_size = int(sys.argv[2])
    out = Path(sys.argv[3])
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    cfg_path = d / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}

    # get_vocab_base, with tokenizer.vocab == get_vocab(with_added_tokens=True).
    vocab = tok.get_vocab(with_added_tokens=True)
    assert max(vocab.values()) < vocab_size
    reverse_vocab = {id_: t for t, id_ in vocab.items()}
    added_tokens_decoder = tok.get_added_tokens_decoder()
    added_vocab = {t.content: i for i, t in sorted(added_tokens_decoder.items())}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in reverse_vocab:
            tokens.append(f"[PAD{i}]")
            types.append(int(gguf.TokenType.UNUSED))
            continue
        token = reverse_vocab[i]
        if token in added_vocab:
            if not added_tokens_decoder[i].normalized:
                token = tok.decode(tok.encode(token, add_special_tokens=False).ids, skip_special_tokens=False)
            if added_tokens_decoder[i].special or does_token_look_special(token):
                types.append(int(gguf.TokenType.CONTROL))
            else:
                token = token.replace("\u2581", " ")
                types.append(int(gguf.TokenType.USER_DEFINED))
        else:
            types.append(int(gguf.TokenType.NORMAL))
        tokens.append(token)

    # get_vocab_base_pre: AutoTokenizer(LlamaTokenizerFast) prepends BOS when add_bos_token.
    ids = tok.encode(CHKTXT, add_special_tokens=False).ids
    bos = content(cfg.get("bos_token"))
    if cfg.get("add_bos_token") and bos is not None and tok.token_to_id(bos) is not None:
        ids = [tok.token_to_id(bos)] + ids
    pre = KNOWN_HASHES.get(sha256(str(ids).encode()).hexdigest())

    sv = gguf.SpecialVocab(d, load_merges=True)
    src = inspect.getsource(gguf.SpecialVocab)
    json.dump(
        {
            "tokens": tokens,
            "types": types,
            "pre": pre,
            "merges": sv.merges,
            "special_token_ids": sv.special_token_ids,
            "add_special_token": sv.add_special_token,
            "chat_template": sv.chat_template,
            # gguf 0.19 on PyPI predates the ByteLevel rule of the vendored copy (REFERENCE §4.5).
            "bytelevel_rule": "'ByteLevel'" in src,
            "gguf_version": getattr(gguf, "__version__", None),
        },
        out.open("w", encoding="utf-8"),
        ensure_ascii=False,
    )


if __name__ == "__main__":
    main()
