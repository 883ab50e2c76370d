"""The reports the viewer page shows (`tda view DIR`, `tda serve INDEX --reports DIR`): the
``.jsonl`` files of the paper's released format in a directory, read with
``pair_format.read_pair_jsonl`` and scored with ``pair_format.pair_metrics``.

A file is split into *runs* by its records' ``method`` (``tda eval run`` writes one method per
file, ``tda search --format pair`` one per list searched). The directory is listed again on
every request for the list, and a file is read again only when its size or mtime changed, so
a report written while serving shows up without a restart.
"""
from __future__ import annotations

import threading
from pathlib import Path

from tda.errors import PairFormatError
from tda.evaluation.pair_format import PairRecord, pair_metrics, read_pair_jsonl
from tda.schemas.viewer import (Passage, QueryMetrics, ReportList, ReportQueries, ReportQuery,
                                ReportRecord, ReportRun)

TOP = 10            # the k of recall@10 and precision@10


def report_files(directory: str | Path) -> list[Path]:
    """The ``.jsonl`` files of ``directory`` (or of its ``pairs/``, where ``tda eval run``
    writes them), sorted by name. PairFormatError naming the directory when there are none."""
    d = Path(directory)
    if not d.is_dir():
        raise PairFormatError(f"{d}: no such reports directory")
    files = sorted(d.glob("*.jsonl")) or sorted((d / "pairs").glob("*.jsonl"))
    if not files:
        raise PairFormatError(f"{d}: no .jsonl results files (the format of `tda eval run`'s "
                              f"pairs/ and `tda search --format pair`)")
    return files


def _metrics(records: list[PairRecord]) -> QueryMetrics | None:
    if not records or any(r.proponent_correct is None for r in records):
        return None
    m = pair_metrics(records, TOP)
    return QueryMetrics(mrr=m["mrr_first"], recall10=m[f"recall@{TOP}"],
                        precision10=m[f"precision@{TOP}"])


def _query(rec: PairRecord) -> ReportQuery:
    flags = rec.proponent_correct
    return ReportQuery(example_id=rec.example_id, prompt=rec.inputs_plaintext,
                       target=rec.targets_plaintext, relation=rec.relation,
                       model_knows=rec.model_knows,
                       top_correct=None if flags is None else bool(flags[:1] and flags[0]),
                       correct10=None if flags is None else sum(map(bool, flags[:TOP])),
                       metrics=_metrics([rec]))


class ReportDirectory:
    """The runs of one reports directory, as the page asks for them. Unknown run or query:
    KeyError."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        report_files(self.directory)              # refuse an empty directory at once
        self._files: dict[Path, tuple[tuple[int, int], dict[str, list[PairRecord]]]] = {}
        self._lock = threading.Lock()

    def _groups(self, path: Path) -> dict[str, list[PairRecord]]:
        st = path.stat()
        key = (st.st_size, st.st_mtime_ns)
        cached = self._files.get(path)
        if cached is None or cached[0] != key:
            groups: dict[str, list[PairRecord]] = {}
            for rec in read_pair_jsonl(path):
                groups.setdefault(rec.method or path.stem, []).append(rec)
            self._files[path] = cached = (key, groups)
        return cached[1]

    def _runs(self) -> dict[str, tuple[ReportRun, list[PairRecord]]]:
        out = {}
        with self._lock:
            for path in report_files(self.directory):
                groups = self._groups(path)
                for method, records in groups.items():
                    run_id = path.stem if len(groups) == 1 else f"{path.stem}:{method}"
                    out[run_id] = (ReportRun(id=run_id, file=path.name, method=method,
                                             queries=len(records), metrics=_metrics(records)),
                                   records)
        return out

    def runs(self) -> ReportList:
        """Every run, by file name then method order in the file."""
        return ReportList(directory=str(self.directory),
                          runs=[run for run, _ in self._runs().values()])

    def queries(self, run_id: str) -> ReportQueries:
        """The run's queries (no passages), in file order."""
        run, records = self._runs()[run_id]
        return ReportQueries(run=run, queries=[_query(r) for r in records])

    def record(self, run_id: str, example_id: str) -> ReportRecord:
        """One query's record with its proponents (correctness marks) and opponents."""
        run, records = self._runs()[run_id]
        rec = next((r for r in records if r.example_id == example_id), None)
        if rec is None:
            raise KeyError(example_id)
        flags = rec.proponent_correct or [None] * len(rec.proponents)
        return ReportRecord(
            run=run, query=_query(rec), fact_id=rec.fact_id,
            ground_truth_ids=rec.ground_truth_ids, model_confidence=rec.model_confidence,
            fact_frequency=rec.fact_frequency,
            proponents=[Passage(id=i, text=t, score=s, correct=c) for i, t, s, c in
                        zip(rec.proponent_ids, rec.proponents, rec.proponent_scores, flags)],
            opponents=[Passage(id=i, text=t, score=s) for i, t, s in
                       zip(rec.opponent_ids or [], rec.opponents or [],
                           rec.opponent_scores or [])])
