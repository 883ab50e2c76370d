"""Token salience: a TrackStar score split into one exact term per token of the example.

**Which split, and why.** The example's projected gradient is a sum over positions: for each
tracked weight, phi = P_out'^T (sum_t delta_t a_t^T) P_in' = sum_t u_t v_t^T (engine.collector),
so phi = sum_t phi_t and, the score being linear in phi up to the example's norm,

    score = <q, phi> / ||phi|| = sum_t <q, phi_t> / ||phi||          (c_t = <q, phi_t> / ||phi||)

where q is the query vector exactly as it was scored (with a profile, pulled back through
R^-1/2, and ||phi|| then ||R^-1/2 phi||; without unit normalization, Grad-Dot, no division).
The terms sum to the score exactly (up to float rounding) and cost one forward and one backward
for any number of examples (one per group of similar lengths): the collector already has every
u_t, v_t. Token t's term is the part of the score carried by the activations at position t:
a_t is the layers' input there and delta_t the loss gradient arriving there, from the losses
of predicting tokens t+1, t+2, ... (through attention). So the last token, which nothing
reads, gets 0, and a token that many later predictions lean on gets much. The other exact split, per-token loss terms (L = sum_s l_s, so
grad L = sum_s grad l_s and score = sum_s <q, P grad l_s> / ||phi||), sums to the same score but
needs one backward per token (T of them); its term s answers "how much does predicting token s
move the score", ours "how much flows through token t's position".

The exact correction divides G elementwise by sqrt(V) + eps before projecting, so phi_t =
P_out^T ((delta_t a_t^T) / den) P_in and c_t = delta_t^T W a_t with W = (P_out Q P_in^T) / den
([out, in], Q the query's [k, k] blocks of the weight): W is formed once per query and weight,
never a per-token [out, in].

Shapes: a query vector is [d] (the index's layout, tracked weights in order, m [k, k] blocks
each); contributions come back per example as [T] float64 over its tokens.
"""
from __future__ import annotations

import bisect
import re
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from tda.engine.batching import TokenSequence, collate
from tda.engine.collector import ExactTerms

METHOD = ("per-position terms of the projected gradient: token t's term is <q, P(sum over "
          "tracked weights of delta_t a_t^T)> / ||phi||, the part of the score carried by the "
          "activations at position t; the terms sum to the score")


@dataclass
class TokenContributions:
    """Raw per-token terms of a batch of examples. ``raw[i]`` [T_i] float64: <q_i, phi_t> for
    each token t of example i (not yet divided by a norm); ``phi`` [n, d] the examples' full
    projected gradients in the compute dtype (sum over t of phi_t); ``loss`` [n] summed NLL
    (nats)."""

    raw: list[np.ndarray]
    phi: torch.Tensor
    loss: np.ndarray


# A forward and backward's fixed cost (hooks, kernel launches) in tokens of a batch: measured
# ~5.5 ms + 0.11 ms per padded token on a tiny GPT-2 on one CPU thread (bench/salience.py)
GROUP_OVERHEAD_TOKENS = 48


