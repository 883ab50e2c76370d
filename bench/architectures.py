"""The architecture matrix as figures: per architecture, the share of the model's matrix
parameters tda tracks and the largest relative error of its vectors against the float64
brute-force reference (tests/reference.py), for the exact path (the model's trained AdamW
moments) and the factored path with a rank-one V (where it is exact).

Prints JSON (and writes it with --out). Same tiny models as tests/test_architectures.py.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

from tda.tests import reference  # noqa: E402

from tda.engine import Featurizer, Moment, SecondMoments, TrackStarConfig  # noqa: E402
from tda.engine import load_second_moments  # noqa: E402
from tda.evaluation.architectures import ARCHITECTURES, tiny_model  # noqa: E402
from tda.evaluation.tokenizer import train_bpe_tokenizer  # noqa: E402


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((x - ref).norm(dim=-1) / ref.norm(dim=-1)).max())


def rank_one_moments(model, gen) -> SecondMoments:
    """V = outer(u, v) per matrix (per expert for a 3-D bank): the factored correction's exact
    case."""
    moments = {}
    for name, p in model.named_parameters():
        if p.dim() in (2, 3):
            lead = p.shape[:-2]
            u = torch.rand(*lead, p.shape[-2], generator=gen, dtype=torch.float64) + 0.1
            v = torch.rand(*lead, p.shape[-1], generator=gen, dtype=torch.float64) + 0.1
            moments[name] = Moment(full=u.unsqueeze(-1) * v.unsqueeze(-2) * 1e-4)
    return SecondMoments(moments, source="rank one")


def check(name: str, tok, train_texts, texts, k: int = 4) -> dict:
    start = time.perf_counter()
    tiny = tiny_model(name, tok, train_texts)
    model = tiny.model.double()
    with tempfile.TemporaryDirectory() as d:
        torch.save(tiny.optimizer_state, Path(d) / "optimizer.pt")
        moments = load_second_moments(Path(d) / "optimizer.pt", model)
    cfg = TrackStarConfig(projection_dim=k, correction="exact", unit_normalize=False,
                          dtype="float64")
    f = Featurizer(model, tok, cfg, optimizer_state=moments)
    seqs = f.example_sequences(texts)
    from tda.engine import collate
    got = f.raw_features(collate(seqs, f.pad_id))[0]
    exact_err = rel_err(got, reference.reference_vectors(f, seqs))
    rank1 = rank_one_moments(model, torch.Generator().manual_seed(0))
    base = cfg.replace(epsilon=0.0)
    fac = Featurizer(model, tok, base.replace(correction="factored"), rank1,
                     tracking=f.tracking)
    ex = Featurizer(model, tok, base.replace(correction="exact"), rank1, tracking=f.tracking)
    fac_phi = fac.raw_features(collate(seqs, fac.pad_id))[0]
    factored_err = rel_err(fac_phi, reference.reference_vectors(ex, seqs, "exact"))
    t = f.tracking
    # before this engine tracked experts and routers: nn.Linear and Conv1D modules only
    old_rule = sum(m.weight.numel() for m in model.modules()
                   if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D")
    return {"architecture": name, "class": type(model).__name__,
            "tracked_share": round(t.share, 4),
            "share_linear_modules_only": round(min(old_rule / t.universe, 1.0), 4),
            "tracked_parameters": t.tracked_numel,
            "matrix_parameters": t.universe, "tracked_weights": len(t.weights),
            "left_out": t.notes, "exact_vs_reference_max_rel_err": exact_err,
            "factored_rank1_vs_reference_max_rel_err": factored_err,
            "examples": len(seqs), "seconds": round(time.perf_counter() - start, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--architectures", default=",".join(ARCHITECTURES))
    ap.add_argument("--out", default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sentences = common.sentences(1000)
    tok = train_bpe_tokenizer(sentences, vocab_size=512)
    short = [s for s in sentences if len(tok(s)["input_ids"]) <= 40]
    rows = [check(n, tok, short[:32], short[-3:])
            for n in args.architectures.split(",")]
    for r in rows:
        print(f"{r['architecture']:12s} share {r['tracked_share']:.3f}  exact {r['exact_vs_reference_max_rel_err']:.1e}"
              f"  factored(rank 1) {r['factored_rank1_vs_reference_max_rel_err']:.1e}  "
              f"{r['seconds']:.1f}s {r['left_out']}", file=sys.stderr)
    common.emit({"torch": torch.__version__, "architectures": rows}, args.out)


if __name__ == "__main__":
    main()
