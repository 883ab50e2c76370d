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


def top_words(salience, n: int = 5) -> list[tuple[str, float]]:
    """The ``n`` words of a Salience with the largest contributions (by absolute value), as
    (word, value), largest first; a special token shows as ``<s>``."""
    words = sorted(salience.words, key=lambda w: -abs(w.value))[:n]
    return [(salience.text[w.start:w.end] or "<s>", w.value) for w in words]


def marked_text(salience, n: int = 5, width: int = 400):
    """The example's text (cut to ``width`` characters) with its ``n`` most salient words
    marked: green where they add to the score, red where they take from it (rich Text)."""
    from rich.text import Text
    text = salience.text if len(salience.text) <= width else salience.text[:width - 1] + "…"
    out = Text(text)
    for w in sorted(salience.words, key=lambda w: -abs(w.value))[:n]:
        if w.end > w.start and w.start < len(text):
            out.stylize("bold green" if w.value > 0 else "bold red", w.start,
                        min(w.end, len(text)))
    return out


def render_salience(resp: SearchResponse, console: Console | None = None, n: int = 5) -> None:
    """Print each explained TrackStar hit: its score, the recomputed score (the sum of its
    token contributions), its text with the ``n`` most salient words marked, and those words
    with their contributions."""
    console = console or Console()
    hits = [h for h in resp.trackstar if h.salience is not None]
    if not hits:
        return
    console.print("[bold]Token salience[/] [dim](each token's share of the TrackStar score; "
                  "green adds, red takes away)[/]")
    for i, h in enumerate(hits):
        s = h.salience
        console.print(f"[bold]{i + 1}. {h.id}[/]  score {h.score:.4g}  "
                      f"[dim](tokens sum to {s.score:.4g})[/]")
        console.print(marked_text(s, n), highlight=False)
        console.print("   " + "  ".join(f"{word!r} {value:+.3g}"
                                        for word, value in top_words(s, n)),
                      highlight=False, markup=False)
