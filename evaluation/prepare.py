"""Fact-tracing benchmark preparation (`tda eval prepare`): LAMA T-REx facts -> corpus + queries.

Output directory (``BENCH/``):

- ``corpus.jsonl``: one training text per line, ``{"id", "text", "kind", "facts"}``. ``kind`` is
  ``wikipedia`` (a LAMA evidence sentence, ``[MASK]`` filled with its ``obj_surface``),
  ``paraphrase`` (a ParaRel template filled with subject and object label) or ``distractor``
  (an unrelated sentence, e.g. FewRel). ``facts`` lists the ids of the queries whose fact the
  text states. Texts are unique; ids are ``w-``/``p-``/``d-`` + the first 12 hex digits of
  sha1(text) (longer only on a hash-prefix collision).
- ``queries.jsonl``: one query per sampled fact, ``{"id", "prompt", "target", "proponents",
  "wikipedia_proponents", "paraphrase_proponents", "relation", "template", "subject", "object",
  "uuid"}``. ``id`` is ``q-`` + 12 hex of sha1(uuid). The prompt is the template cut before
  ``[Y]`` with ``[X]`` filled; the target is ``" " + obj_label``. ``wikipedia_proponents`` are
  the fact's evidence sentences, ``paraphrase_proponents`` its paraphrases, ``proponents`` both
  (in corpus order). A sentence that is an evidence of several sampled facts (of any relation)
  is a proponent of each.
- ``--templates pararel`` picks per fact (seeded) among the relation's ParaRel patterns with
  ``[X]`` before a whole-word ``[Y]`` (not ``[Y]-born``), preferring those whose ``a``/``an``
  before ``[Y]`` fits the object; a lowercase first letter is capitalized. Paraphrases use every
  ParaRel pattern of the relation (``[Y]`` first included: they are statements), with
  ``a``/``an`` fixed, deduplicated, never the query's own template.
- ``manifest.json``: options, counts, per-relation template source, input and output sha256,
  and the attribution and licenses of the data.

Everything is a function of the inputs and the options: the same arguments give byte-identical
files. Randomness is drawn from ``random.Random`` seeded with strings built from the seed and a
stable key (relation, fact uuid), so e.g. one relation's sample does not depend on which other
relations are chosen, and a smaller ``facts`` per relation is a prefix of a larger one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any, Iterable

from tda.errors import PrepareError
from tda.evaluation.lama import Fact, read_facts
from tda.schemas.jsonl import read_jsonl
from tda.schemas.options import PrepareOptions

FORMAT = "tda-fact-bench/1"
KINDS: tuple[str, ...] = ("wikipedia", "paraphrase", "distractor")
_PREFIX = {"wikipedia": "w-", "paraphrase": "p-", "distractor": "d-"}

LICENSES: dict[str, dict[str, str]] = {
    "lama": {
        "name": "LAMA T-REx probe",
        "citation": "Petroni et al. 2019, \"Language Models as Knowledge Bases?\", EMNLP "
                    "(https://github.com/facebookresearch/LAMA); facts from Wikidata, sentences "
                    "from Wikipedia via T-REx (Elsahar et al. 2018)",
        "license": "CC BY-NC 4.0 (research use, with attribution; see LICENSE-LAMA.txt)",
        "used_for": "facts, query templates (lama), wikipedia sentences",
    },
    "pararel": {
        "name": "ParaRel",
        "citation": "Elazar et al. 2021, \"Measuring and Improving Consistency in Pretrained "
                    "Language Models\", TACL (https://github.com/yanaiela/pararel)",
        "license": "MIT",
        "used_for": "query templates (pararel), paraphrase sentences",
    },
    "fewrel": {
        "name": "FewRel",
        "citation": "Han et al. 2018, \"FewRel: A Large-Scale Supervised Few-Shot Relation "
                    "Classification Dataset with State-of-the-Art Evaluation\", EMNLP "
                    "(https://github.com/thunlp/FewRel); sentences from Wikipedia",
        "license": "MIT",
        "used_for": "distractor sentences",
    },
}


# ---------------------------------------------------------------------------------------------
# Templates


def normalize_template(pattern: str) -> str:
    """Collapse whitespace, drop spaces before punctuation and capitalize a lowercase first
    letter: ``"[X] plays in [Y] ."`` -> ``"[X] plays in [Y]."``, ``"the occupation of [X] is
    [Y]."`` -> ``"The occupation ..."``. Used to write paraphrases and to compare templates."""
    text = re.sub(r"\s+", " ", pattern).strip()
    text = re.sub(r" ([.,;:!?])", r"\1", text)
    return text[:1].upper() + text[1:] if text[:1].islower() else text


