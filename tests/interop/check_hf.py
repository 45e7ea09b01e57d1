"""Hugging Face transformers runs a TardBot export exactly: tokenizer, logits past the attention
window, greedy generation, and the chat template's token ids. Reads the reference figures our Rust
test wrote (`reference.json` and `logits.safetensors`); prints one JSON line; exits 1 on a mismatch."""

import json
import sys

import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer


def ids_of(x):
    # transformers 5 returns a BatchEncoding from apply_chat_template, 4.x a list.
    if hasattr(x, "keys"):
        x = x["input_ids"]
    return list(x)


def main(ref_path):
    ref = json.load(open(ref_path))
    d = ref["hf_dir"]
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
    model.eval()
    failures = []
    out = {"model": ref["name"]}

    ids = tok(ref["text"], add_special_tokens=False)["input_ids"]
    out["tokenizer_ids_equal"] = ids == ref["text_ids"]
    if not out["tokenizer_ids_equal"]:
        failures.append("tokenizer ids differ")

    with torch.no_grad():
        theirs = model(torch.tensor([ref["greedy_prompt"]])).logits[0].float().numpy()
    ours = load_file(ref["logits"])["logits"]
    rel = float(np.abs(theirs - ours).max() / np.abs(ours).max())
    out["positions"] = len(ref["greedy_prompt"])
    out["window"] = ref["window"]
    out["logits_max_rel_err"] = rel
    if rel > 1e-4:
        failures.append(f"logits differ: max relative error {rel:.3g} > 1e-4")

    model.generation_config.eos_token_id = None
    with torch.no_grad():
        g = model.generate(
            torch.tensor([ref["greedy_prompt"]]),
            max_new_tokens=len(ref["greedy_tokens"]),
            do_sample=False,
            pad_token_id=1,
        )[0].tolist()[len(ref["greedy_prompt"]):]
    out["greedy_equal"] = g == ref["greedy_tokens"]
    if not out["greedy_equal"]:
        failures.append(f"greedy tokens differ: {g} vs ours {ref['greedy_tokens']}")

    chat_ok = 0
    for i, c in enumerate(ref["conversations"]):
        kw = {"tools": c["tools"]} if c.get("tools") is not None else {}
        got = ids_of(tok.apply_chat_template(c["messages"], add_generation_prompt=c["generation_prompt"], tokenize=True, **kw))
        if got == c["ids"]:
            chat_ok += 1
        else:
            failures.append(f"conversation {i} ({c['kind']}): apply_chat_template ids differ: "
                            f"{tok.decode(got)!r} vs ours {tok.decode(c['ids'])!r}")
    out["chat_template_equal"] = f"{chat_ok}/{len(ref['conversations'])}"
    out["failures"] = failures
    print(json.dumps(out))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
