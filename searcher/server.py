"""`tda serve` and `tda view`: the Searcher over HTTP (FastAPI; OpenAPI at /openapi.json, docs at
/docs), and the browser page at / (``searcher/static/``).

Loads the model, the FAISS groups and BM25 once. Sync endpoints run in a thread pool, so
requests are served concurrently (query encoding and BM25 lookups take turns under locks; dense
fan-out runs in parallel on the dask workers). With a token, every endpoint but /health (and the
OpenAPI schema and docs) needs ``Authorization: Bearer TOKEN`` (compared in constant time, and
checked before a body is read). Limits: body size (counted as received, however it is framed),
k, query length, hits explained per call.

The page (``/``) and its assets (``/static/NAME``, a fixed list of files) hold no data and load
without the token; the page asks for it and sends it as a bearer header. They are served with a
Content-Security-Policy that allows only this origin's own script and style (no inline script,
no plugins, no framing), so a corpus text can never run as code even if it were inserted as
markup (the page only ever inserts it as text). Without a searcher (``tda view``) only the page,
/config, /health and the report endpoints exist; ``reports`` is any object with the methods of
``evaluation.reports.ReportDirectory`` (runs, queries, record), given by the command.
"""
from __future__ import annotations

import hmac
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from tda import __version__
from tda.errors import ServerLimitExceeded, TdaError
from tda.schemas.options import ServerLimits
from tda.schemas.search import (BatchRequest, BatchResponse, HealthResponse, IndexedExample,
                                SearchRequest, SearchResponse)
from tda.schemas.viewer import ReportList, ReportQueries, ReportRecord, ViewerConfig

STATIC = Path(__file__).with_name("static")
# name -> media type: the only files served from STATIC (no path is ever joined from a request)
ASSETS = {"app.js": "text/javascript; charset=utf-8", "app.css": "text/css; charset=utf-8",
          "favicon.svg": "image/svg+xml"}
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
            "connect-src 'self'; form-action 'none'; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
                "Cache-Control": "no-cache"}


def check_limits(req: SearchRequest, limits: ServerLimits) -> None:
    """ServerLimitExceeded when a request asks for more than the server allows."""
    if req.k > limits.max_k:
        raise ServerLimitExceeded(f"k={req.k} is over the limit of {limits.max_k}")
    if len(req.prompt) + len(req.target or "") > limits.max_query_chars:
        raise ServerLimitExceeded(f"query over {limits.max_query_chars} characters")


