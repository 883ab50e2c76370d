"""`tda.SearchClient`: the HTTP API from Python, returning the same types as tda.Searcher."""
from __future__ import annotations

import httpx

from tda.schemas.search import Document, SearchRequest, SearchResponse


class SearchClientError(RuntimeError):
    """The server answered with an error; ``status`` is its HTTP status."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


class SearchClient:
    """Client of `tda serve`. ``token``: the server's bearer token, if it has one."""

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
            raise SearchClientError(resp.status_code, str(detail))
        return resp.json()

    def search(self, prompt: str, target: str | None = None, k: int = 10, mode: str = "both",
               profile: str | None = None) -> SearchResponse:
        req = SearchRequest(prompt=prompt, target=target, k=k, mode=mode, profile=profile)
        return SearchResponse.model_validate(self._call("POST", "/search",
                                                        json=req.model_dump()))

    def document(self, doc_id: str) -> Document:
        return Document.model_validate(self._call("GET", f"/documents/{doc_id}"))

    def info(self) -> dict:
        return self._call("GET", "/info")

    def health(self) -> bool:
        return self._call("GET", "/health").get("status") == "ok"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "SearchClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