def x_before_y(pattern: str) -> bool:
    """One ``[X]`` and one ``[Y]``, ``[X]`` first: the template can be cut into a prompt."""
    return (pattern.count("[X]") == 1 and pattern.count("[Y]") == 1
            and pattern.index("[X]") < pattern.index("[Y]"))


def query_template_ok(pattern: str) -> bool:
    """A ParaRel pattern usable for queries: ``[X]`` before ``[Y]``, and ``[Y]`` a whole word
    (not ``[Y]-born``: the prompt plus target would end inside a word)."""
    if not x_before_y(pattern):
        return False
    after = pattern[pattern.index("[Y]") + 3:]
    return not after or not (after[0].isalnum() or after[0] in "-'’")


_ARTICLE = re.compile(r"\b([Aa]n?) \[Y\]")


def _article(obj: str) -> str:
    return "an" if obj[:1].lower() in ("a", "e", "i", "o", "u") else "a"


def article_agrees(pattern: str, obj: str) -> bool:
    """False when the pattern says ``a [Y]``/``an [Y]`` and the other article fits ``obj``."""
    m = _ARTICLE.search(pattern)
    return m is None or m.group(1).lower() == _article(obj)


def make_prompt(pattern: str, subject: str) -> str:
    """The template cut before ``[Y]`` with ``[X]`` filled, trailing whitespace stripped (and a
    lowercase first letter of the template capitalized, as in ``normalize_template``)."""
    if not x_before_y(pattern):
        raise PrepareError(f"template {pattern!r} does not have [X] before [Y]")
    head = pattern[:pattern.index("[Y]")].lstrip()
    if head[:1].islower():
        head = head[:1].upper() + head[1:]
    return head.replace("[X]", subject).rstrip()


def fill_template(pattern: str, subject: str, obj: str) -> str:
    """A statement: the normalized template with ``[X]`` = subject and ``[Y]`` = object, and
    ``a``/``an`` before ``[Y]`` made to fit the object (``an Italian``, ``a Detroit-born``)."""
    pattern = _ARTICLE.sub(
        lambda m: (_article(obj).capitalize() if m.group(1)[0] == "A" else _article(obj))
        + " [Y]", normalize_template(pattern))
    return re.sub(r"\[([XY])\]", lambda m: subject if m.group(1) == "X" else obj, pattern)


def read_lama_templates(path: Path) -> dict[str, str]:
    """relation -> LAMA template from ``relations.jsonl``."""
    out = {}
    for i, rec in read_jsonl(path, PrepareError):
        if not isinstance(rec.get("relation"), str) or not isinstance(rec.get("template"), str):
            raise PrepareError(f"{path}:{i}: needs string fields 'relation' and 'template'")
        out[rec["relation"]] = rec["template"]
    return out


def read_pararel_templates(path: Path) -> list[str]:
    """The relation's ParaRel patterns, deduplicated after normalization, in file order."""
    out: dict[str, str] = {}
    for i, rec in read_jsonl(path, PrepareError):
        pattern = rec.get("pattern")
        if not isinstance(pattern, str) or pattern.count("[X]") != 1 \
                or pattern.count("[Y]") != 1:
            raise PrepareError(f"{path}:{i}: 'pattern' must hold one [X] and one [Y]")
        out.setdefault(normalize_template(pattern), pattern)
    return list(out.values())


# ---------------------------------------------------------------------------------------------
# Distractors


_NO_SPACE_BEFORE = {",", ".", ";", ":", "!", "?", ")", "]", "}", "%", "...", "..", "'s", "’s",
                    "n't", "'re", "'ve", "'ll", "'d", "'m", "’", "”"}
_NO_SPACE_AFTER = {"(", "[", "{", "$", "“", "‘", "#"}
_JOINERS = {"-", "/"}