def length_groups(lengths: Sequence[int],
                  overhead_tokens: int = GROUP_OVERHEAD_TOKENS) -> list[list[int]]:
    """Positions of ``lengths`` cut into batches of neighbouring lengths that minimise the
    padded tokens, sum over batches of rows x longest row, plus ``overhead_tokens`` per batch
    (the best contiguous partition of the length order, found exactly, O(n^2)). Ten hits of
    20-110 tokens padded to the longest waste about half their batch; two groups waste ~25%."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n                 # best[j]: cost of the first j in order
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = lengths[order[j - 1]]                 # the longest of order[i:j]
        for i in range(j):
            c = best[i] + (j - i) * width + overhead_tokens
            if c < best[j]:
                best[j], cut[j] = c, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def token_contributions(featurizer, seqs: Sequence[TokenSequence], queries: np.ndarray,
                        query_of: Sequence[int]) -> TokenContributions:
    """For example i of ``seqs``, <queries[query_of[i]], phi_t> for each of its tokens t, with
    one forward and one backward per group of similar lengths (``length_groups``: right
    padded, each group's own width). ``queries`` [m, d]: the query vectors already pulled back
    to phi's space (engine.salience module docstring)."""
    if not seqs:
        return TokenContributions([], torch.zeros((0, featurizer.dim)), np.zeros(0))
    raw: list[np.ndarray | None] = [None] * len(seqs)
    phis: list[torch.Tensor | None] = [None] * len(seqs)
    loss = np.zeros(len(seqs))
    q = torch.as_tensor(np.asarray(queries, dtype=np.float64), device=featurizer.device)
    for group in length_groups([len(s.ids) for s in seqs]):
        r, phi, lo = _batch_contributions(featurizer, [seqs[i] for i in group], q,
                                          [query_of[i] for i in group])
        for j, i in enumerate(group):
            raw[i], phis[i], loss[i] = r[j], phi[j], lo[j]
    return TokenContributions(raw, torch.stack(phis), loss)


def _batch_contributions(featurizer, seqs: list[TokenSequence], q: torch.Tensor,
                         query_of: list[int]):
    """token_contributions for one right-padded batch: (raw per example [T_i] float64, phi
    [B, d], loss [B] float64)."""
    dev = featurizer.device
    which = torch.as_tensor(query_of, dtype=torch.long, device=dev)
    batch = collate(seqs, featurizer.pad_id, "right")
    B, T = batch.input_ids.shape
    acc = torch.zeros((B, T), dtype=torch.float64, device=dev)
    cols, start = {}, 0
    for name, dim in featurizer.layout:
        cols[name] = slice(start, start + dim)
        start += dim
    projectors = {p.weight.name: p for p in featurizer.projectors}
    wanted = sorted(set(query_of))
    exact_w: dict[tuple[str, int | None, int], torch.Tensor] = {}
    flat = acc.view(-1)
    which_token = which.repeat_interleave(T)                          # [B * T]
    cast_cache: dict[tuple[str, int | None], torch.Tensor] = {}

    def blocks(name: str, j: int) -> torch.Tensor:
        p = projectors[name]
        return q[j, cols[name]].view(p.blocks, p.k, p.k)             # [m, k, k]

    def query_blocks(name: str, dtype: torch.dtype) -> torch.Tensor:
        """[m, k, k] when every example has the same query, else [n_queries, m, k, k]."""
        key = (name, wanted[0] if len(wanted) == 1 else None)
        if key not in cast_cache:
            cast_cache[key] = (blocks(name, wanted[0]) if len(wanted) == 1 else torch.stack(
                [blocks(name, j) for j in range(q.shape[0])])).to(dtype)
        return cast_cache[key]

    def token_sink(name, batch_idx, position, u, v):
        # c_t = sum over sketches of u_t^T Q v_t, for all tokens at once: each token's own
        # query's blocks, products in the projections' dtype (float32 unless the model is
        # float64), sums in float64; a dense use (batch_idx None) covers every token in order
        n, m, k = u.shape
        Q = query_blocks(name, u.dtype)
        if len(wanted) == 1:
            uq = (u.view(n, k) @ Q[0]).view(n, 1, k) if m == 1 else \
                (u.transpose(0, 1) @ Q).transpose(0, 1)              # [n, m, k]
        else:
            rows = which_token if batch_idx is None else which[batch_idx]
            uq = (u.unsqueeze(2) @ Q[rows]).squeeze(2)               # [n, m, k]
        c = (uq * v).sum(dim=(1, 2))                                 # [n]
        if batch_idx is None:
            flat.add_(c)
        else:
            acc.index_put_((batch_idx, position), c.double(), accumulate=True)

    def exact_sink(terms: ExactTerms):
        for j in wanted:
            rows = which[terms.batch_idx] == j
            if not bool(rows.any()):
                continue
            key = (terms.name, terms.expert, j)
            if key not in exact_w:
                exact_w[key] = exact_matrix(projectors[terms.name], blocks(terms.name, j),
                                            terms.expert)
            c = terms.contract(exact_w[key], rows)
            acc.index_put_((terms.batch_idx[rows], terms.position[rows]), c, accumulate=True)

    phi, loss = featurizer.raw_features(batch, token_sink=token_sink, exact_sink=exact_sink)
    n = batch.n_tokens.tolist()
    acc = acc.cpu().numpy()
    return [acc[i, :n[i]] for i in range(B)], phi, loss.double().cpu().numpy()


def exact_matrix(proj, Q: torch.Tensor, expert: int | None = None) -> torch.Tensor:
    """W = sum over sketches b of P_out_b Q_b P_in_b^T / (sqrt(V) + eps), [out, in] float64,
    so that delta_t^T W a_t = <Q, P_out^T ((delta_t a_t^T) / den) P_in> (Q [m, k, k])."""
    p_out, p_in, den = proj.p_out, proj.p_in, proj.denominator
    if expert is not None:
        p_out, p_in, den = p_out[expert], p_in[expert], den[expert]
    m, k = proj.blocks, proj.k
    W = torch.einsum("omi,mij,pmj->op", p_out.double().view(-1, m, k), Q,
                     p_in.double().view(-1, m, k))
    return W / den.double()


# ---------------------------------------------------------------------------- text spans
@dataclass
class ExampleTokens:
    """An indexed example rebuilt from its text: ``sequence`` (as the indexer featurized it)
    and ``spans`` [(start, end)] per token, character offsets into the text (start == end for
    special tokens such as BOS, placed where they sit); ``matches`` False when its length
    differs from the stored token count (the salience is then of a retokenization)."""

    sequence: TokenSequence
    spans: list[tuple[int, int]]
    matches: bool


def example_tokens(tokenizer, text: str, n_tokens: int | None = None,
                   chunk: bool = False, max_len: int | None = None) -> ExampleTokens:
    """Rebuild an indexed example's tokens from its stored text as the indexer made them
    (indexer.documents.chunk_document): the text tokenized with the tokenizer's special tokens
    (a BOS when it adds one: every chunk of a long document starts with it too), cut to
    ``max_len``. For a chunk (``chunk``, an id DOCID#N) that is not its document's last, the
    indexer added no trailing special token: the variant whose length is the stored
    ``n_tokens`` is taken. ``matches`` says whether the length equals ``n_tokens``."""
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True,
                    return_special_tokens_mask=True)
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    special = list(enc["special_tokens_mask"])
    candidates = [len(ids)]
    if chunk:
        trail = len(ids)
        while trail > 1 and special[trail - 1]:
            trail -= 1
        candidates.append(trail)
    if max_len is not None:
        candidates = [min(c, max_len) for c in candidates]
    n = next((c for c in candidates if c == n_tokens), candidates[0])
    ids, offsets, special = ids[:n], offsets[:n], special[:n]
    spans, end = [], 0
    for (s, e), sp in zip(offsets, special):
        if sp:
            spans.append((end, end))
        else:
            spans.append((int(s), int(e)))
            end = int(e)
    return ExampleTokens(TokenSequence(tuple(ids), 1), spans,
                         n_tokens is None or n == n_tokens)


