"""Every error tda raises for a user to act on: one base, one kind per problem.

``TdaError`` is a ``ValueError``: the input (a path, a file, an option, a query) cannot be used
as given. Its message is one line that names the thing (file and line, index path, shard,
parameter) and the problem, and where there is one, what to do. The CLI prints it as
``error: MESSAGE`` and exits 1; any other exception is a bug and keeps its traceback.

This module imports nothing from tda, so every layer (schemas, engine, store, indexer,
searcher, evaluation) raises from here. Kinds (docs/design.md, "Errors")::

    TdaError
      ConfigError                 an option or config value out of range or unknown
      CorpusError                 the corpus cannot be read as asked (FILE:LINE: problem)
      QueryError                  a query or request that cannot be answered
        RecordError               a JSON Lines record of queries or requests (FILE:LINE)
        ProfileMissing            a search names a profile the index does not have
      ModelError                  a model directory that cannot be loaded
        ModelMissing              ... that is not there (also a FileNotFoundError)
      OptimizerStateError         optimizer state that cannot be read or does not fit the model
        OptimizerStateMissing     ... that is not there (also a FileNotFoundError)
      IndexUnusable               an index that cannot be used as asked
        IndexMissing              nothing at the path
        NotAnIndex                something at the path, but not a tda index
        IndexBusy                 another process is writing it
        IndexIncomplete           shards (or the index) not finished: rerun `tda index`
        IndexCorrupt              data that does not read back as written
          CorruptShard            ... in one shard (names it)
        IndexMismatch             the index and what it is used with do not fit
          SchemaVersionMismatch   written by another tda version: how to rebuild
          ModelMismatch           the model is not the one the index was built with
          SettingsMismatch        building into an index made with other settings
      ProfileError                a correction profile that cannot be built or used
      BuildError                  an index build that cannot go on
      SearchFailed                a dense search the workers did not answer (names the group)
      ServerLimitExceeded         a request over `tda serve`'s limits
      ServerError                 `tda serve` answered an error (SearchClient; has .status)
      EvalError                   evaluation inputs (benchmark files, reports)
        PrepareError              bad input to `tda eval prepare`
        PairFormatError           a results file not in the TrackStar release's format
"""
from __future__ import annotations


class TdaError(ValueError):
    """A problem the user can act on; the message is one line naming what and why."""


class ConfigError(TdaError):
    """An option or configuration value that is out of range, unknown or inconsistent."""


class CorpusError(TdaError):
    """The corpus cannot be read as asked; the message names the file (and line)."""


class QueryError(TdaError):
    """A query or search request that cannot be answered (empty target, too long, unknown
    profile, no BM25 index, no model loaded)."""


class RecordError(QueryError):
    """A JSON Lines record of queries or requests that cannot be used; starts with FILE:LINE."""


class ModelError(TdaError):
    """A model directory that cannot be loaded as a causal LM."""


class ModelMissing(ModelError, FileNotFoundError):
    """No model at the given path."""


class OptimizerStateError(TdaError):
    """Optimizer state that cannot be read, or whose parameters do not fit the model."""


class OptimizerStateMissing(OptimizerStateError, FileNotFoundError):
    """No optimizer state file where one was looked for."""


class IndexUnusable(TdaError):
    """The index cannot be used as asked; the message names it and the problem."""


class IndexMissing(IndexUnusable):
    """Nothing (or an empty directory) at the index path."""


class NotAnIndex(IndexUnusable):
    """Something is at the index path, but not a tda index."""


class IndexBusy(IndexUnusable):
    """Another live process is writing this index (the message names it)."""


class IndexIncomplete(IndexUnusable):
    """Shards that are not finished (no completion marker); `tda index` finishes them."""


class IndexCorrupt(IndexUnusable):
    """Index data that does not read back as it was written."""


class CorruptShard(IndexCorrupt):
    """A shard that is marked complete but does not read back as written."""


class IndexMismatch(IndexUnusable):
    """The index and what it is used with (a model, settings, this tda) do not fit."""


class SchemaVersionMismatch(IndexMismatch):
    """The manifest is of a schema version this tda does not read."""


class ModelMismatch(IndexMismatch):
    """The model given for queries is not the one the index was built with."""


class SettingsMismatch(IndexMismatch):
    """A build into an existing index with other settings (model, engine, corpus, layout)."""


class ProfileError(TdaError):
    """A correction profile that cannot be built or used as asked."""


class ProfileMissing(ProfileError, QueryError):
    """A search asks for a profile the index does not have (complete)."""


class BuildError(TdaError):
    """An index build that cannot go on; the message says why and what to do."""


class SearchFailed(TdaError):
    """A dense search that could not be answered: a group failed on its worker, or gave no
    answer within the timeout, or no worker is left (the message names the groups)."""


class ServerLimitExceeded(TdaError):
    """A request over the server's limits (k, query length, body size)."""


class ServerError(TdaError):
    """`tda serve` answered with an error; ``status`` is its HTTP status, ``detail`` its
    message."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail

    def __reduce__(self):
        return type(self), (self.status, self.detail)


class EvalError(TdaError):
    """Evaluation inputs that cannot be used (benchmark files, queries without proponents)."""


class PrepareError(EvalError):
    """Bad input to ``tda eval prepare``: the message names the file, relation or option."""


class PairFormatError(EvalError):
    """A results file not in the TrackStar release's .jsonl format (FILE:LINE: problem)."""


def one_line(error: BaseException) -> str:
    """The error's message on one line (internal whitespace collapsed)."""
    return " ".join(str(error).split())