def detokenize(tokens: Iterable[str]) -> str:
    """Join word tokens into text: no space before punctuation and closing brackets or quotes,
    none after opening ones, none around hyphens and slashes; ``"`` alternates open/close."""
    out: list[str] = []
    prev = ""
    open_quote = False
    for raw in tokens:
        tok = raw.strip()
        if not tok:
            continue
        space = bool(out)
        if tok == '"':
            if open_quote:
                space = False
            open_quote = not open_quote
        elif tok in _NO_SPACE_BEFORE or tok in _JOINERS:
            space = False
        if prev in _NO_SPACE_AFTER or prev in _JOINERS or prev.startswith("(") \
                or (prev == '"' and open_quote and tok != '"'):
            space = False
        if space:
            out.append(" ")
        out.append(tok)
        prev = tok
    return "".join(out)


def read_distractors(path: Path) -> list[str]:
    """Distractor texts, deduplicated, in file order (FewRel: relations in sorted order)."""
    if not path.is_file():
        raise PrepareError(f"distractors file not found: {path}")
    texts: list[str] = []
    if path.suffix == ".jsonl":
        for i, rec in read_jsonl(path, PrepareError):
            if not isinstance(rec.get("text"), str):
                raise PrepareError(f"{path}:{i}: JSON Lines distractors need a 'text' field")
            texts.append(rec["text"])
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise PrepareError(f"{path}: not JSON ({e})") from None
        if not isinstance(data, dict):
            raise PrepareError(f"{path}: expected FewRel JSON, an object relation -> list")
        for rel in sorted(data):
            recs = data[rel]
            if not isinstance(recs, list):
                raise PrepareError(f"{path}: {rel}: expected a list of FewRel records")
            for i, rec in enumerate(recs):
                tokens = rec.get("tokens") if isinstance(rec, dict) else None
                if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
                    raise PrepareError(f"{path}: {rel}[{i}]: expected 'tokens', a list of "
                                       "strings")
                texts.append(detokenize(tokens))
    return list(dict.fromkeys(t for t in (s.strip() for s in texts) if t))


# ---------------------------------------------------------------------------------------------
# Sampling


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rng(seed: int, *key: str) -> random.Random:
    # str seeds are hashed with sha512 by random.Random: stable across runs and platforms.
    return random.Random("\x1f".join([str(seed), *key]))


def split_evenly(total: int, available: dict[str, int]) -> dict[str, int]:
    """``total`` spread as evenly as possible over the keys (in order; earlier keys get the
    remainder), none above its ``available``; what a key cannot take goes to the others."""
    if total > sum(available.values()):
        raise PrepareError(f"asked for {total} facts, but the relations have only "
                           f"{sum(available.values())} with evidence sentences "
                           f"({', '.join(f'{r}: {n}' for r, n in available.items())})")
    share = {k: 0 for k in available}
    left = total
    open_keys = [k for k in available if available[k] > 0]
    while left > 0:
        base, extra = divmod(left, len(open_keys))
        for i, k in enumerate(open_keys):
            take = min(base + (1 if i < extra else 0), available[k] - share[k])
            share[k] += take
            left -= take
        open_keys = [k for k in open_keys if share[k] < available[k]]
    return share


def _relation_sort_key(rel: str) -> tuple[int, str]:
    m = re.fullmatch(r"P(\d+)", rel)
    return (int(m.group(1)) if m else 1 << 62, rel)


def _available_relations(lama_dir: Path) -> list[str]:
    return sorted((p.stem for p in lama_dir.glob("P*.jsonl")), key=_relation_sort_key)


# ---------------------------------------------------------------------------------------------
# The corpus


