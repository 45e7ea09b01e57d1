"""llama.cpp (llama-cpp-python) runs a TardBot GGUF export: its tokenizer gives our ids, and inside
the attention window its f32 logits and greedy tokens are ours; q8_0's top-1 agreement with our f32
logits is reported. Prints one JSON line; exits 1 on a mismatch."""

import json
import sys

import numpy as np
from llama_cpp import Llama, llama_cpp
from safetensors.numpy import load_file


def load(path, n_ctx):
    # f32 KV cache and no flash attention: the reference computes attention in f32.
    return Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, n_threads=2,
                 logits_all=True, verbose=False, type_k=llama_cpp.GGML_TYPE_F32,
                 type_v=llama_cpp.GGML_TYPE_F32, flash_attn=False)


def logits(llm, ids):
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def main(ref_path):
    ref = json.load(open(ref_path))
    window = ref["window"]
    prompt, want = ref["gguf_prompt"], ref["gguf_greedy"]
    assert len(prompt) + len(want) <= window, "the check stays inside the window"
    ours = load_file(ref["gguf_logits"])["logits"]
    out = {"model": ref["name"], "window": window, "positions": len(prompt)}
    failures = []

    llm = load(ref["gguf_f32"], window)
    ids = llm.tokenize(ref["text"].encode(), add_bos=False, special=False)
    out["tokenizer_ids_equal"] = ids == ref["text_ids"]
    if not out["tokenizer_ids_equal"]:
        failures.append("llama.cpp tokenizer ids differ")

    theirs = logits(llm, prompt)
    rel = float(np.abs(theirs - ours).max() / np.abs(ours).max())
    out["f32_logits_max_rel_err"] = rel
    out["f32_top1_agreement"] = float((theirs.argmax(1) == ours.argmax(1)).mean())
    if rel > 1e-3:
        failures.append(f"f32 logits differ: max relative error {rel:.3g} > 1e-3")

    llm.reset()
    llm.eval(prompt)
    got = []
    for _ in range(len(want)):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        got.append(t)
        llm.eval([t])
    out["f32_greedy_equal"] = got == want
    if got != want:
        failures.append(f"f32 greedy tokens differ: {got} vs ours {want}")
    del llm

    q8 = load(ref["gguf_q8_0"], window)
    theirs = logits(q8, prompt)
    out["q8_0_top1_agreement"] = float((theirs.argmax(1) == ours.argmax(1)).mean())
    out["q8_0_logits_max_rel_err"] = float(np.abs(theirs - ours).max() / np.abs(ours).max())
    out["failures"] = failures
    print(json.dumps(out))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