_WORD = re.compile(r"\S+")


def word_spans(text: str, spans: Sequence[tuple[int, int]],
               values: Sequence[float]) -> list[tuple[int, int, float]]:
    """Token values summed over the text's whitespace-separated words, in order: each token
    goes to the first word its characters touch (a token of whitespace only to the next word,
    or the last one); words that share a token merge into one span; a special token (start ==
    end) is a word of its own. The values of the words sum to those of the tokens."""
    words = [(m.start(), m.end()) for m in _WORD.finditer(text)]
    out: list[list] = []               # [start, end, value, is_special]
    w_of: dict[int, int] = {}          # word index -> entry in out
    starts = [w[0] for w in words]
    for (s, e), v in zip(spans, values):
        if s == e:
            out.append([s, e, float(v), True])
            continue
        if not words:
            out.append([s, e, float(v), False])
            continue
        # first word ending after s that starts before e; whitespace-only: the next word
        i = bisect.bisect_right(starts, s) - 1
        if i < 0 or words[i][1] <= s:
            i += 1
        i = min(i, len(words) - 1)
        last = max(i, bisect.bisect_left(starts, e) - 1)
        if i in w_of:
            entry = out[w_of[i]]
        else:
            entry = [words[i][0], words[i][1], 0.0, False]
            out.append(entry)
            w_of[i] = len(out) - 1
        entry[2] += float(v)
        for j in range(i + 1, last + 1):      # a token across several words: merge them
            if j in w_of and w_of[j] != w_of[i]:
                gone = w_of[j]
                entry[2] += out[gone][2]
                entry[1] = max(entry[1], out[gone][1])
                out[gone][2] = None
                for key, at in w_of.items():
                    if at == gone:
                        w_of[key] = w_of[i]
            w_of[j] = w_of[i]
            entry[1] = max(entry[1], words[j][1])
    merged = [o for o in out if o[2] is not None]
    merged.sort(key=lambda o: (o[0], not o[3]))
    return [(o[0], o[1], o[2]) for o in merged]


def warn_mismatch(example_id: str, n: int, n_tokens: int) -> None:
    """Warn that an example's retokenized text has another length than the index stored."""
    warnings.warn(f"{example_id}: its text retokenizes to {n} tokens but the index stored "
                  f"{n_tokens}: its salience is of the retokenized text", stacklevel=3)