class _Corpus:
    """Unique texts with stable ids; the first kind a text is added with wins."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.by_text: dict[str, dict[str, Any]] = {}
        self.ids: set[str] = set()

    def add(self, text: str, kind: str) -> tuple[dict[str, Any], bool]:
        rec = self.by_text.get(text)
        if rec is not None:
            return rec, False
        digest = _sha1(text)
        n = 12
        while _PREFIX[kind] + digest[:n] in self.ids:      # a hash-prefix collision
            n += 4
        rec = {"id": _PREFIX[kind] + digest[:n], "text": text, "kind": kind, "facts": []}
        self.ids.add(rec["id"])
        self.by_text[text] = rec
        self.records.append(rec)
        return rec, True


def _dump_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> str:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def prepare(lama_dir: str | Path, out_dir: str | Path, options: PrepareOptions | None = None,
            pararel_dir: str | Path | None = None) -> dict[str, Any]:
    """Build a fact-tracing benchmark in ``out_dir`` (``corpus.jsonl``, ``queries.jsonl``,
    ``manifest.json``) from the LAMA T-REx files in ``lama_dir``; returns the manifest.

    ``pararel_dir`` (default: ``pararel-templates`` next to ``lama_dir``) holds one
    ``<relation>.jsonl`` of ParaRel patterns per relation; it is read only for
    ``templates="pararel"`` or ``paraphrases > 0``. Paths are recorded in the manifest as given.
    Raises ``PrepareError`` (a ``ValueError``) on bad input.
    """
    options = options or PrepareOptions()
    lama_dir = Path(lama_dir)
    out_dir = Path(out_dir)
    pararel_dir = Path(pararel_dir) if pararel_dir is not None \
        else lama_dir.parent / "pararel-templates"
    if not lama_dir.is_dir():
        raise PrepareError(f"LAMA directory not found: {lama_dir}")
    available = _available_relations(lama_dir)
    if not available:
        raise PrepareError(f"{lama_dir}: no LAMA relation files (P*.jsonl)")
    relations = options.relation_list() or available
    unknown = [r for r in relations if r not in available]
    if unknown:
        raise PrepareError(
            f"unknown relation{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}: no "
            f"{unknown[0]}.jsonl in {lama_dir} (available: {', '.join(available)})")
    relations = sorted(relations, key=_relation_sort_key)
    use_pararel = options.templates == "pararel" or options.paraphrases > 0
    if use_pararel and not pararel_dir.is_dir():
        raise PrepareError(f"ParaRel template directory not found: {pararel_dir} (needed for "
                           "templates='pararel' or paraphrases > 0)")
    inputs: dict[str, str] = {}

    # Templates per relation.
    lama_templates_path = lama_dir / "relations.jsonl"
    lama_templates: dict[str, str] = {}
    if lama_templates_path.is_file():
        lama_templates = read_lama_templates(lama_templates_path)
        inputs[str(lama_templates_path)] = _file_sha256(lama_templates_path)
    pararel: dict[str, list[str]] = {}
    template_info: dict[str, dict[str, Any]] = {}
    pools: dict[str, list[str]] = {}                 # relation -> ParaRel query templates
    for rel in relations:
        path = pararel_dir / f"{rel}.jsonl"
        if use_pararel and path.is_file():
            pararel[rel] = read_pararel_templates(path)
            inputs[str(path)] = _file_sha256(path)
        query_pool = [t for t in pararel.get(rel, []) if query_template_ok(t)] \
            if options.templates == "pararel" else []
        info: dict[str, Any] = {"query_templates": "pararel" if query_pool else "lama"}
        if not query_pool:
            lama_t = lama_templates.get(rel)
            if lama_t is None:
                raise PrepareError(f"relation {rel}: no template in {lama_templates_path}")
            if not x_before_y(lama_t):
                raise PrepareError(f"relation {rel}: its LAMA template {lama_t!r} does not put "
                                   "[X] before [Y], so it cannot be cut into a prompt")
            info["lama_template"] = lama_t
            if options.templates == "pararel":
                info["note"] = ("no ParaRel templates for this relation: LAMA template used"
                                if rel not in pararel else
                                "no ParaRel template with [X] before a whole-word [Y]: LAMA "
                                "template used")
        else:
            info["pararel_templates"] = len(query_pool)
        if options.paraphrases:
            info["paraphrase_templates"] = len(pararel.get(rel, []))
            if rel not in pararel:
                info["paraphrase_note"] = "no ParaRel templates for this relation: no paraphrases"
        template_info[rel] = info
        pools[rel] = query_pool

    # Facts: all with evidence, then a seeded per-relation sample.
    by_rel: dict[str, list[Fact]] = {}
    for rel in relations:
        path = lama_dir / f"{rel}.jsonl"
        inputs[str(path)] = _file_sha256(path)
        facts = [f for f in read_facts(lama_dir, [rel]) if any(s.strip() for s in f.sentences)]
        by_rel[rel] = facts
    counts_available = {rel: len(by_rel[rel]) for rel in relations}
    share = split_evenly(options.facts, counts_available) if options.facts else counts_available
    sampled: list[Fact] = []
    for rel in relations:
        order = list(range(len(by_rel[rel])))
        _rng(options.seed, "facts", rel).shuffle(order)
        sampled.extend(by_rel[rel][i] for i in sorted(order[:share[rel]]))

    # Queries.
    queries: list[dict[str, Any]] = []
    query_ids: set[str] = set()
    for fact in sampled:
        pool = pools[fact.relation]
        if pool:    # prefer templates whose a/an before [Y] fits the object
            fitting = [t for t in pool if article_agrees(t, fact.object)] or pool
            template = _rng(options.seed, "template", fact.uuid).choice(fitting)
        else:
            template = lama_templates[fact.relation]
        qid = "q-" + _sha1(fact.uuid)[:12]
        if qid in query_ids:
            raise PrepareError(f"{fact.relation}: duplicate fact uuid {fact.uuid}")
        query_ids.add(qid)
        queries.append({"id": qid, "prompt": make_prompt(template, fact.subject),
                        "target": " " + fact.object, "proponents": [],
                        "wikipedia_proponents": [], "paraphrase_proponents": [],
                        "relation": fact.relation, "template": template,
                        "subject": fact.subject, "object": fact.object, "uuid": fact.uuid})

    # Corpus: wikipedia sentences, then paraphrases, then distractors.
    corpus = _Corpus()
    stated: dict[str, dict[str, None]] = {}          # corpus id -> query ids, in order
    for fact, query in zip(sampled, queries):
        for sentence in fact.sentences:
            if sentence.strip():
                rec, _ = corpus.add(sentence, "wikipedia")
                if query["id"] not in stated.setdefault(rec["id"], {}):
                    stated[rec["id"]][query["id"]] = None
                    query["wikipedia_proponents"].append(rec["id"])
    n_paraphrase_statements = 0
    if options.paraphrases:
        for fact, query in zip(sampled, queries):
            # Distinct statements, none the query's own template (also not after a/an fixing).
            used = normalize_template(query["template"])
            banned = {fill_template(used, fact.subject, fact.object)}
            candidates: dict[str, None] = {}
            for t in pararel.get(fact.relation, []):
                text = fill_template(t, fact.subject, fact.object)
                if normalize_template(t) != used and text not in banned:
                    candidates.setdefault(text)
            k = min(options.paraphrases, len(candidates))
            chosen = _rng(options.seed, "paraphrases", fact.uuid).sample(list(candidates), k)
            for text in chosen:
                rec, _ = corpus.add(text, "paraphrase")
                n_paraphrase_statements += 1
                if query["id"] not in stated.setdefault(rec["id"], {}):
                    stated[rec["id"]][query["id"]] = None
                    query["paraphrase_proponents"].append(rec["id"])
    n_distractors_read = 0
    distractors_path = Path(options.distractors) if options.distractors else None
    if distractors_path is not None:
        texts = read_distractors(distractors_path)
        inputs[str(distractors_path)] = _file_sha256(distractors_path)
        n_distractors_read = len(texts)
        texts = [t for t in texts if t not in corpus.by_text]
        if options.distractor_count:
            if options.distractor_count > len(texts):
                raise PrepareError(f"asked for {options.distractor_count} distractors, but "
                                   f"{distractors_path} has {len(texts)} usable sentences")
            order = list(range(len(texts)))
            _rng(options.seed, "distractors").shuffle(order)
            texts = [texts[i] for i in sorted(order[:options.distractor_count])]
        for text in texts:
            corpus.add(text, "distractor")

    position = {rec["id"]: i for i, rec in enumerate(corpus.records)}
    for rec in corpus.records:
        rec["facts"] = list(stated.get(rec["id"], {}))
    for query in queries:
        query["proponents"] = sorted(
            set(query["wikipedia_proponents"]) | set(query["paraphrase_proponents"]),
            key=position.__getitem__)
        query["wikipedia_proponents"].sort(key=position.__getitem__)
        query["paraphrase_proponents"].sort(key=position.__getitem__)

    # Write.
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus_sha = _dump_jsonl(out_dir / "corpus.jsonl", corpus.records)
    queries_sha = _dump_jsonl(out_dir / "queries.jsonl", queries)

    by_kind = {kind: sum(r["kind"] == kind for r in corpus.records) for kind in KINDS}
    wiki_sentences = [r for r in corpus.records if r["kind"] == "wikipedia"]
    used_sources = ["lama"] + (["pararel"] if pararel else []) + \
        (["fewrel"] if distractors_path is not None and distractors_path.suffix != ".jsonl"
         else [])
    licenses = [dict(LICENSES[s], source=s) for s in used_sources]
    licenses[0]["license_file"] = str(lama_dir / "LICENSE-LAMA.txt")
    if distractors_path is not None and distractors_path.suffix == ".jsonl":
        licenses.append({"name": "distractors", "source": str(distractors_path),
                         "license": "see the distractors file's origin"})
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "options": options.to_dict(),
        "relations": relations,
        "counts": {
            "facts": len(sampled),
            "queries": len(queries),
            "facts_by_relation": {rel: share[rel] for rel in relations},
            "facts_available_by_relation": counts_available,
            "sentences": {**by_kind, "total": len(corpus.records)},
            "wikipedia_sentences_stating_several_facts":
                sum(len(r["facts"]) > 1 for r in wiki_sentences),
            "paraphrase_statements": n_paraphrase_statements,
            "distractors_in_file": n_distractors_read,
            "proponents_per_query": _stats([len(q["proponents"]) for q in queries]),
        },
        "templates": template_info,
        "sources": {"lama": str(lama_dir),
                    "pararel": str(pararel_dir) if pararel else None,
                    "distractors": str(distractors_path) if distractors_path else None},
        "inputs_sha256": dict(sorted(inputs.items())),
        "outputs_sha256": {"corpus.jsonl": corpus_sha, "queries.jsonl": queries_sha},
        "data_licenses": licenses,
        "license_note": (
            "Derived from LAMA T-REx (Petroni et al. 2019; CC BY-NC 4.0: non-commercial "
            "research use with attribution)"
            + (", ParaRel (Elazar et al. 2021; MIT)" if pararel else "")
            + (", FewRel (Han et al. 2018; MIT)" if "fewrel" in used_sources else "")
            + ". The files keep these licenses and need this attribution."),
    }
    (out_dir / "manifest.json").write_text(
        json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def _stats(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "mean": 0.0, "max": 0}
    return {"min": min(values), "mean": round(sum(values) / len(values), 3), "max": max(values)}


# ---------------------------------------------------------------------------------------------
# The demo's sample benchmark (evaluation/demo_data/), shipped in the repository

DEMO_DIR = Path(__file__).resolve().parent / "demo_data"
DEMO_OPTIONS = PrepareOptions(
    relations="P19,P136,P140,P176,P364,P413,P1303,P1412", facts=160, templates="lama",
    paraphrases=2, distractors="{data}/fewrel/val_wiki.json", distractor_count=100, seed=0)
DEMO_COMMAND = "python -m tda.evaluation.prepare ../shared/data"

_NOTICE = """\
# Demo benchmark data: attribution and licenses