def create_app(searcher, token: str | None = None, limits: ServerLimits = ServerLimits(),
               reports=None):
    """The FastAPI app serving ``searcher`` (a tda.Searcher; None: reports only) and the page,
    with ``reports`` (a ReportDirectory, or None)."""
    # The body-size middleware answers 413 on any path, so every operation documents it.
    app = FastAPI(title="tda", version=__version__,
                  description="Training-data attribution: TrackStar and BM25 over one index.",
                  responses={413: {"description": "Body too large"}})
    bearer = HTTPBearer(auto_error=False)
    public = {"/health", app.openapi_url, app.docs_url, app.redoc_url,
              app.swagger_ui_oauth2_redirect_url, "/", *(f"/static/{n}" for n in ASSETS)}

    def authorized(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if token is None:
            return
        given = creds.credentials if creds is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.middleware("http")
    async def limits_and_token(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not (length.isascii() and length.isdigit())
                                   or int(length) > limits.max_body_bytes):
            return JSONResponse({"detail": f"request body over {limits.max_body_bytes} bytes"},
                                status_code=413)
        # The token is checked here too, before any body is read: FastAPI parses a JSON body
        # before it runs dependencies, so without this a malformed body got a 422 (or 400),
        # not a 401, from a client without the token.
        if token is not None and request.scope["path"] not in public:
            scheme, given = get_authorization_scheme_param(request.headers.get("authorization"))
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(),
                                                                     token.encode()):
                return JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
        if request.method in ("POST", "PUT", "PATCH"):
            # Count the bytes actually received, Content-Length or not: with chunked transfer
            # encoding the server ignores a (lying) Content-Length and would read it all.
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > limits.max_body_bytes:
                    return JSONResponse({"detail": f"request body over "
                                                   f"{limits.max_body_bytes} bytes"},
                                        status_code=413)
            request._body = body
        return await call_next(request)

    @app.get("/health", response_model=HealthResponse)
    def health() -> HealthResponse:
        return HealthResponse(token_required=token is not None)

    # ------------------------------------------------------------------ the page
    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return Response((STATIC / "index.html").read_bytes(), headers=PAGE_HEADERS,
                        media_type="text/html; charset=utf-8")

    @app.get("/static/{name}", include_in_schema=False)
    def asset(name: str) -> Response:
        if name not in ASSETS:
            raise HTTPException(404, "no such file")
        return Response((STATIC / name).read_bytes(), headers=PAGE_HEADERS,
                        media_type=ASSETS[name])

    @app.get("/config", response_model=ViewerConfig, dependencies=[Depends(authorized)],
             responses={401: {"description": "Missing or wrong token"}})
    def config() -> ViewerConfig:
        """What the page can offer: search (with which modes and profiles) and reports."""
        if searcher is None:
            return ViewerConfig(search=False, max_k=limits.max_k, reports=reports is not None)
        return ViewerConfig(search=True, bm25=searcher.bm25 is not None,
                            default_mode=searcher.default_mode, profiles=searcher.profiles(),
                            max_k=limits.max_k, reports=reports is not None)

    no_run = {404: {"description": "No such report run or query"},
              401: {"description": "Missing or wrong token"}}

    def report_call(fn, *args):
        if reports is None:
            raise HTTPException(404, "no reports are served (tda serve --reports DIR)")
        try:
            return fn(*args)
        except KeyError:
            raise HTTPException(404, "no such report run or query") from None
        except TdaError as e:       # a file turned unreadable, or the directory emptied
            raise HTTPException(404, str(e).splitlines()[0]) from None

    @app.get("/reports", response_model=ReportList, dependencies=[Depends(authorized)],
             responses={401: {"description": "Missing or wrong token"}})
    def report_runs() -> ReportList:
        """The report runs (one method's results in one .jsonl file) with their metrics."""
        if reports is None:
            return ReportList()
        return report_call(reports.runs)

    @app.get("/reports/{run}/queries", response_model=ReportQueries,
             dependencies=[Depends(authorized)], responses=no_run)
    def report_queries(run: str) -> ReportQueries:
        """Every query of a run with its metrics (no passages)."""
        return report_call(lambda: reports.queries(run))

    @app.get("/reports/{run}/queries/{example_id:path}", response_model=ReportRecord,
             dependencies=[Depends(authorized)], responses=no_run)
    def report_record(run: str, example_id: str) -> ReportRecord:
        """One query of a run: its proponents with correctness marks, and opponents."""
        return report_call(lambda: reports.record(run, example_id))

    if searcher is None:
        return app

    def answer(requests: list[SearchRequest]) -> list[SearchResponse]:
        try:
            if len(requests) > limits.max_batch:
                raise ServerLimitExceeded(f"{len(requests)} requests: the limit is "
                                          f"{limits.max_batch} per batch")
            for req in requests:
                check_limits(req, limits)
            explained = sum(r.k for r in requests if r.explain)
            if explained > limits.max_explain_hits:
                raise ServerLimitExceeded(
                    f"explain asks for the salience of {explained} hits: the limit is "
                    f"{limits.max_explain_hits} per call (lower k, or explain fewer requests)")
            return searcher.search_many(requests)
        except TdaError as e:      # over a limit, bad query, unknown profile, no BM25
            raise HTTPException(400, str(e).splitlines()[0]) from None

    @app.post("/search", response_model=SearchResponse, dependencies=[Depends(authorized)],
              responses={400: {"description": "The query cannot be answered"},
                         401: {"description": "Missing or wrong token"}})
    def search(req: SearchRequest) -> SearchResponse:
        return answer([req])[0]

    @app.post("/search/batch", response_model=BatchResponse,
              dependencies=[Depends(authorized)],
              responses={400: {"description": "A query cannot be answered (none is)"},
                         401: {"description": "Missing or wrong token"}})
    def search_batch(batch: BatchRequest) -> BatchResponse:
        """Many queries in one pass over the vectors; responses in request order, each equal
        to POST /search's for that request."""
        return BatchResponse(responses=answer(batch.requests))

    @app.get("/documents/{doc_id:path}", response_model=IndexedExample,
             dependencies=[Depends(authorized)],
             responses={404: {"description": "No example with this id"},
                        401: {"description": "Missing or wrong token"}})
    def document(doc_id: str) -> IndexedExample:
        try:
            return searcher.document(doc_id)
        except KeyError:
            raise HTTPException(404, f"no example {doc_id!r} in this index") from None

    @app.get("/info", dependencies=[Depends(authorized)],
             responses={401: {"description": "Missing or wrong token"}})
    def info() -> dict:
        return searcher.info()

    return app


def serve(searcher, host: str, port: int, token: str | None, limits: ServerLimits,
          log_level: str = "warning", reports=None) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn
    uvicorn.run(create_app(searcher, token, limits, reports), host=host, port=port,
                log_level=log_level, limit_concurrency=64, timeout_keep_alive=5)
