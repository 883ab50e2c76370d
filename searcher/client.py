"""`tda.SearchClient`: the HTTP API from Python, returning the same types as tda.Searcher."""
from __future__ import annotations

from urllib.parse import quote

import httpx

from tda.errors import ServerError
from tda.schemas.search import BatchRequest, IndexedExample, SearchRequest, SearchResponse


class SearchClient:
    """Client of `tda serve` at ``url`` (e.g. http://127.0.0.1:8080). ``token``: the server's
    bearer token, if it has one; ``timeout``: seconds per request. An error answer raises
    ServerError (``.status``, ``.detail``)."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 120.0):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kw) -> dict:
        resp = self._http.request(method, path, **kw)
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            raise ServerError(resp.status_code, str(detail))
        return resp.json()

    def search(self, prompt: str, target: str | None = None, k: int = 10,
               mode: str | None = None, profile: str | None = None,
               explain: bool = False) -> SearchResponse:
        """As ``tda.Searcher.search`` (same arguments, same SearchResponse), over HTTP: which
        training examples made the model say ``target`` after ``prompt``? ``target`` None:
        the model's greedy continuation; ``k`` results per list; ``mode`` trackstar | bm25 |
        both | fused (default: both when the index has BM25, else trackstar); ``profile`` a
        correction profile or None; ``explain`` token salience on each TrackStar hit
        (``hit.salience``). ServerError (HTTP 400) for a request the index cannot
        answer or over the server's limits."""
        req = SearchRequest(prompt=prompt, target=target, k=k, mode=mode, profile=profile,
                            explain=explain)
        return SearchResponse.model_validate(self._call("POST", "/search",
                                                        json=req.model_dump()))

    def search_many(self, requests: list[SearchRequest]) -> list[SearchResponse]:
        """As ``tda.Searcher.search_many``: several queries in one request (POST
        /search/batch), answered in one pass; responses in request order."""
        body = BatchRequest(requests=requests).model_dump()
        return [SearchResponse.model_validate(r)
                for r in self._call("POST", "/search/batch", json=body)["responses"]]

    def document(self, doc_id: str) -> IndexedExample:
        """One indexed example by id (ServerError 404 when unknown)."""
        # ids of chunks are DOCID#N: quoted, or '#' would start a URL fragment
        return IndexedExample.model_validate(
            self._call("GET", f"/documents/{quote(doc_id, safe='')}"))

    def info(self) -> dict:
        """What the served index holds (``tda info --json``)."""
        return self._call("GET", "/info")

    def health(self) -> bool:
        """True when the server answers /health."""
        return self._call("GET", "/health").get("status") == "ok"

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> "SearchClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