The files in this directory (`corpus.jsonl`, `queries.jsonl`, `manifest.json`) are a small
sample benchmark for `tda demo`, written by `tda.evaluation.prepare.prepare` from public data
that nobody on this project wrote. They keep the licenses of their sources.

Contents (seed {seed}):

- {facts} facts of {n_relations} LAMA T-REx relations ({relations}), one query each
  ({templates} templates), in `queries.jsonl`;
- {total} texts in `corpus.jsonl`: {wikipedia} Wikipedia sentences that state the facts,
  {paraphrase} paraphrases ({paraphrases} per fact, from ParaRel templates) and {distractor}
  unrelated FewRel sentences.

Formats: the docstring of `evaluation/prepare.py`; provenance and counts: `manifest.json`.

## Sources

- **LAMA T-REx** (facts, query templates, Wikipedia sentences): Fabio Petroni, Tim Rocktäschel,
  Patrick Lewis, Anton Bakhtin, Yuxiang Wu, Alexander H. Miller, Sebastian Riedel. 2019.
  "Language Models as Knowledge Bases?" EMNLP. https://github.com/facebookresearch/LAMA. The
  sentences come from Wikipedia via T-REx (Elsahar et al. 2018), the facts from Wikidata.
  License: **Creative Commons Attribution-NonCommercial 4.0 International (CC BY-NC 4.0)**,
  https://creativecommons.org/licenses/by-nc/4.0/ (non-commercial use, with attribution).
  Modifications: a seeded sample of facts; each evidence sentence's `[MASK]` filled with its
  object surface form and duplicates removed; query prompts made from the LAMA templates;
  re-formatted as JSON Lines.
