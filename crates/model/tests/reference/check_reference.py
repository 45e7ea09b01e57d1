"""Independent reference for tardbot-model: the same weights loaded into a PyTorch implementation
(written from the architecture document, sharing no code with the crate) must give the same logits and
router losses. Exits 0 with "skipped" when torch is not installed.

    TARDBOT_REF_DIR=/tmp/tardbot-ref cargo test --release -p tardbot-model -- --ignored reference_export
    python3 crates/model/tests/reference/check_reference.py /tmp/tardbot-ref
"""
import json, math, struct, sys

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("skipped: torch is not installed")
    sys.exit(0)

torch.set_default_dtype(torch.float64)


def load_safetensors(path):
    dt = {"F32": torch.float32, "F64": torch.float64, "U32": torch.int64}
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        if info["dtype"] == "U32":
            t = torch.frombuffer(bytearray(data[a:b]), dtype=torch.int32).to(torch.int64)
        else:
            t = torch.frombuffer(bytearray(data[a:b]), dtype=dt[info["dtype"]]).to(torch.float64)
        out[name] = t.reshape(info["shape"])
    return out


def rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, pos, theta):  # x: B,h,T,d interleaved pairs
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos[:, None].double() * inv[None]
    cos, sin = ang.cos(), ang.sin()
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).flatten(-2)


def forward(c, W, ids, docs):
    B, T = ids.shape
    H, nh, nkv = c["hidden_size"], c["n_heads"], c["n_kv_heads"]
    hd = H // nh
    eps = c["rms_norm_eps"]
    pos = torch.arange(T)
    i = pos
    mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < c["window"])
    mask = mask[None] & (docs[:, :, None] == docs[:, None, :])  # B,T,T
    x = W["embed.weight"][ids]
    aux, z = 0.0, 0.0
    counts = []
    for l in range(c["n_layers"]):
        p = f"layers.{l}."
        h = rms(x, W[p + "attn_norm.weight"], eps)
        q = (h @ W[p + "attn.q.weight"].T).view(B, T, nh, hd).transpose(1, 2)
        k = (h @ W[p + "attn.k.weight"].T).view(B, T, nkv, hd).transpose(1, 2)
        v = (h @ W[p + "attn.v.weight"].T).view(B, T, nkv, hd).transpose(1, 2)
        q, k = rope(q, pos, c["rope_theta"]), rope(k, pos, c["rope_theta"])
        k, v = k.repeat_interleave(nh // nkv, 1), v.repeat_interleave(nh // nkv, 1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        s = s.masked_fill(~mask[:, None], float("-inf"))
        y = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H)
        x = x + y @ W[p + "attn.o.weight"].T
        h = rms(x, W[p + "mlp_norm.weight"], eps)
        swiglu = lambda pre, t: (F.silu(t @ W[pre + "gate.weight"].T) * (t @ W[pre + "up.weight"].T)) @ W[pre + "down.weight"].T
        if l < c["n_dense_layers"] or c["n_experts"] == 0:
            x = x + swiglu(p + "mlp.", h)
        else:
            E, K = c["n_experts"], c["experts_per_token"]
            hf = h.reshape(-1, H)
            logits = hf @ W[p + "moe.router.weight"].T
            probs = logits.softmax(-1)
            w, idx = probs.topk(K, -1)
            w = w / w.sum(-1, keepdim=True)
            out = torch.zeros_like(hf)
            for e in range(E):
                tok, slot = (idx == e).nonzero(as_tuple=True)
                if tok.numel():
                    out.index_add_(0, tok, swiglu(f"{p}moe.experts.{e}.", hf[tok]) * w[tok, slot, None])
            frac = F.one_hot(idx, E).double().sum((0, 1)) / idx.numel()
            counts.append(F.one_hot(idx, E).sum((0, 1)).tolist())
            aux = aux + E * (frac * probs.mean(0)).sum()
            z = z + torch.logsumexp(logits, -1).pow(2).mean()
            x = x + out.view(B, T, H)
    logits = rms(x, W["final_norm.weight"], eps) @ W["embed.weight"].T
    return logits, float(aux), float(z), counts


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "/tmp/tardbot-ref"
    c = json.load(open(f"{d}/config.json"))
    W = load_safetensors(f"{d}/model.safetensors")
    io = load_safetensors(f"{d}/io.safetensors")
    ref = json.load(open(f"{d}/outputs.json"))
    logits, aux, z, counts = forward(c, W, io["ids"], io["docs"])
    want = io["logits"]
    rel = ((logits - want).abs().max() / want.abs().max()).item()
    print(json.dumps(dict(max_rel_logit_error=rel, aux=aux, aux_rust=ref["aux_loss"], z=z, z_rust=ref["z_loss"],
                          counts_equal=counts == ref["expert_counts"])))
    ok = rel < 1e-4 and abs(aux - ref["aux_loss"]) < 1e-6 * max(1, abs(aux)) and abs(z - ref["z_loss"]) < 1e-6 * max(1, abs(z)) \
        and counts == ref["expert_counts"]
    print("reference check:", "PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
