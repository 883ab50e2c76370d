"""Terminal rendering of search responses (rich)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from tda.schemas.search import SearchResponse


def _cell(hit, width: int) -> str:
    snippet = hit.snippet if len(hit.snippet) <= width else hit.snippet[:width - 1] + "…"
    return f"[bold]{hit.id}[/]  [dim]{hit.score:.4g}[/]\n{snippet}"


def render(resp: SearchResponse, console: Console | None = None) -> None:
    """Print a response as one table (a column per list) on ``console`` (default stdout)."""
    console = console or Console()
    how = " [dim](the model's greedy continuation)[/]" if resp.target_generated else ""
    console.print(f"[bold]{resp.prompt}[/][green]{resp.target}[/]{how}")
    columns = [(name, getattr(resp, name)) for name in ("trackstar", "bm25", "fused")
               if getattr(resp, name)]
    if not columns:
        console.print("[yellow]no results[/]")
        return
    width = max(40, (console.width - 6) // len(columns) - 4)
    table = Table(show_lines=True, expand=True)
    table.add_column("#", justify="right", width=3)
    titles = {"trackstar": "TrackStar (cosine)", "bm25": "BM25", "fused": "Fused (RRF)"}
    for name, _ in columns:
        table.add_column(titles[name], ratio=1)
    for i in range(max(len(hits) for _, hits in columns)):
        table.add_row(str(i + 1), *[_cell(hits[i], width * 3) if i < len(hits) else ""
                                    for _, hits in columns])
    console.print(table)