- **ParaRel** (templates of the paraphrase sentences): Yanai Elazar, Nora Kassner, Shauli
  Ravfogel, Abhilasha Ravichander, Eduard Hovy, Hinrich Schütze, Yoav Goldberg. 2021.
  "Measuring and Improving Consistency in Pretrained Language Models." TACL.
  https://github.com/yanaiela/pararel. License: MIT (below).
- **FewRel** (distractor sentences): Xu Han, Hao Zhu, Pengfei Yu, Ziyun Wang, Yuan Yao,
  Zhiyuan Liu, Maosong Sun. 2018. "FewRel: A Large-Scale Supervised Few-Shot Relation
  Classification Dataset with State-of-the-Art Evaluation." EMNLP.
  https://github.com/thunlp/FewRel. Validation split, tokens joined into text. License: MIT
  (below).

## Regenerating

From the repository root, with the data of `../shared/data` (see its README) and the project's
virtual environment active:

```sh
{command}
```

which calls `tda.evaluation.prepare.write_demo_data("../shared/data")`, i.e. `prepare()` with
`DEMO_OPTIONS`, the equivalent of

```sh
tda eval prepare --lama ../shared/data/lama-trex --relations {relations_csv} \\
    --facts {facts} --templates {templates} --paraphrases {paraphrases} \\
    --distractors ../shared/data/fewrel/val_wiki.json --distractor-count {distractor_count} \\
    --seed {seed} --out evaluation/demo_data
```

