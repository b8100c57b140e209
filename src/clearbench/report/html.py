"""One self-contained HTML page of a run: the leaderboard, the paper's tables, every plot and
the CLEAR contact sheets. Images are embedded as data URIs, so the file opens anywhere, offline,
and can be mailed or attached to CI as it is.

Torch-free: it only reads what the leaderboard, vision report and CLEAR builder wrote.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import pandas as pd

from clearbench.io import ArtifactError, first_line, write_text_atomic

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222 }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: 12px; display: block;
        overflow-x: auto }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; white-space: nowrap }
th { background: #f0f0f0 }
figure { margin: 1em 0 2em }
img { max-width: 100%; border: 1px solid #ddd }
figcaption, .note { color: #666; font-style: italic }
"""

# --dump-dom cannot tell a decoded image from a broken one; this leaves the count in the DOM
SCRIPT = """
window.addEventListener("load", () => {
  const ok = [...document.images].filter((i) => i.complete && i.naturalWidth > 0);
  document.body.dataset.imagesRendered = ok.length;
  document.body.dataset.imagesTotal = document.images.length;
});
"""


def read_table(path: Path) -> pd.DataFrame:
    """A CSV, or a Markdown pipe table (a table written without its CSV)."""
    if path.suffix == ".csv":
        return pd.read_csv(path)
    rows = [line.strip().strip("|").split("|") for line in path.read_text().splitlines()]
    rows = [[c.strip() for c in r] for r in rows if len(r) > 1]
    rows = [r for r in rows if not all(re.fullmatch(r":?-+:?", c) for c in r)]  # the --- rule
    return pd.DataFrame(rows[1:], columns=rows[0])


def table_html(df: pd.DataFrame, table_id: str | None = None) -> str:
    return df.to_html(
        index=False, na_rep="", table_id=table_id, border=0, float_format=lambda x: f"{x:.3f}"
    )


def tables_in(folder: Path) -> list[Path]:
    """One file per table stem, the CSV when both formats are there (typed numbers)."""
    stems = {p.stem: p for p in sorted(folder.glob("*.md"))}
    stems |= {p.stem: p for p in sorted(folder.glob("*.csv"))}
    return [stems[s] for s in sorted(stems)]


def caption(path: Path) -> str:
    name = path.stem
    if name == "figure6":
        return "Figure 6: φ of forget vs holdout images per method"
    if name == "data_card":
        return "CLEAR data card: counts, match quality, attribute distributions"
    if path.parent.name == "sheets":
        return f"Contact sheet: {name}"
    if name.startswith("losses_"):
        return f"Loss of every unlearning run per step ({name[len('losses_') :]})"
    if name.startswith("intervals_"):
        return f"Forget against Retain with bootstrap intervals ({name[len('intervals_') :]})"
    if name.startswith("attacks_"):
        return f"Forget before and after each attack ({name[len('attacks_') :]})"
    return f"Real / Retain / Forget per method ({name})"


def figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'
        f"<figcaption>{html.escape(caption(path))} — <code>{html.escape(str(path))}</code>"
        "</figcaption></figure>"
    )


def build_html_report(
    leaderboard: str | Path,
    out: str | Path,
    tables: str | Path | None = None,
    plots: str | Path | None = None,
    vision: str | Path | None = None,
    images: str | Path | None = None,
    clip: list[str | Path] = (),
) -> dict:
    """Write the report to `out`; optional folders that are None or missing become a note."""
    try:
        board = pd.read_csv(leaderboard)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise ArtifactError(f"cannot read leaderboard {leaderboard}: {first_line(err)}") from None

    source = f"<p>{len(board)} models, from <code>{html.escape(str(leaderboard))}</code></p>"
    sections = [("Leaderboard", source + table_html(board, "leaderboard"))]
    skipped, n_tables, n_images = [], 0, 0

    def add(title, folder, kinds):
        nonlocal n_tables, n_images
        folder = Path(folder) if folder else None
        if folder is None or not folder.is_dir():
            skipped.append(title)
            sections.append(
                (
                    title,
                    f'<p class="note">skipped: no {html.escape(str(folder or "folder given"))}</p>',
                )
            )
            return
        parts = []
        if "tables" in kinds:
            for path in tables_in(folder):
                parts.append(f"<h3>{html.escape(path.stem)}</h3>{table_html(read_table(path))}")
                n_tables += 1
        if "images" in kinds:
            for path in sorted(folder.glob("*.png")):
                parts.append(figure(path))
                n_images += 1
        sections.append(
            (title, "".join(parts) or f'<p class="note">nothing in {html.escape(str(folder))}</p>')
        )

    add("Tables", tables, {"tables"})
    if tables and (Path(tables) / "authors").is_dir():
        add("Tables in the CLEAR authors' convention", Path(tables) / "authors", {"tables"})
    add("Plots", plots, {"images"})
    add("Vision track (Table 2, Figure 6)", vision, {"tables", "images"})
    for folder in clip:  # results/clip/<split>: the clip table and its plot
        add(f"Clip track, {Path(folder).name}", folder, {"tables", "images"})
    add("CLEAR data: data card", images, {"images"})
    add("CLEAR data: contact sheets", Path(images) / "sheets" if images else None, {"images"})

    toc = "".join(
        f'<li><a href="#s{i}">{html.escape(t)}</a></li>' for i, (t, _) in enumerate(sections)
    )
    body = "".join(
        f'<section id="s{i}"><h2>{html.escape(t)}</h2>{content}</section>'
        for i, (t, content) in enumerate(sections)
    )
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>clearbench report</title><style>{CSS}</style><script>{SCRIPT}</script></head>"
        f"<body><h1>clearbench report</h1><nav><ul>{toc}</ul></nav>{body}</body></html>\n"
    )
    write_text_atomic(out, page)
    return {"out": str(out), "models": len(board), "tables": n_tables, "images": n_images,
            "skipped": skipped}  # fmt: skip
