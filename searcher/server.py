"""`tda serve`: the Searcher over HTTP (FastAPI; OpenAPI at /openapi.json, docs at /docs).

Loads the model, the FAISS groups and BM25 once. Sync endpoints run in a thread pool, so
requests are served concurrently (query encoding and BM25 lookups take turns under locks; dense
fan-out runs in parallel on the dask workers). With a token, every endpoint but /health (and the
OpenAPI schema and docs) needs ``Authorization: Bearer TOKEN`` (compared in constant time, and
checked before a body is read). Limits: body size (counted as received, however it is framed),
k, query length, hits explained per call.
"""
from __future__ import annotations

import hmac
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param

from tda import __version__
from tda.errors import ServerLimitExceeded, TdaError
from tda.schemas.options import ServerLimits
from tda.schemas.search import (BatchRequest, BatchResponse, HealthResponse, IndexedExample,
                                SearchRequest, SearchResponse)


def check_limits(req: SearchRequest, limits: ServerLimits) -> None:
    """ServerLimitExceeded when a request asks for more than the server allows."""
    if req.k > limits.max_k:
        raise ServerLimitExceeded(f"k={req.k} is over the limit of {limits.max_k}")
    if len(req.prompt) + len(req.target or "") > limits.max_query_chars:
        raise ServerLimitExceeded(f"query over {limits.max_query_chars} characters")


def create_app(searcher, token: str | None = None, limits: ServerLimits = ServerLimits()):
    """The FastAPI app serving ``searcher`` (a tda.Searcher)."""
    # The body-size middleware answers 413 on any path, so every operation documents it.
    app = FastAPI(title="tda", version=__version__,
                  description="Training-data attribution: TrackStar and BM25 over one index.",
                  responses={413: {"description": "Body too large"}})
    bearer = HTTPBearer(auto_error=False)
    public = {"/health", app.openapi_url, app.docs_url, app.redoc_url,
              app.swagger_ui_oauth2_redirect_url}

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
        return HealthResponse()

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
          log_level: str = "warning") -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn
    uvicorn.run(create_app(searcher, token, limits), host=host, port=port,
                log_level=log_level, limit_concurrency=64, timeout_keep_alive=5)