The output is byte-identical for the same data;
`tests/test_eval_prepare.py` checks that the files here are up to date.

## MIT license of ParaRel

```
{pararel_license}
```

## MIT license of FewRel

```
{fewrel_license}
```
"""


def write_demo_data(data_dir: str | Path = "../shared/data",
                    out_dir: str | Path = DEMO_DIR) -> dict[str, Any]:
    """(Re)generate the demo benchmark (``DEMO_OPTIONS``) and its ``NOTICE.md`` from the
    shared data directory (holding ``lama-trex/``, ``pararel-templates/``, ``fewrel/``)."""
    data_dir = Path(data_dir)
    options = dataclasses.replace(
        DEMO_OPTIONS, distractors=DEMO_OPTIONS.distractors.format(data=data_dir.as_posix()))
    manifest = prepare(data_dir / "lama-trex", out_dir, options,
                       pararel_dir=data_dir / "pararel-templates")
    counts = manifest["counts"]
    licenses = {}
    for name, path in (("pararel", data_dir / "pararel-templates" / "LICENSE"),
                       ("fewrel", data_dir / "fewrel" / "LICENSE")):
        if not path.is_file():
            raise PrepareError(f"license file not found: {path}")
        licenses[name] = path.read_text(encoding="utf-8").strip()
    notice = _NOTICE.format(
        facts=counts["facts"], n_relations=len(manifest["relations"]),
        relations=", ".join(manifest["relations"]), relations_csv=options.relations,
        templates=options.templates, paraphrases=options.paraphrases,
        distractor_count=options.distractor_count, seed=options.seed, command=DEMO_COMMAND,
        pararel_license=licenses["pararel"], fewrel_license=licenses["fewrel"],
        **counts["sentences"])
    (Path(out_dir) / "NOTICE.md").write_text(notice, encoding="utf-8")
    return manifest


if __name__ == "__main__":      # python -m tda.evaluation.prepare [DATA_DIR [OUT_DIR]]
    import sys

    print(json.dumps(write_demo_data(*sys.argv[1:3])["counts"], indent=2))
