"""What an explanation costs: seconds to explain one document (annif-ebm
explain's Python API) beside seconds to suggest for it (Annif's
project.suggest), the same documents one at a time, alternating which goes
first; and an example: one document's explanation as text and as the HTML
page, with a screenshot of that page in headless Chromium.

  ANNIF_PROJECTS=bench/work/<dataset>/projects.cfg ANNIF_DATADIR=bench/work/<dataset>/data \\
  python bench/explain.py PROJECT VALIDATE.tsv [--docs 40] [--example 0] \\
      [--screenshot docs/explain.png]

Writes bench/results/explain-<date>[-<tag>].md, the example's text beside it
and its page in bench/work/.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

from annif.corpus import Document

from common import BENCH, RESULTS, annif_project, write_report

CHROMIUM = "/usr/bin/chromium"


def read_texts(path: str, n: int) -> list[str]:
    with open(path, encoding="utf-8") as file:
        return [line.split("\t")[0] for line in itertools.islice(file, n)]


def screenshot(page: Path, out: str) -> None:
    """The page as a 1366x900 screen shows it, its second suggestion selected."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        view = browser.new_page(viewport={"width": 1366, "height": 900})
        view.goto(page.resolve().as_uri())
        view.locator(".pick").nth(1).click()
        # clicking scrolled the list to the button: show the list from its top
        view.evaluate("window.scrollTo(0, 0); "
                      "document.querySelectorAll('.subjects').forEach(l => { l.scrollTop = 0; })")
        view.screenshot(path=out)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("project")
    parser.add_argument("corpus")
    parser.add_argument("--docs", type=int, default=40)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--example", type=int, default=0, help="document shown as the example")
    parser.add_argument("--screenshot", default="", help="PNG of the example's HTML page")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()

    from annif_ebm.explain import explain_project
    from annif_ebm.explain_format import as_html, as_text

    texts = read_texts(args.corpus, max(args.docs, args.example + 1))
    with annif_project(args.project) as project:
        # warm: the model, the store, the ranker and the encoder load once
        project.suggest([Document(text=texts[0])])
        explain_project(project, texts[:1], args.limit)
        suggest_s, explain_s = [], []
        for i, text in enumerate(texts[: args.docs]):
            runs = [("suggest", lambda: project.suggest([Document(text=text)])),
                    ("explain", lambda: explain_project(project, [text], args.limit))]
            for name, run in runs if i % 2 == 0 else reversed(runs):
                start = time.perf_counter()
                run()
                (suggest_s if name == "suggest" else explain_s).append(
                    time.perf_counter() - start)
        example = explain_project(project, [texts[args.example]], args.limit)
    ratios = [e / s for e, s in zip(explain_s, suggest_s)]
    rows = [{
        "project": args.project, "documents": len(suggest_s),
        "suggest s/doc (mean)": statistics.mean(suggest_s),
        "explain s/doc (mean)": statistics.mean(explain_s),
        "ratio of means": sum(explain_s) / sum(suggest_s),
        "ratio per doc (median)": statistics.median(ratios),
        "ratio per doc (max)": max(ratios),
    }]
    name = f"validate document {args.example} of {Path(args.corpus).name}"
    stem = f"explain-example-{args.project}{'-' + args.tag if args.tag else ''}"
    (RESULTS / f"{stem}.txt").write_text(as_text(example, [name]), encoding="utf-8")
    page = BENCH / "work" / f"{stem}.html"  # a copy of the template: not kept in results
    page.parent.mkdir(exist_ok=True)
    page.write_text(as_html(example, [name], f"Why these subjects? {args.project}"),
                    encoding="utf-8")
    if args.screenshot:
        screenshot(page, args.screenshot)
    write_report("explain", args.tag, "Cost of an explanation (one document at a time, CPU)", [
        f"- corpus: {args.corpus}, first {len(suggest_s)} documents, --limit {args.limit}; "
        "each document suggested (project.suggest) and explained (explain_project) one "
        "after the other, alternating which goes first, after one warm-up of each",
        f"- example: bench/results/{stem}.txt (the HTML page: bench/work/{stem}.html"
        + (f", screenshot {args.screenshot})" if args.screenshot else ")"),
    ], rows, list(rows[0]))


if __name__ == "__main__":
    main()
