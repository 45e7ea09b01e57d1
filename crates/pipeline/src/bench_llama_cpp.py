"""The llama.cpp peer of `tardbot-pipeline bench generate --peer`: prefill and greedy decode tokens/s of a
GGUF export through llama-cpp-python, on the prompt ids and token counts it is given. One JSON line."""

import json
import sys
import time

import numpy as np
from llama_cpp import Llama

a = json.load(open(sys.argv[1]))
prompt, new, threads = a["prompt"], a["new_tokens"], a["threads"]
n_ctx = len(prompt) + new + 8
# The whole prompt in one batch (prefill as batched matmuls), as ours does in window-stride chunks.
llm = Llama(model_path=a["model"], n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
            n_threads=threads, n_threads_batch=threads, verbose=False)
# Warm-up: first touch of the weights and the thread pool, as ours does.
llm.eval(prompt[:8])
llm.reset()
t0 = time.perf_counter()
llm.eval(prompt)
t1 = time.perf_counter()
tokens = []
for i in range(new):
    t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    tokens.append(t)
    if i + 1 < new:
        llm.eval([t])
t2 = time.perf_counter()
print(json.dumps({
    "prefill_tokens_per_s": len(prompt) / (t1 - t0),
    "decode_tokens_per_s": (len(tokens) - 1) / (t2 - t1) if len(tokens) > 1 else 0.0,
    "tokens": tokens,
}))
