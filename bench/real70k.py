"""Make /work/artifacts/real70k: a ~70k-text real corpus and a small trained GPT-2 to index it.

corpus.jsonl: one JSON line {"id", "text", "source"} per unique text of
- every Wikipedia evidence sentence of ../shared/data/lama-trex (all P*.jsonl relations; the
  sentence is masked_sentence with its [MASK] replaced by obj_surface), deduplicated;
- the FewRel validation sentences (../shared/data/fewrel/val_wiki.json, tokens joined by single
  spaces), deduplicated (against each other and against the LAMA sentences).
Ids are stable whatever the order: ``trex-NNNNN`` numbers the LAMA sentences in first-seen order
(relation files sorted by name, facts and evidences in file order); ``fewrel-PID-NNN`` is the
sentence's relation and position in val_wiki.json. Lines are in a seeded random order (``--seed``),
so that any contiguous part of the corpus (the first or last 10% of a build) is a fair sample of
it; ``subset.jsonl`` is its first ``--train-texts`` lines.

model/: ``tda eval train --preset tiny --arch gpt2`` on subset.jsonl (tokenizer, weights,
optimizer.pt with AdamW's second moments, training.json), so
``tda index --model DIR/model --corpus DIR/corpus.jsonl --out ...`` works as is.

Writes DIR/README.txt (counts, commands) and DIR/stats.json. Run:
``python bench/real70k.py --out /work/artifacts/real70k``.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

from tda.evaluation.lama import read_facts  # noqa: E402


def lama_sentences(lama_dir: Path) -> list[str]:
    """Every distinct evidence sentence of every relation, first-seen order."""
    seen: dict[str, None] = {}
    for fact in read_facts(lama_dir):
        for s in fact.sentences:
            seen.setdefault(s)
    return list(seen)


def fewrel_sentences(path: Path) -> list[tuple[str, str]]:
    """(id, text) of every FewRel sentence, in file order (relations as in the file)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    return [(f"fewrel-{pid}-{i:03d}", " ".join(rec["tokens"]))
            for pid, recs in data.items() for i, rec in enumerate(recs)]


def build_corpus(data: Path, seed: int) -> tuple[list[dict], dict]:
    lama = lama_sentences(data / "lama-trex")
    records = [{"id": f"trex-{i:05d}", "text": t, "source": "lama-trex"}
               for i, t in enumerate(lama)]
    seen = set(lama)
    fewrel = fewrel_sentences(data / "fewrel" / "val_wiki.json")
    kept = 0
    for doc_id, text in fewrel:
        if text in seen or not text.strip():
            continue
        seen.add(text)
        records.append({"id": doc_id, "text": text, "source": "fewrel"})
        kept += 1
    random.Random(seed).shuffle(records)
    stats = {"lama_unique_sentences": len(lama), "fewrel_sentences": len(fewrel),
             "fewrel_unique_kept": kept, "texts": len(records),
             "text_bytes": sum(len(r["text"].encode()) for r in records), "seed": seed}
    return records, stats


def write_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


README = """real70k: a real ~70k-text corpus and a small GPT-2 trained on part of it
==========================================================================

Made by: {command}
(script bench/real70k.py of the tda repository; {seconds:.0f} s on a 2-core CPU).

corpus.jsonl  {texts:,} JSON lines {{"id", "text", "source"}}, {text_bytes:,} bytes of text:
  - {lama_unique_sentences:,} unique Wikipedia evidence sentences of ../shared/data/lama-trex (all
    20 relations; masked_sentence with [MASK] replaced by obj_surface), ids trex-NNNNN in
    first-seen order (relation files sorted by name);
  - {fewrel_unique_kept:,} unique FewRel validation sentences (of {fewrel_sentences:,}: tokens joined by
    single spaces; repeats dropped), ids fewrel-PID-NNN (relation, position in val_wiki.json).
  Lines are shuffled with seed {seed} (ids do not depend on the order).
  License: LAMA CC BY-NC 4.0 (research use, attribution), FewRel MIT (../shared/data/).
subset.jsonl  the first {train_texts:,} lines of corpus.jsonl: the model's training set.
model/        GPT-2 preset tiny ({parameters:,} parameters, 4 layers x 128, {vocab_size} BPE
              tokens, 256 positions), trained {epochs} epochs on subset.jsonl with AdamW
              (final loss {final_loss:.3f}); tokenizer, optimizer.pt (AdamW state with parameter
              names: the second moments tda index corrects with), training.json, loss.png.
              Made by: {train_command}
stats.json    these counts.

Use:
  tda index --model {out}/model --corpus {out}/corpus.jsonl --out INDEX
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/work/artifacts/real70k")
    ap.add_argument("--train-texts", type=int, default=20000,
                    help="texts the model is trained on (the first lines of the corpus)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records, stats = build_corpus(common.DATA, args.seed)
    write_jsonl(out / "corpus.jsonl", records)
    write_jsonl(out / "subset.jsonl", records[:args.train_texts])
    train = [sys.executable, "-m", "tda.cli", "eval", "train", "--corpus",
             str(out / "subset.jsonl"), "--out", str(out / "model"), "--preset", "tiny",
             "--arch", "gpt2", "--epochs", str(args.epochs), "--seed", str(args.seed), "--json"]
    info = json.loads(subprocess.run(train, check=True, stdout=subprocess.PIPE).stdout)
    stats.update(train_texts=args.train_texts, epochs=args.epochs,
                 parameters=info["parameters"], vocab_size=info["vocab_size"],
                 final_loss=info["final_loss"], train_seconds=info["seconds"])
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    seconds = time.perf_counter() - started
    (out / "README.txt").write_text(README.format(
        command="python bench/real70k.py " + " ".join(sys.argv[1:]),
        train_command="tda eval train --corpus {0}/subset.jsonl --out {0}/model --preset tiny "
                      "--arch gpt2 --epochs {1} --seed {2}".format(out, args.epochs, args.seed),
        seconds=seconds, out=out, **stats))
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
